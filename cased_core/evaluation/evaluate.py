"""Evaluate methods on a labelled image folder with the paper's metrics."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from cased_core.method.classifier import Classifier, ClassifierConfig
from cased_core.artifacts.database import Database
from cased_core.method.lexicon import load_lexicon
from cased_core.evaluation.metrics import SentenceEmbedder, score_all
from cased_core.artifacts.model import ClipModel
from cased_core.options import IMAGE_SUFFIXES, METHODS


@dataclass(frozen=True)
class Dataset:
    paths: list[Path]
    labels: list[str]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


@dataclass(frozen=True)
class MethodScores:
    method: str
    cluster_accuracy: float
    semantic_similarity: float
    semantic_iou: float
    images: int

    def as_dict(self) -> dict:
        return asdict(self)


def load_dataset(root: str | Path) -> Dataset:
    """One sub-folder per class; the folder name (with '_' as a space) is the class name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(folder.name.replace("_", " "))
    if not paths:
        raise ValueError(f"{root} holds no images in class sub-folders (expected {root}/CLASS/IMAGE.jpg)")
    return Dataset(paths, labels)


EmbedVocabulary = Callable[[ClipModel, Sequence[str]], np.ndarray]


def english_words() -> list[str]:
    from english_words import get_english_words_set

    return sorted(w for w in get_english_words_set(["web2"], lower=True, alpha=True) if len(w) >= 3)


def method_classifier(method: str, model: ClipModel, database: Database, dataset: Dataset,
                      config: ClassifierConfig, embed_vocabulary: EmbedVocabulary | None = None) -> Classifier:
    """The classifier of one of METHODS; `embed_vocabulary(model, names)` gives a vocabulary's text
    embeddings when the caller keeps them (a cache), else the classifier computes them."""
    if method in ("cased", "closest-caption"):
        return Classifier(model, database, mode=method, config=config)
    vocabularies: dict[str, Callable[[], Sequence[str]]] = {
        "clip-wordnet": lambda: sorted(load_lexicon().terms),
        "clip-english": english_words,
        "clip-true-names": lambda: dataset.classes,
    }
    if method not in vocabularies:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    names = list(dict.fromkeys(vocabularies[method]()))
    return Classifier(model, mode="vocabulary", vocabulary=names, config=config,
                      vocabulary_embeddings=None if embed_vocabulary is None else embed_vocabulary(model, names))


def encode_dataset(model: ClipModel, dataset: Dataset, batch_size: int = 32,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    chunks = []
    for start in range(0, len(dataset.paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in dataset.paths[start:start + batch_size]]
        chunks.append(model.encode_images(images, batch_size))
        if progress:
            progress(len(images))
    return np.concatenate(chunks)


def evaluate(model: ClipModel, database: Database, dataset: Dataset, methods: Sequence[str] = METHODS,
             config: ClassifierConfig = ClassifierConfig(), embedder: SentenceEmbedder | None = None,
             progress: Callable[[int], None] | None = None,
             embed_vocabulary: EmbedVocabulary | None = None) -> list[MethodScores]:
    """Encode the images once (`progress(n)` after each n), then classify and score them with every
    method; one sentence embedder (`embedder`, else one made here) scores them all."""
    embeddings = encode_dataset(model, dataset, progress=progress)
    embedder = embedder or SentenceEmbedder()
    results = []
    for method in methods:
        classifier = method_classifier(method, model, database, dataset, config, embed_vocabulary)
        predicted = [p.label for p in classifier.classify_embeddings(embeddings)]
        scores = score_all(predicted, dataset.labels, embedder)
        results.append(MethodScores(method, scores.cluster_accuracy, scores.semantic_similarity,
                                    scores.semantic_iou, len(predicted)))
    return results
