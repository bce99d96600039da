"""`cased bench core`: what a classification costs beyond the image forward, and against the reference.

The database has a million entries (so the index is the IVF-PQ one the builder picks at that size).
Text-encoding a million captions with ViT-B-32 takes hours on two cores, so its caption embeddings are
synthetic: captions are drawn from topics (40 lexicon words each), and a caption's embedding lies near
its topic's centre. The first topics are centred on the benchmark images, so every image retrieves
captions that share words, as a real database gives, and the candidate sets are realistic in size.
Candidate-term embeddings are real: the builder encodes them with the model's text encoder.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cased_core.tinyworld import world as tinyworld
from cased_core.method.classifier import Classifier
from cased_core.artifacts.database import Database
from cased_core.artifacts.database_build import build_from_embeddings, plan_index
from cased_core.method.lexicon import load_lexicon
from cased_core.artifacts.model import ClipModel, load_model
from workers.progress import ProgressBars
from workers.cli.benchkit import say

TOPIC_SIZE = 50  # captions per topic
TOPIC_WORDS = 40
CAPTION_WORDS = 12  # with 10 retrieved captions, ~35 candidates per image as the paper reports
VOCABULARY = 600


def bench_images(model: ClipModel, count: int, seed: int = 7) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([model.preprocess(tinyworld.render(rng, size=128)[0]) for _ in range(count)])


def synthetic_database(model: ClipModel, entries: int, images: torch.Tensor, out: Path,
                       batch_size: int = 32) -> Database:
    """The benchmark database at `out` (built once, then reused): `entries` synthetic captions whose
    first topics are centred on `images` (preprocessed), so that each retrieves related captions."""
    if (out / "manifest.json").is_file():
        return Database(out)
    centres = np.concatenate([model.encode_pixels(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    rng = np.random.default_rng(0)
    singles = sorted(t for t in load_lexicon().terms if " " not in t and t.isalpha())
    vocabulary = np.array(rng.choice(singles, VOCABULARY, replace=False))
    topics = entries // TOPIC_SIZE
    all_centres = rng.standard_normal((topics, model.dim)).astype(np.float32)
    all_centres[:len(centres)] = centres
    all_centres /= np.linalg.norm(all_centres, axis=1, keepdims=True)
    topic_words = np.stack([rng.choice(VOCABULARY, TOPIC_WORDS, replace=False) for _ in range(topics)])
    captions, embeddings = [], np.empty((entries, model.dim), np.float16)
    say(f"generating {entries} synthetic captions in {topics} topics")
    for i in range(entries):
        topic = min(i // TOPIC_SIZE, topics - 1)
        words = vocabulary[rng.choice(topic_words[topic], CAPTION_WORDS, replace=False)]
        captions.append(f"a photo of {' '.join(words)} #{i}")
    for start in range(0, entries, 65_536):
        stop = min(entries, start + 65_536)
        topic_ids = np.minimum(np.arange(start, stop) // TOPIC_SIZE, topics - 1)
        noisy = all_centres[topic_ids] + rng.standard_normal((stop - start, model.dim)).astype(np.float32) * 0.03
        embeddings[start:stop] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    path = build_from_embeddings(captions, embeddings, out, model.identity, model.encode_texts, load_lexicon(),
                                 progress=ProgressBars())
    return Database(path)


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def bench_core(*, model_name: str, entries: int, batch_size: int, images: int, reference_images: int,
               work_dir: Path, device: str | None, search: str, search_memory_mb: float) -> dict:
    """Encode-only against classify images/s, stage times and the reference's way; the defaults are
    the command line's (`cased bench core --help`).

    Args:
        search_memory_mb: CASED_SEARCH_MEMORY_MB, as a worker reads it (0 follows the device's free
            memory; see workers.databases.search_budget_mb).
    """
    from workers.databases import search_budget_mb

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(model_name, None, device)
    say(f"model {model.identity} on {model.device}; rendering {images} images")
    pixels = bench_images(model, images)
    database = synthetic_database(model, entries, pixels,
                                  work_dir / f"db-{model.identity.replace('/', '_')}-{entries}-{images}", batch_size)
    database.use_search(search, model.device, search_budget_mb(search_memory_mb, model.device))
    classifier = Classifier(model, database)
    reference = Classifier(model, database, mode="cased-reference")
    batches = [pixels[i:i + batch_size] for i in range(0, images, batch_size)]
    classifier.classify_pixels(batches[0])  # warm-up: caches, lazy allocations, first-call kernels
    encode_s = classify_s = search_s = after_encode_s = 0.0
    candidates = 0
    # Interleaved per batch, alternating which goes first, so that noise from a shared machine and
    # order effects hit both measurements alike.
    for n, batch in enumerate(batches):
        if n % 2:
            predictions, classify_time = _timed(classifier.classify_pixels, batch)
            embeddings, encode_time = _timed(model.encode_pixels, batch)
        else:
            embeddings, encode_time = _timed(model.encode_pixels, batch)
            predictions, classify_time = _timed(classifier.classify_pixels, batch)
        encode_s += encode_time
        classify_s += classify_time
        search_s += _timed(database.search, embeddings, classifier.config.k)[1]
        after_encode_s += _timed(classifier.classify_embeddings, embeddings)[1]
        candidates += sum(p.considered for p in predictions)
    say(f"timing {reference_images} images the reference's way (text-encoding captions and candidates)")
    _, reference_s = _timed(reference.classify_pixels, pixels[:reference_images])
    encode_rate, classify_rate = images / encode_s, images / classify_s
    reference_rate = reference_images / reference_s
    return {
        "model": model.identity, "device": str(model.device), "batch_size": batch_size,
        "database_entries": database.count, "index": database.manifest["index"]["factory"],
        "index_plan": plan_index(database.count, database.dim).factory, "search": database.searcher.name,
        "images": images,
        "encode_images_per_s": round(encode_rate, 2),
        "classify_images_per_s": round(classify_rate, 2),
        "classify_to_encode": round(classify_rate / encode_rate, 3),
        "reference_style_images_per_s": round(reference_rate, 3),
        "speedup_vs_reference": round(classify_rate / reference_rate, 1),
        "stage_ms_per_image": {
            "encode": round(1000 * encode_s / images, 2),
            "search": round(1000 * search_s / images, 2),
            "candidates_and_scoring": round(1000 * (after_encode_s - search_s) / images, 2),
        },
        "mean_candidates_per_image": round(candidates / images, 1),
        "term_encodes_in_steady_state": classifier.terms.encoded,
    }
