"""`cased bench db`: what a database of CaSED's size costs to build, to hold, to open and to search,
and how much its approximate index changes the labels.

The database (built once, kept under the work folder) has N entries (default 12,000,000, CC12M's size)
at a model's dimension (default 768, ViT-L-14's). Text-encoding 12 million captions takes days on a
CPU, so the embeddings are synthetic, with a text encoder's structure (`SyntheticWorld`): many topics
of very different sizes (Zipf), a mean direction every caption shares, a decaying spectrum, word
vectors the captions and candidate names are made of, near-duplicate captions; and image-like queries
in a cone of their own (CLIP's modality gap). The captions are lexicon words, so that candidate
extraction and scoring run as in production; candidate names get their embeddings from the same world.

Reported, as JSON and a table: the build's wall and CPU time, peak RSS and peak anonymous memory by
step; bytes on disk by file; the time to open the database cold (its files evicted from the page
cache) and warm; a worker's RSS after opening it and after searching; k-NN search time per image in batches of 16 and 256 on one
core at the tuned setting and two others, its recall@10 against exact search on held-out queries, and
the fraction of final labels identical to those exact search gives; the PSS of two workers sharing one
copy of the files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.cli.benchkit import proc_kb, say, spread

FILES_FOR_SEARCH = ("index.faiss", "embeddings.f16")
K = 10


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


class SyntheticWorld:
    """Caption and image embeddings with a text encoder's structure, and captions made of lexicon
    words. Deterministic in (seed, entries, dim): `parts()` gives the same database every time, block
    by block, so a 12M-entry database never has to be held in memory.

    Structure (cosines measured at 768-d: unrelated captions about 0.35, same-topic captions 0.84, a
    query to its best caption 0.55, to a random caption 0.15):
    - a spectrum: vectors are drawn as Q (s * z) with s_i ~ (i + 1)^-1/2 over a random basis Q;
    - words: one such vector per vocabulary word; word frequencies Zipf-like;
    - topics: entries / 200 of them, sizes Zipf (the largest holds about 1% of the captions), each with
      20 words and a centre;
    - a caption: a topic, 8 of its words; embedding = shared text direction + topic centre + its
      words' mean + noise; 5% are near-duplicates of the caption before (one word changed, cosine about
      0.97);
    - a query (an image): a topic, 4 of its words, around a mean direction of its own (the modality gap).
    """

    TOPIC_WORDS, CAPTION_WORDS, QUERY_WORDS = 20, 8, 4
    DUPLICATES = 0.05

    def __init__(self, entries: int, dim: int, words: list[str], seed: int = 0):
        rng = np.random.default_rng([seed, dim])
        self.entries, self.dim, self.seed = entries, dim, seed
        self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        spectrum = (np.arange(dim) + 1.0) ** -0.5
        self.spectrum = (spectrum / np.linalg.norm(spectrum)).astype(np.float32)
        self.text_mean = _unit(rng.standard_normal(dim)).astype(np.float32)
        self.image_mean = _unit(0.5 * self.text_mean + 0.87 * _unit(rng.standard_normal(dim))).astype(np.float32)
        words = list(rng.permutation(words))  # frequencies by rank: not alphabetical
        self.words = np.array(words)
        self.word_rows = {w: i for i, w in enumerate(words)}
        self.word_vectors = _unit(self._spectral(len(words), rng))
        topics = max(16, entries // 200)
        weights = 1.0 / (np.arange(topics) + 20.0) ** 1.1
        self.topic_p = weights / weights.sum()
        word_p = 1.0 / (np.arange(len(words)) + 50.0)
        word_p /= word_p.sum()
        # Each topic's words drawn by word frequency, without repeats within a topic.
        keys = rng.random((topics, len(words))) if topics * len(words) <= 2**27 else None
        if keys is not None:
            self.topic_words = np.argsort(-np.log(keys) / word_p, axis=1)[:, :self.TOPIC_WORDS]
        else:
            self.topic_words = np.stack([rng.choice(len(words), self.TOPIC_WORDS, replace=False, p=word_p)
                                         for _ in range(topics)])
        self.topic_centres = _unit(self._spectral(topics, rng) + 2 * self.word_vectors[self.topic_words].mean(1))

    def _spectral(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return (rng.standard_normal((n, self.dim)).astype(np.float32) * self.spectrum) @ self.basis.T

    def _mixture(self, rng, n: int, words: int, mean: np.ndarray, centre: float, word: float, noise: float):
        topics = rng.choice(len(self.topic_p), n, p=self.topic_p)
        chosen = np.argsort(rng.random((n, self.TOPIC_WORDS)), axis=1)[:, :words]
        word_ids = np.take_along_axis(self.topic_words[topics], chosen, axis=1)
        vectors = (mean + centre * self.topic_centres[topics] + word * self.word_vectors[word_ids].mean(1)
                   + noise * self._spectral(n, rng))
        return topics, word_ids, vectors

    def block(self, number: int, rows: int) -> tuple[list[str], np.ndarray]:
        """Captions and embeddings of block `number` (`rows` of them)."""
        rng = np.random.default_rng([self.seed, self.dim, number])
        _, word_ids, vectors = self._mixture(rng, rows, self.CAPTION_WORDS, self.text_mean, 1.0, 0.6, 0.6)
        duplicate = np.flatnonzero(rng.random(rows) < self.DUPLICATES)
        duplicate = duplicate[duplicate > 0]
        for i in duplicate:  # in order: a duplicate of a duplicate copies the copy
            word_ids[i] = word_ids[i - 1]
            word_ids[i, rng.integers(self.CAPTION_WORDS)] = rng.integers(len(self.words))
            vectors[i] = vectors[i - 1] + 0.15 * self._spectral(1, rng)[0]
        captions = [" ".join(words) for words in self.words[word_ids]]
        return captions, _unit(vectors).astype(np.float32)

    def parts(self, rows: int = 65_536):
        """(captions, embeddings) blocks of the whole database, in order."""
        for number, start in enumerate(range(0, self.entries, rows)):
            yield self.block(number, min(rows, self.entries - start))

    def queries(self, count: int, seed: int) -> np.ndarray:
        """Image-like query embeddings; distinct seeds give disjoint held-out sets."""
        rng = np.random.default_rng([self.seed, self.dim, 1_000_003, seed])
        return _unit(self._mixture(rng, count, self.QUERY_WORDS, self.image_mean, 0.8, 0.6, 1.3)[2]).astype(np.float32)

    def encode_texts(self, texts, batch_size: int = 256, progress=None) -> np.ndarray:
        """The world's text encoder for names: the text direction plus the mean of the name's words'
        vectors (a word outside the vocabulary gets a vector seeded by its spelling)."""
        out = np.empty((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            vectors = []
            for word in text.split():
                row = self.word_rows.get(word)
                if row is None:
                    seeded = np.random.default_rng(list(word.encode()) or [0])
                    vectors.append(_unit(self._spectral(1, seeded)[0]))
                else:
                    vectors.append(self.word_vectors[row])
            out[i] = self.text_mean + (np.mean(vectors, axis=0) if vectors else 0)
        if progress:
            progress(len(texts))
        return _unit(out)


@dataclass
class SyntheticModel:
    """What the classifier needs of a model, for synthetic embeddings: no image encoder at all."""
    world: SyntheticWorld
    logit_scale: float = 100.0  # CLIP's (OpenAI weights)

    def __post_init__(self):
        import torch

        self.dim, self.device = self.world.dim, torch.device("cpu")
        self.identity = f"synthetic-{self.world.dim}d-seed{self.world.seed}"

    def encode_texts(self, texts, batch_size: int = 256, progress=None) -> np.ndarray:
        return self.world.encode_texts(texts, batch_size, progress)


def world_for(entries: int, dim: int, seed: int = 0) -> SyntheticWorld:
    from cased_core.method.lexicon import load_lexicon

    words = sorted(t for t in load_lexicon().terms if " " not in t and t.isalpha())
    return SyntheticWorld(entries, dim, words, seed)


def _peak_rss_reset() -> None:
    """Restart this process's peak RSS (VmHWM) count, so each build step's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then peaks accumulate: each step reports the peak so far


class StepClock:
    """A build's progress callback that times each step (wall and CPU) and records its peak RSS and its
    peak anonymous memory, and passes the progress on to `then` (the progress bars).

    RSS counts the pages of memory-mapped files the step touched (tuning re-ranks from the mapped
    embeddings: page cache, shared and reclaimable); the anonymous peak is what the process itself
    holds, sampled every SAMPLE_S by a thread (VmHWM has no anonymous twin)."""

    SAMPLE_S = 0.2

    def __init__(self, then):
        self.then, self.steps, self.current = then, {}, None
        self.wall = self.cpu = 0.0
        self.anon_kb = 0
        self._lock = threading.Lock()  # a sample read before a step began must not count in it
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            with self._lock:
                self.anon_kb = max(self.anon_kb, proc_kb(os.getpid(), "RssAnon") or 0)

    def _cpu(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def __call__(self, step: str, done: int, total) -> None:
        if step != self.current:
            self.finish()
            self.current, self.wall, self.cpu = step, time.perf_counter(), self._cpu()
            with self._lock:
                self.anon_kb = proc_kb(os.getpid(), "RssAnon") or 0
                _peak_rss_reset()
        self.then(step, done, total)

    def finish(self) -> None:
        if self.current is not None:
            self.steps[self.current] = {"wall_s": round(time.perf_counter() - self.wall, 1),
                                        "cpu_s": round(self._cpu() - self.cpu, 1),
                                        "peak_rss_mb": round((proc_kb(os.getpid(), "VmHWM") or 0) / 1024),
                                        "peak_anon_mb": round(max(self.anon_kb, proc_kb(os.getpid(), "RssAnon") or 0)
                                                              / 1024)}
            self.current = None

    def close(self) -> None:
        """Ends the last step and stops sampling."""
        self.finish()
        self._stop.set()
        self._sampler.join()


def build(world: SyntheticWorld, out: Path, options, tuning: np.ndarray) -> dict:
    """Build the benchmark's database at `out` with progress bars, its search tuned on `tuning`
    queries; the build's figures by step."""
    from cased_core.artifacts.database_build import build_from_parts
    from cased_core.method.lexicon import load_lexicon
    from workers.progress import ProgressBars

    bars = ProgressBars()
    clock = StepClock(bars)
    started, cpu = time.perf_counter(), clock._cpu()
    model = SyntheticModel(world)
    try:
        build_from_parts(world.parts(), out, world.dim, model.identity, model.encode_texts, load_lexicon(),
                         clock, options, queries=tuning, total=world.entries)
    finally:
        clock.close()
        bars.close()
    return {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(clock._cpu() - cpu, 1),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in clock.steps.values()),
            "peak_anon_mb": max(s["peak_anon_mb"] for s in clock.steps.values()), "steps": clock.steps,
            "options": dataclasses.asdict(options)}


def _evict(path: Path) -> None:
    """Drop a database's files from the page cache (posix_fadvise DONTNEED: no privileges needed)."""
    for file in path.iterdir():
        if file.is_file():
            with open(file, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _smaps(pid: int) -> dict:
    """Rss and Pss (MiB) of process `pid`, and their file-backed and anonymous parts: the mapped
    database files count in RSS once touched, but they are page cache, shared and reclaimable."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if name in ("Rss", "Pss", "Pss_File", "Pss_Anon", "Anonymous"):
            figures[name.lower()] = round(int(value.split()[0]) / 1024)
    return figures


def _worker_command(db: Path, queries: Path, batches: int) -> list[str]:
    return [sys.executable, "-m", "workers.cli.bench_db", "worker", str(db), str(queries), str(batches)]


def worker_main(db: str, queries_path: str, batches: int) -> None:
    """A worker's share of the database, in its own process: import, make the model's stand-in, open
    the database and a classifier, classify `batches` batches of 16 held-out queries, print what each
    cost as JSON (RSS before opening, after, after searching), then wait for a line on stdin (so that
    another process can read its memory meanwhile)."""
    import faiss
    import torch

    from cased_core.method.classifier import Classifier
    from cased_core.artifacts.database import Database

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    manifest = json.loads((Path(db) / "manifest.json").read_text())
    # The model's stand-in first, so that what opening the database adds is measured alone.
    model = SyntheticModel(world_for(manifest["count"], manifest["dim"], int(manifest["model"].rsplit("seed", 1)[1])))
    figures = {"rss_mb_before": round(proc_kb(os.getpid(), "VmRSS") / 1024)}
    started = time.perf_counter()
    database = Database(db)
    figures["open_s"] = round(time.perf_counter() - started, 3)
    classifier = Classifier(model, database)
    figures["rss_mb_opened"] = round(proc_kb(os.getpid(), "VmRSS") / 1024)
    queries = np.load(queries_path)
    started = time.perf_counter()
    classifier.classify_embeddings(queries[:16])
    figures["first_batch_s"] = round(time.perf_counter() - started, 3)
    for n in range(1, batches):
        at = (16 * n) % max(16, len(queries) - 16)
        classifier.classify_embeddings(queries[at:at + 16])
    figures["rss_mb_searched"] = round(proc_kb(os.getpid(), "VmRSS") / 1024)
    print(json.dumps(figures), flush=True)
    sys.stdin.readline()


def _run_workers(db: Path, queries: Path, count: int, batches: int) -> list[dict]:
    """`count` workers at once, each opening the database and classifying; their figures and memory
    (read while all of them are alive)."""
    workers = [subprocess.Popen(_worker_command(db, queries, batches), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        figures = []
        for worker in workers:
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError(f"a benchmark worker exited with status {worker.wait()}")
            figures.append(json.loads(line))
        for worker, f in zip(workers, figures):
            f["memory_mb"] = _smaps(worker.pid)
        return figures
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.stdin.write("\n")
                worker.stdin.flush()
            worker.wait(timeout=60)


def _exact_hits(db: Path, count: int, dim: int, queries: np.ndarray, cache: Path):
    """Exact top-k of `queries` over the whole database (streamed; cached: minutes at 12M)."""
    from cased_core.artifacts.database_build import read_blocks
    from cased_core.artifacts.search import SearchHits, exact_search_blocks

    if not cache.is_file():
        say(f"exact search of {len(queries)} held-out queries over {count:,} entries")
        scores, ids = exact_search_blocks(read_blocks(db / "embeddings.f16", count, dim), queries, K)
        np.savez(cache, scores=scores, ids=ids)
    saved = np.load(cache)
    return SearchHits(saved["scores"], saved["ids"])


def _settings(database) -> list[str]:
    """The tuned search setting and, for an IVF index, half and twice its nprobe."""
    from cased_core.artifacts.database_build import ivf_setting

    import faiss

    tuned = database.search_params or ""
    ivf = faiss.try_extract_index_ivf(database.index)
    if ivf is None or "nprobe=" not in tuned:
        return [tuned]
    nprobe = int(tuned.split("nprobe=")[1].split(",")[0])
    return [ivf_setting(database.index, p) for p in (max(1, nprobe // 2), nprobe, min(ivf.nlist, 2 * nprobe))]


def _timed_search(searcher, queries: np.ndarray, batch: int) -> tuple[float, float]:
    """Wall and thread-CPU milliseconds per query, searching every query of `queries` once (at least
    one batch), in batches of `batch` (taken round the end when the queries do not fill the last)."""
    batches = [np.arange(start, start + batch) % len(queries) for start in range(0, len(queries), batch)]
    wall, cpu = time.perf_counter(), time.thread_time()
    for rows in batches:
        searcher.search(queries[rows], K)
    done = len(batches) * batch
    return 1000 * (time.perf_counter() - wall) / done, 1000 * (time.thread_time() - cpu) / done


def bench_db(*, entries: int, dim: int, work_dir: Path, queries: int, repeats: int, build_only: bool, options,
             batches: tuple[int, ...] = (16, 256), seed: int = 0, download_max_mb: int = 4096) -> dict:
    """Build (once) and measure a synthetic database of `entries` x `dim`; the figures (module doc).
    The defaults are the command line's (`cased bench db --help`); `options`: the build's
    (cased_core.options.BuildOptions)."""
    import faiss

    from cased_core.method.classifier import Classifier
    from cased_core.artifacts.database import Database
    from cased_core.artifacts.search import FaissSearch

    from cased_core.artifacts.database_build import BuildOptions, retune
    from workers.progress import ProgressBars

    # The folder names what was built: other budgets build another database; another recall target
    # re-tunes the kept one (minutes, where building 12M entries takes hours).
    built_by = dataclasses.replace(options, recall_target=BuildOptions.recall_target)
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(built_by), sort_keys=True).encode()).hexdigest()[:8]
    db = work_dir / f"db-synthetic-{entries}x{dim}-seed{seed}-{digest}"
    report_path = db.with_name(db.name + ".build.json")
    world = world_for(entries, dim, seed)
    tuning_queries = world.queries(options.tuning_queries, seed=1)  # held out from the measured queries (seed 2)
    if not (db / "manifest.json").is_file():
        say(f"building a synthetic database of {entries:,} x {dim} at {db} (kept for later runs)")
        db.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(build(world, db, options, tuning_queries), indent=2) + "\n")
    build_figures = json.loads(report_path.read_text()) if report_path.is_file() else None
    retuned_s = None
    if json.loads((db / "manifest.json").read_text())["index"].get("recall_target") != options.recall_target:
        say(f"re-tuning the kept database's search to recall@{options.k} {options.recall_target}")
        bars, started = ProgressBars(), time.perf_counter()
        retune(db, options, tuning_queries, bars)
        bars.close()
        retuned_s = round(time.perf_counter() - started, 1)
    database = Database(db)
    figures = {"entries": database.count, "dim": database.dim, "index": database.manifest["index"]["factory"],
               "search_params": database.search_params, "refine": database.refine, "retuned_s": retuned_s,
               "tuning": {key: database.manifest["index"].get(key) for key in
                          ("recall_target", "recall_at_k", "tuning_queries", "tuning_curve")},
               "build": build_figures,
               "disk_mb": {f.name: round(f.stat().st_size / 2**20, 1) for f in sorted(db.iterdir()) if f.is_file()}}
    figures["disk_mb"]["total"] = round(sum(figures["disk_mb"].values()), 1)
    if build_only:
        return figures

    held_out = world.queries(queries, seed=2)
    queries_file = db.with_name(f"{db.name}.queries-{queries}.npy")  # with its exact hits, cached beside it
    np.save(queries_file, held_out)
    exact = _exact_hits(db, database.count, database.dim, held_out, queries_file.with_suffix(".exact.npz"))

    say("opening the database in fresh worker processes: cold (files evicted from the page cache), then warm")
    _evict(db)
    [cold] = _run_workers(db, queries_file, 1, 1)
    [warm] = _run_workers(db, queries_file, 1, 1)
    figures["open"] = {"cold": cold, "warm": warm}

    faiss.omp_set_num_threads(1)
    import torch

    torch.set_num_threads(1)
    classifier = Classifier(SyntheticModel(world), database)
    exact_predictions = classifier.score(held_out, exact)
    exact_labels = [p.label for p in exact_predictions]
    margins = np.array([p.candidates[0][1] - (p.candidates[1][1] if len(p.candidates) > 1 else 0)
                        for p in exact_predictions])
    rows = []
    for params in _settings(database):
        searcher = FaissSearch(database.index, database.embeddings, params, "", database.refine)
        hits = searcher.search(held_out, K)
        labels = [p.label for p in classifier.score(held_out, hits)]
        changed = np.array([a != b for a, b in zip(labels, exact_labels)])
        row = {"search_params": params, "tuned": params == (database.search_params or ""),
               "recall_at_10": round(_recall(hits.ids, exact.ids), 4),
               "labels_identical": round(1 - float(changed.mean()), 4),
               # how close the exact label's call was where the label changed: near ties flip first
               "changed_label_margin_median": round(float(np.median(margins[changed])), 3) if changed.any() else None}
        for batch in batches:
            timings = [_timed_search(searcher, held_out, batch) for _ in range(repeats)]
            row[f"ms_per_image_batch_{batch}"] = spread((t[0] for t in timings), 3)
            row[f"cpu_ms_per_image_batch_{batch}"] = spread((t[1] for t in timings), 3)
        rows.append(row)
        say(f"{params or 'exact'}: recall@10 {row['recall_at_10']}, labels identical {row['labels_identical']}")
    database.use_search("faiss")  # the tuned setting again
    figures["search"] = rows

    figures["exact_label_margin_median"] = round(float(np.median(margins)), 3)

    say("two workers sharing one copy of the files")
    figures["two_workers"] = _run_workers(db, queries_file, 2, 64)
    if figures["disk_mb"]["total"] <= download_max_mb:
        figures["download"] = measure_download(db, work_dir, repeats)
    else:
        figures["download"] = {"skipped": f"{figures['disk_mb']['total']:,.0f} MB is more than the local S3 server "
                                          f"is asked to hold ({download_max_mb:,} MB); measure a smaller database"}
    return figures


class WholeObjectClient:
    """A boto3 S3 client whose downloads take each object in one GET. moto reads an object whole to
    answer each ranged GET, so boto3's default 8 MiB parts cost it (size / 8 MiB) whole reads: 1.5 GB
    came at 13 MiB/s that way. Real S3 serves ranges in parallel; this measures the rest of the path."""

    def __init__(self, client):
        from boto3.s3.transfer import TransferConfig

        self.client, self.config = client, TransferConfig(multipart_threshold=2**62)

    def download_file(self, bucket, key, filename):
        return self.client.download_file(bucket, key, filename, Config=self.config)

    def __getattr__(self, name):
        return getattr(self.client, name)


def measure_download(db: Path, work_dir: Path, repeats: int) -> dict:
    """The S3 path of a worker's start: the database uploaded to a local S3 server (moto, real HTTP on
    loopback), then opened by `workers.databases.load_database` into an empty cache (download and
    checksums) `repeats` times, and once more with the cache filled (a node that has it already);
    each file in one GET (`WholeObjectClient`)."""
    import shutil
    import tempfile

    import boto3
    from moto.server import ThreadedMotoServer

    from cased_core.artifacts.digest import sha256_file
    from workers.databases import load_database
    from workers.cli.broker import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = WholeObjectClient(boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                                                aws_access_key_id="bench", aws_secret_access_key="bench"))
        client.create_bucket(Bucket="bench")
        files = [f for f in db.iterdir() if f.is_file()]
        say(f"uploading {sum(f.stat().st_size for f in files) / 2**20:,.0f} MiB to a local S3 server")
        for f in files:
            client.upload_file(str(f), "bench", f"db/{f.name}")
        size = sum(f.stat().st_size for f in files)
        started = time.perf_counter()
        for f in files:
            sha256_file(f)
        checksums_s = time.perf_counter() - started  # of the files in the page cache: the CPU's part
        cold, cache = [], Path(tempfile.mkdtemp(dir=work_dir, prefix="download-cache-"))
        try:
            for _ in range(repeats):
                shutil.rmtree(cache / "databases", ignore_errors=True)
                started = time.perf_counter()
                load_database("s3://bench/db", cache_dir=cache, s3_client=client)
                cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            load_database("s3://bench/db", cache_dir=cache, s3_client=client)
            cached = time.perf_counter() - started
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        server.stop()
    return {"mb": round(size / 2**20, 1), "empty_cache_s": spread(cold, 2), "checksums_s": round(checksums_s, 2),
            "mib_per_s": spread((size / 2**20 / s for s in cold), 0), "filled_cache_s": round(cached, 3)}


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    from cased_core.artifacts.database_build import recall_at

    return recall_at(found, truth)


def table(figures: dict) -> str:
    """The figures as a plain-text table, for a terminal."""
    lines = [f"database: {figures['entries']:,} x {figures['dim']}, {figures['index']}, tuned {figures['search_params']} "
             f"re-ranking {figures['refine']} x k (recall@10 {figures['tuning'].get('recall_at_k')} on "
             f"{figures['tuning'].get('tuning_queries')} tuning queries, target {figures['tuning'].get('recall_target')}"
             + (f", re-tuned in {figures['retuned_s']:,} s)" if figures.get("retuned_s") is not None else ")")]
    build_figures = figures.get("build")
    if build_figures:
        def anon(f: dict) -> str:  # builds kept from before it was sampled lack it
            return f", anonymous {f['peak_anon_mb']:,} MB" if "peak_anon_mb" in f else ""

        lines.append(f"build: {build_figures['wall_s']:,.0f} s wall, {build_figures['cpu_s']:,.0f} s CPU, peak RSS "
                     f"{build_figures['peak_rss_mb']:,} MB{anon(build_figures)}")
        lines += [f"  {step:<10} {s['wall_s']:>9,.1f} s wall {s['cpu_s']:>9,.1f} s CPU  peak RSS {s['peak_rss_mb']:>6,} MB"
                  f"{anon(s)}" for step, s in build_figures["steps"].items()]
    lines.append("on disk: " + ", ".join(f"{name} {mb:,.1f} MB" for name, mb in figures["disk_mb"].items()))
    if "open" in figures:
        for kind, f in figures["open"].items():
            lines.append(f"open {kind}: {f['open_s']} s, first batch {f['first_batch_s']} s; worker RSS "
                         f"{f['rss_mb_before']:,} MB before, {f['rss_mb_opened']:,} opened, {f['rss_mb_searched']:,} "
                         f"after searching")
    if "search" in figures:
        batches = sorted(int(key.rsplit("_", 1)[1]) for key in figures["search"][0] if key.startswith("ms_per_image"))
        header = f"{'setting':<36}{'recall@10':>10}{'labels':>8}" + "".join(
            f"{f'ms/img b{b} (cpu)':>22}" for b in batches)
        lines += ["", header]
        for row in figures["search"]:
            cells = "".join(f"{row[f'ms_per_image_batch_{b}']['median']:>12.3f} ({row[f'cpu_ms_per_image_batch_{b}']['median']:.3f})"
                            .rjust(22) for b in batches)
            name = (row["search_params"] or "exact") + (" *" if row["tuned"] else "")
            lines.append(f"{name:<36}{row['recall_at_10']:>10.4f}{row['labels_identical']:>8.3f}{cells}")
    download = figures.get("download", {})
    if "mib_per_s" in download:
        lines.append(f"download from a local S3 server: {download['mb']:,} MB in {download['empty_cache_s']['median']} s "
                     f"({download['mib_per_s']['median']:,} MiB/s, download and checksums), "
                     f"{download['filled_cache_s']} s with the cache filled")
    elif download:
        lines.append(f"download: {download['skipped']}")
    if "two_workers" in figures:
        lines.append("two workers: " + "; ".join(
            f"RSS {w['memory_mb']['rss']:,} MB (anonymous {w['memory_mb']['anonymous']:,}), PSS {w['memory_mb']['pss']:,} "
            f"MB (file {w['memory_mb']['pss_file']:,})" for w in figures["two_workers"]))
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
