"""`cased bench core`: what a classification costs beyond the image forward, and against the reference.

The database has a million entries (so the index is the IVF-PQ one the builder picks at that size).
Text-encoding a million captions with ViT-B-32 takes hours on two cores, so its caption embeddings are
synthetic: captions are drawn from topics (40 lexicon words each), and a caption's embedding lies near
its topic's centre. The first topics are centred on the benchmark images, so every image retrieves
captions that share words, as a real database gives, and the candidate sets are realistic in size.
Candidate-term embeddings are real: the builder encodes them with the model's text encoder.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from cased_core import tinyworld
from cased_core.classifier import Classifier
from cased_core.database import Database, build_from_embeddings, plan_index
from cased_core.lexicon import load_lexicon
from cased_core.model import ClipModel, load_model

TOPIC_SIZE = 50  # captions per topic
TOPIC_WORDS = 40
CAPTION_WORDS = 12  # with 10 retrieved captions, ~35 candidates per image as the paper reports
VOCABULARY = 600


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_images(model: ClipModel, count: int, seed: int = 7) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([model.preprocess(tinyworld.render(rng, size=128)[0]) for _ in range(count)])


def _synthetic_database(model: ClipModel, entries: int, centres: np.ndarray, out: Path) -> Database:
    rng = np.random.default_rng(0)
    singles = sorted(t for t in load_lexicon().terms if " " not in t and t.isalpha())
    vocabulary = np.array(rng.choice(singles, VOCABULARY, replace=False))
    topics = entries // TOPIC_SIZE
    all_centres = rng.standard_normal((topics, model.dim)).astype(np.float32)
    all_centres[:len(centres)] = centres
    all_centres /= np.linalg.norm(all_centres, axis=1, keepdims=True)
    topic_words = np.stack([rng.choice(VOCABULARY, TOPIC_WORDS, replace=False) for _ in range(topics)])
    captions, embeddings = [], np.empty((entries, model.dim), np.float16)
    _say(f"generating {entries} synthetic captions in {topics} topics")
    for i in range(entries):
        topic = min(i // TOPIC_SIZE, topics - 1)
        words = vocabulary[rng.choice(topic_words[topic], CAPTION_WORDS, replace=False)]
        captions.append(f"a photo of {' '.join(words)} #{i}")
    for start in range(0, entries, 65_536):
        stop = min(entries, start + 65_536)
        topic_ids = np.minimum(np.arange(start, stop) // TOPIC_SIZE, topics - 1)
        noisy = all_centres[topic_ids] + rng.standard_normal((stop - start, model.dim)).astype(np.float32) * 0.03
        embeddings[start:stop] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    path = build_from_embeddings(captions, embeddings, out, model.identity, model.encode_texts, load_lexicon())
    return Database(path)


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def bench_core(model_name: str = "ViT-B-32", entries: int = 1_000_000, batch_size: int = 32, images: int = 256,
               reference_images: int = 8, work_dir: Path = Path("bench-results/work"),
               device: str | None = None) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(model_name, None, device)
    _say(f"model {model.identity} on {model.device}; rendering {images} images")
    pixels = bench_images(model, images)
    db_dir = work_dir / f"db-{model.identity.replace('/', '_')}-{entries}-{images}"
    if (db_dir / "manifest.json").is_file():
        database = Database(db_dir)
    else:
        centres = np.concatenate([model.encode_pixels(pixels[i:i + batch_size]) for i in range(0, images, batch_size)])
        database = _synthetic_database(model, entries, centres, db_dir)
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
    _say(f"timing {reference_images} images the reference's way (text-encoding captions and candidates)")
    _, reference_s = _timed(reference.classify_pixels, pixels[:reference_images])
    encode_rate, classify_rate = images / encode_s, images / classify_s
    reference_rate = reference_images / reference_s
    return {
        "model": model.identity, "device": str(model.device), "batch_size": batch_size,
        "database_entries": database.count, "index": database.manifest["index"]["factory"],
        "index_plan": plan_index(database.count, database.dim).factory, "images": images,
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



def _stream_database(model: ClipModel, work_dir: Path, entries: int) -> Path:
    """A database for the random-init model (the core benchmark's when it exists)."""
    existing = sorted(work_dir.glob(f"db-{model.identity.replace('/', '_')}-*"))
    if existing and (existing[-1] / "manifest.json").is_file():
        return existing[-1]
    centres = np.zeros((0, model.dim), np.float32)
    return _synthetic_database(model, entries, centres, work_dir / f"db-{model.identity.replace('/', '_')}-{entries}-0").path


def bench_stream(model_name: str = "ViT-B-32", batch_size: int = 32, images: int = 384, latency_events: int = 150,
                 work_dir: Path = Path("bench-results/work"), entries: int = 20_000) -> dict:
    """Embedded broker + one worker process: saturated throughput and latency at half that rate,
    against the image encoder alone with the same batch size, in one run."""
    import threading

    from topics import events as ev
    from workers.broker import EmbeddedBroker
    from workers.clients import ensure_topics, image_event, producer, publish, read_records
    from workers.demo import jpeg, start_worker, stop_worker
    from workers.settings import Settings

    model = load_model(model_name, None, "cpu")
    db_path = _stream_database(model, work_dir, entries)
    rng = np.random.default_rng(5)
    frames = [jpeg(tinyworld.render(rng, size=128)[0]) for _ in range(64)]
    pixels = torch.stack([model.preprocess(tinyworld.render(rng, size=128)[0]) for _ in range(batch_size * 4)])
    settings = Settings(model=model_name, database=str(db_path))
    with EmbeddedBroker() as broker:
        ensure_topics(broker.url, ["images.in", "labels.out", "images.dlq"], 4)
        worker = start_worker(settings, broker.url, {"CASED_BATCH_SIZE": str(batch_size), "CASED_MAX_WAIT_S": "0.05"})
        received: dict[str, float] = {}
        ts_in: dict[str, float] = {}
        stop = threading.Event()

        def consume() -> None:
            for _, _, value in read_records(broker.url, ["labels.out", "images.dlq"], idle_timeout_s=1.0):
                label = ev.decode_label_event(value)
                received.setdefault(label.event_id, time.time())
                ts_in[label.event_id] = label.ts_in or 0.0
                if stop.is_set():
                    return

        def wait_for(ids: list[str], timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not all(i in received for i in ids):
                time.sleep(0.05)
            missing = [i for i in ids if i not in received]
            if missing:
                raise RuntimeError(f"{len(missing)} events unanswered after {timeout_s}s; see the worker's output")

        def consumer_loop() -> None:
            while not stop.is_set():
                consume()

        reader = threading.Thread(target=consumer_loop, daemon=True)
        reader.start()
        client = producer(broker.url)
        try:
            _say("waiting for the worker's first label")
            wait_for(publish(client, "images.in", [image_event("warm", frames[0])]), 120)
            _say(f"saturated run: {images} events published at once")
            events = [image_event(f"cam-{i % 8}", frames[i % len(frames)]) for i in range(images)]
            started = time.time()
            ids = publish(client, "images.in", events)
            wait_for(ids, 600)
            stream_rate = images / (max(received[i] for i in ids) - started)
            rate = stream_rate / 2
            _say(f"latency run: {latency_events} events at {rate:.1f}/s")
            latency_ids = []
            begin = time.monotonic()
            for i in range(latency_events):
                time.sleep(max(0.0, begin + i / rate - time.monotonic()))
                latency_ids += publish(client, "images.in", [image_event(f"cam-{i % 8}", frames[i % len(frames)])])
            wait_for(latency_ids, 300)
            latencies = np.array([received[i] - ts_in[i] for i in latency_ids]) * 1000
        finally:
            client.close()
            stop.set()
            stop_worker(worker)
    # The encoder alone, same batch size, same process state, with the worker stopped.
    encode_s = 0.0
    model.encode_pixels(pixels[:batch_size])
    for start in range(0, len(pixels), batch_size):
        encode_s += _timed(model.encode_pixels, pixels[start:start + batch_size])[1]
    encode_rate = len(pixels) / encode_s
    return {
        "model": model.identity, "batch_size": batch_size, "database_entries": Database(db_path).count,
        "events": images, "encode_images_per_s": round(encode_rate, 2),
        "stream_images_per_s": round(stream_rate, 2), "stream_to_encode": round(stream_rate / encode_rate, 3),
        "latency_rate_per_s": round(rate, 2), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
    }
