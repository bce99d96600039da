"""The choices the core offers and its configuration, as plain data: importable without torch, so
that the settings, the command line and the chart's values schema read them from here instead of
restating them."""
from dataclasses import dataclass

DEFAULT_ALPHA = 0.7  # CaSED's weight of image-to-name against caption-centroid-to-name similarity
DEDUP_THRESHOLD = 0.94  # retrieved captions closer than this (cosine) count once

MODES = ("cased", "cased-reference", "closest-caption", "vocabulary")  # cased_core.method.classifier
SEARCHES = ("auto", "exact", "faiss")  # cased_core.artifacts.search: where the nearest captions are found
JPEG_DECODERS = ("auto", "pil", "torchvision")  # where a batch's JPEGs are decoded (cased_core.method.preprocess)
HISTORY_POLICIES = ("steady", "fast", "upload")  # cased_core.method.history
# cased_core.evaluation.evaluate: the paper's table, CaSED, its baselines, and the upper bound that knows the true class names
METHODS = ("cased", "closest-caption", "clip-wordnet", "clip-english", "clip-true-names")


@dataclass(frozen=True)
class ClassifierConfig:
    k: int = 10  # captions retrieved per image
    alpha: float = DEFAULT_ALPHA
    top_n: int = 5  # candidates reported
    dedup_threshold: float = DEDUP_THRESHOLD
    term_cache_size: int = 4096  # text embeddings of names not in the database, kept


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # files taken as images


@dataclass(frozen=True)
class BuildOptions:
    """What a database build may spend, and the recall its index must reach (cased_core.artifacts.database_build)."""
    index_memory_mb: int = 2048  # an approximate index's codes and ids: what a serving worker keeps resident
    build_memory_mb: int = 8192  # the build's peak, bounding the training sample (half of it at most)
    recall_target: float = 0.95  # recall@k of the served search (index + exact re-ranking) against exact
    k: int = 10  # the k recall is measured at: CaSED retrieves 10 captions
    exact_below: int = 200_000  # fewer entries: an exact (Flat) index, small and fast enough
    tuning_queries: int = 1000  # held-out queries the index's search settings are tuned on
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """How the tiny world's CLIP is trained (cased_core.tinyworld.train)."""
    steps: int = 3000
    batch_size: int = 256
    images: int = 60_000
    captions_per_image: int = 3
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    render_size: int = 64
