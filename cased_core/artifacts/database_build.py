"""Writing caption databases: `cased db build` (caption files), imports of clip-retrieval databases,
and databases from precomputed embeddings (benchmarks). The layout is described in cased_core.artifacts.database.

Every build streams: captions and embeddings are written as they come, the index is trained on a
sample and filled block by block from the written embeddings (read with read(2), so the pages it
reads are the page cache's, not the builder's), and the process holds at most about

    max(sample x dim x 4 B,  count x (code size + 8 B) x 2)  +  a block (65,536 x dim x 4 B x 3)

(the training sample, then the index's codes and ids while they grow) plus the captions' 8-byte
digests when building from files (`captions.unique_captions`); `plan_index` keeps the first within
half of `BuildOptions.build_memory_mb` and the second within `index_memory_mb`. A build writes into a
temporary folder beside the target and moves it into place at the end, so one that fails leaves
nothing half-written. Progress goes to a callback (`Progress`); nothing here prints.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

from cased_core.method.candidates import caption_terms
from cased_core.artifacts.captions import caption_rows, chunks, clip_retrieval_captions, read_captions, unique_captions
from cased_core.artifacts.database import FILES, FORMAT, DatabaseError, ModelMismatchError
from cased_core.artifacts.digest import sha256_file
from cased_core.method.lexicon import Lexicon
from cased_core.options import BuildOptions
from cased_core.artifacts.search import REFINE, FaissSearch, exact_search_blocks

# (step, done, total or None): called as a step starts (done 0) and as it advances. Steps, in order:
# "captions", "terms", "training", "indexing", "tuning", "checksums".
Progress = Callable[[str, int, "int | None"], None]

BLOCK_ROWS = 65_536  # embeddings read, converted and added at a time
# faiss's OPQ defaults (50 iterations on 65,536 points, the first with 40 k-means passes) take about
# 25 minutes at d = 768 on two cores, its PQ encoding being unvectorised; a fifth of the iterations
# on half the points keep most of the gain (recall@10 at 300k x 768, nprobe 256: 0.82 without
# OPQ, 0.93 with these settings).
OPQ_ITERATIONS, OPQ_FIRST_PASSES, OPQ_POINTS = 10, 10, 32_768
PQ_BYTES = (256, 128, 64, 48, 32, 24, 16, 8)  # autofaiss's code sizes, largest first
MIN_POINTS = 39  # training points per inverted list below which faiss's k-means warns


def _no_progress(step: str, done: int, total: int | None) -> None:
    pass


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # faiss index_factory string
    train_size: int = 0
    nlist: int = 0  # inverted lists (0: exact)
    code_bytes: int = 0

    @property
    def exact(self) -> bool:
        return self.nlist == 0


def _clusters(count: int) -> int:
    """Inverted lists for `count` vectors: autofaiss's first choice (get_optimal_nb_clusters, after the
    faiss wiki's guidelines): 4 sqrt(n) rounded to a power of two below a million, 16,384 below ten
    million, 65,536 above."""
    if count < 1_000_000:
        return 2 ** round(math.log2(4 * math.sqrt(count)))
    return 16_384 if count < 10_000_000 else 65_536


def plan_index(count: int, dim: int, options: BuildOptions = BuildOptions()) -> IndexPlan:
    """The index `count` vectors of `dim` get, following autofaiss (what clip-retrieval builds with):
    exact below `options.exact_below`; otherwise ``OPQ{m}_{w},IVF{nlist}[_HNSW32],PQ{m}x8``, memory-
    mappable. nlist is autofaiss's choice, halved until 39 training points per list (below that faiss
    warns that k-means has too few) fit half the build's memory, and up to 100 (autofaiss's); an HNSW coarse quantizer from 1,000 lists (autofaiss's
    threshold; the faiss wiki's advice for millions of vectors); m, the code's bytes, the largest of
    autofaiss's sizes that divide d and whose codes and ids fit `options.index_memory_mb` (autofaiss
    also takes sizes that do not divide d and widens the rotation's output to a multiple of m, which
    adds no information to a rank-d input; here the rotation keeps d, so the training sample is
    rotated in place).

    Examples:
        >>> plan_index(12_000_000, 768).factory
        'OPQ128_768,IVF32768_HNSW32,PQ128x8np'
        >>> plan_index(10_000, 512).factory
        'Flat'
    """
    if count < options.exact_below:
        return IndexPlan("Flat")
    train_budget = options.build_memory_mb * 2**20 // 2
    nlist = min(_clusters(count), max(1, count // MIN_POINTS))
    while nlist > 64 and MIN_POINTS * nlist * dim * 4 > train_budget:
        nlist //= 2
    train_size = int(min(count, 100 * nlist, max(MIN_POINTS * nlist, train_budget // (dim * 4))))
    budget = options.index_memory_mb * 2**20
    sizes = [m for m in PQ_BYTES if m < dim and dim % m == 0] or [1]
    m = next((m for m in sizes if count * (m + 8) <= budget), sizes[-1])
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= 1000 else f"IVF{nlist}"
    return IndexPlan(f"OPQ{m}_{dim},{quantizer},PQ{m}x8np", train_size, nlist, m)


def read_blocks(path: Path, count: int, dim: int, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) of an fp16 embeddings file, `rows` at a time, in order. read(2) rather
    than a memory map: what a build reads stays page cache instead of the builder's resident memory."""
    with open(path, "rb") as f:
        for start in range(0, count, rows):
            n = min(rows, count - start)
            block = np.fromfile(f, np.float16, n * dim)
            if block.size != n * dim:
                raise DatabaseError(f"{path} ends after {start + block.size // dim} of {count} rows")
            yield start, block.reshape(n, dim).astype(np.float32)


def _pick_rows(path: Path, count: int, dim: int, *ids: np.ndarray) -> list[np.ndarray]:
    """For each sorted id array, those rows of an embeddings file as float32, in one sequential pass."""
    out = [np.empty((len(i), dim), np.float32) for i in ids]
    for start, block in read_blocks(path, count, dim):
        for wanted, rows in zip(ids, out):
            lo, hi = np.searchsorted(wanted, [start, start + len(block)])
            rows[lo:hi] = block[wanted[lo:hi] - start]
    return out


def caption_queries(rows: np.ndarray, rng: np.random.Generator, noise: float = 1.0) -> np.ndarray:
    """Held-out tuning queries when no image embeddings are given: stored captions moved off the
    database by isotropic noise of norm `noise` (cosine about 0.7 to their source), so that each query's
    neighbours are found by search, not by identity."""
    moved = rows + rng.standard_normal(rows.shape).astype(np.float32) * (noise / math.sqrt(rows.shape[1]))
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def ivf_setting(index: faiss.Index, nprobe: int) -> str:
    """The ParameterSpace setting probing `nprobe` lists of an IVF index; an HNSW coarse quantizer
    searches twice as wide (autofaiss's efSearch = 2 nprobe, at least 32)."""
    hnsw = isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer), faiss.IndexHNSW)
    return f"nprobe={nprobe}" + (f",quantizer_efSearch={max(32, 2 * nprobe)}" if hnsw else "")


def search_candidates(index: faiss.Index) -> list[str]:
    """faiss ParameterSpace settings to try, cheapest first: nprobe for IVF (see `ivf_setting`),
    efSearch for HNSW, nothing for exact indexes."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        steps = sorted({int(b * 2 ** e) for e in range(0, 14) for b in (1, 1.5)})
        return [ivf_setting(index, p) for p in steps if p <= ivf.nlist]
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return [f"efSearch={e}" for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)]
    return [""]


@dataclass
class Tuning:
    params: str
    refine: int  # candidates re-ranked exactly, in multiples of k
    recall: float  # recall@k of the served search on the tuning queries, at `params` and `refine`
    # every setting tried, in order, with its recall at each re-ranking depth
    curve: list[tuple[str, dict[int, float]]] = field(default_factory=list)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (exact top-k ids; -1: fewer than k exist) found in the same
    row of `found`.

    Examples:
        >>> round(recall_at(np.array([[1, 2, 3], [4, 5, -1]]), np.array([[1, 2, 9], [5, 4, -1]])), 4)
        0.8333
    """
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
                          for f, t in zip(found, truth)]))


REFINES = (REFINE, 2 * REFINE, 4 * REFINE)  # re-ranking depths tried, in multiples of k
RERANK_COST = 4  # a dimension re-ranked from the memory map costs about as much as 4 code bytes scanned
PLATEAU = 0.002  # a depth whose recall gained less than this over two settings has stopped improving


def search_cost(index: faiss.Index, params: str, refine: int, k: int) -> float:
    """A query's work at `params` and `refine`, in code bytes scanned: nprobe lists of the average
    length (codes of `code_size` bytes), plus the re-ranking of refine x k rows of d dimensions."""
    ivf = faiss.try_extract_index_ivf(index)
    scanned = 0.0
    if ivf is not None and "nprobe=" in params:
        nprobe = int(params.split("nprobe=")[1].split(",")[0])
        scanned = nprobe * ivf.ntotal / ivf.nlist * ivf.code_size
    return scanned + refine * k * index.d * RERANK_COST


def tune_search(index: faiss.Index, embeddings: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                target: float, refines: Sequence[int] = REFINES) -> Tuning:
    """The cheapest (`search_cost`) setting of `search_candidates(index)` and re-ranking depth whose
    served search (index, then exact re-ranking against `embeddings`) finds `target` of the exact
    top-k (`truth`) of `queries`; the best one tried when none does (its recall says so). Each
    setting is searched once at the deepest depth, the shallower ones re-ranking a prefix of its
    hits; settings stop being tried once every depth reached the target or stopped improving."""
    k = truth.shape[1]
    searcher = FaissSearch(index, embeddings, None, "", max(refines))
    if not searcher.approximate:
        recall = recall_at(searcher.search(queries, k).ids, truth)
        return Tuning("", 1, recall, [("", {1: recall})])
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    curve: list[tuple[str, dict[int, float]]] = []
    for params in search_candidates(index):
        faiss.ParameterSpace().set_index_parameters(index, params)
        ids = index.search(queries, min(len(embeddings), k * max(refines)))[1]
        curve.append((params, {r: recall_at(searcher.rerank(queries, ids[:, :k * r], k).ids, truth) for r in refines}))
        recalls = [by_refine for _, by_refine in curve]
        if all(recalls[-1][r] >= target or (len(recalls) > 2 and recalls[-1][r] - recalls[-3][r] < PLATEAU)
               for r in refines):
            break
    tried = [(params, r, recall) for params, by_refine in curve for r, recall in by_refine.items()]
    reached = [t for t in tried if t[2] >= target]
    params, refine, recall = min(reached, key=lambda t: search_cost(index, t[0], t[1], k)) if reached else \
        max(tried, key=lambda t: (t[2], -search_cost(index, t[0], t[1], k)))
    faiss.ParameterSpace().set_index_parameters(index, params)
    return Tuning(params, refine, recall, curve)


class _Writer:
    """Appends captions, their embeddings and their terms to a database folder with bounded memory."""

    def __init__(self, out_dir: Path, dim: int, lexicon: Lexicon):
        self.out_dir, self.dim, self.lexicon = out_dir, dim, lexicon
        self.count = 0
        self.term_ids: dict[str, int] = {}
        self._files = {name: open(out_dir / name, "wb") for name in
                       ("embeddings.f16", "captions.bin", "captions.offsets", "caption_terms.ptr", "caption_terms.ids")}
        self._text_offset = 0
        self._term_offset = 0
        self._files["captions.offsets"].write(np.int64(0).tobytes())
        self._files["caption_terms.ptr"].write(np.int64(0).tobytes())

    def add(self, captions: Sequence[str], embeddings: np.ndarray) -> None:
        if embeddings.shape != (len(captions), self.dim):
            raise DatabaseError(f"{len(captions)} captions came with embeddings of shape {embeddings.shape}; "
                                f"expected ({len(captions)}, {self.dim})")
        self._files["embeddings.f16"].write(np.ascontiguousarray(embeddings, dtype=np.float16).tobytes())
        encoded = [c.encode("utf-8") for c in captions]
        self._files["captions.bin"].write(b"".join(encoded))
        offsets = self._text_offset + np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._files["captions.offsets"].write(offsets.tobytes())
        self._text_offset = int(offsets[-1]) if len(offsets) else self._text_offset
        ids: list[int] = []
        ptr = np.zeros(len(captions), np.int64)
        for i, caption in enumerate(captions):
            ids.extend(self.term_ids.setdefault(t, len(self.term_ids)) for t in caption_terms(caption, self.lexicon))
            ptr[i] = self._term_offset + len(ids)
        self._files["caption_terms.ids"].write(np.asarray(ids, np.int32).tobytes())
        self._files["caption_terms.ptr"].write(ptr.tobytes())
        self._term_offset += len(ids)
        self.count += len(captions)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def _train(plan: IndexPlan, dim: int, sample: np.ndarray) -> faiss.Index:
    """An index for `plan`, trained on `sample` (float32; rotated in place, so one copy is held)."""
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    outer = faiss.downcast_index(index)
    inner = outer
    if isinstance(outer, faiss.IndexPreTransform):
        for i in range(outer.chain.size()):
            transform = faiss.downcast_VectorTransform(outer.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter, transform.niter_pq_0, transform.max_train_points = \
                    OPQ_ITERATIONS, OPQ_FIRST_PASSES, OPQ_POINTS
            transform.train(sample)
            for start in range(0, len(sample), BLOCK_ROWS):
                sample[start:start + BLOCK_ROWS] = transform.apply(sample[start:start + BLOCK_ROWS])
        inner = faiss.downcast_index(outer.index)
    ivf = faiss.extract_index_ivf(inner)
    if plan.nlist >= 4096:
        # Two-level k-means (faiss.contrib.clustering, as faiss's own large-index benchmarks train):
        # sqrt(nlist) clusters, each then split; hundreds of times cheaper than one k-means over all
        # the lists. Spherical, as faiss trains an inner-product IVF (cp.spherical).
        from faiss.contrib.clustering import two_level_clustering

        centroids, _ = two_level_clustering(sample, int(math.sqrt(plan.nlist)), plan.nlist,
                                            spherical=bool(ivf.cp.spherical), seed=1234)
        ivf.quantizer.add(centroids)  # a filled quantizer is not trained again by train()
    inner.train(sample)  # the coarse quantizer (unless filled above), then the PQ on residuals
    outer.is_trained = True
    return index  # the object that owns the C++ index (`outer` and `inner` are views of it)


def _build_index(path: Path, count: int, dim: int, plan: IndexPlan, rng: np.random.Generator,
                 progress: Progress) -> faiss.Index:
    """The index for `plan`, trained on a sample of the embeddings file at `path` and filled from it."""
    progress("training", 0, 1)
    index = faiss.IndexFlatIP(dim)
    if not plan.exact:
        [sample] = _pick_rows(path, count, dim, np.sort(rng.choice(count, size=plan.train_size, replace=False)))
        index = _train(plan, dim, sample)
        del sample
    progress("training", 1, 1)
    progress("indexing", 0, count)
    for start, block in read_blocks(path, count, dim):
        index.add(block)
        progress("indexing", start + len(block), count)
    return index


def _tuned(index: faiss.Index, path: Path, count: int, dim: int, queries: np.ndarray | None,
           options: BuildOptions, rng: np.random.Generator, progress: Progress) -> dict:
    """Tune `index`'s search over the embeddings file at `path` on `queries` (default:
    `caption_queries` of sampled rows) against exact search; the manifest's record of it."""
    progress("tuning", 0, 2)
    if queries is None:
        held = np.sort(rng.choice(count, size=min(count, options.tuning_queries), replace=False))
        [rows] = _pick_rows(path, count, dim, held)
        queries = caption_queries(rows, rng)
    truth = exact_search_blocks(read_blocks(path, count, dim), queries, options.k)[1]
    progress("tuning", 1, 2)
    tuning = tune_search(index, np.memmap(path, np.float16, "r", shape=(count, dim)), queries, truth,
                         options.recall_target)
    progress("tuning", 2, 2)
    return tuning_info(index, tuning, options, len(queries))


def _atomic_folder(out_dir: Path) -> Path:
    """A fresh temporary folder beside `out_dir`, which must not exist or be empty."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatabaseError(f"output folder {out_dir} is not empty; choose a new folder or delete it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))


def _write(out_dir: str | Path, dim: int, parts: Iterable[tuple[Sequence[str], np.ndarray]], model_identity: str,
           encode_texts: Callable[[Sequence[str]], np.ndarray], lexicon: Lexicon, source: dict,
           options: BuildOptions, progress: Progress | None, index: faiss.Index | None = None,
           queries: np.ndarray | None = None, total: int | None = None) -> Path:
    """Every build's steps: captions and embeddings from `parts`, the terms, the index (`index` when an
    import brings one, else built by `plan_index`), its search settings tuned on held-out queries
    (`queries`, or `caption_queries`), checksums, the manifest; in a temporary folder moved into place
    at the end (removed if anything fails)."""
    progress = progress or _no_progress
    out = Path(out_dir)
    work = _atomic_folder(out)
    try:
        writer = _Writer(work, dim, lexicon)
        try:
            progress("captions", 0, total)
            for captions, embeddings in parts:
                writer.add(captions, embeddings)
                progress("captions", writer.count, total)
        finally:
            writer.close()
        count = writer.count
        if count == 0:
            raise DatabaseError("no captions were read: check the input files and --caption-column")
        if index is not None and index.ntotal != count:
            raise DatabaseError(f"the metadata holds {count} captions but the index holds {index.ntotal} vectors; "
                                f"the database is incomplete")
        terms = list(writer.term_ids)
        (work / "terms.txt").write_text("".join(t + "\n" for t in terms), encoding="utf-8")
        progress("terms", 0, len(terms))
        term_embeddings = encode_texts(terms) if terms else np.zeros((0, dim), np.float32)
        term_embeddings.astype(np.float16).tofile(work / "terms.f16")
        progress("terms", len(terms), len(terms))

        rng = np.random.default_rng(options.seed)
        embeddings_path = work / "embeddings.f16"
        if index is None:
            plan = plan_index(count, dim, options)
            index = _build_index(embeddings_path, count, dim, plan, rng, progress)
            info = {"factory": plan.factory, "train_size": plan.train_size, "origin": "built"}
        else:
            info = {"factory": _describe(index), "origin": source.get("origin", "imported")}
        info.update(metric="inner_product", **_tuned(index, embeddings_path, count, dim, queries, options, rng, progress))
        faiss.write_index(index, str(work / "index.faiss"))
        del index
        progress("checksums", 0, len(FILES))
        checksums = {}
        for n, name in enumerate(FILES):
            checksums[name] = sha256_file(work / name)
            progress("checksums", n + 1, len(FILES))
        manifest = {
            "format": FORMAT, "model": model_identity, "dim": dim, "count": count,
            "terms": len(terms), "index": info, "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": checksums,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above): replaced by the finished folder
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def tuning_info(index: faiss.Index, tuning: Tuning, options: BuildOptions, queries: int) -> dict:
    """The manifest's record of a tuning (its `index` section)."""
    ivf = faiss.try_extract_index_ivf(index)
    nprobe = int(tuning.params.split("nprobe=")[1].split(",")[0]) if "nprobe=" in tuning.params else None
    return {"search_params": tuning.params, "nprobe": nprobe if ivf is not None else None, "refine": tuning.refine,
            "recall_target": options.recall_target, "recall_at_k": round(tuning.recall, 4), "k": options.k,
            "tuning_queries": queries,
            "tuning_curve": [[p, {str(r): round(v, 4) for r, v in by_refine.items()}] for p, by_refine in tuning.curve]}


def retune(path: str | Path, options: BuildOptions = BuildOptions(), queries: np.ndarray | None = None,
           progress: Progress | None = None) -> dict:
    """Tune a built database's search settings again (another target, other queries, a newer tuner)
    without rebuilding it: the manifest's index section is rewritten (atomically); the files it
    checksums are not touched. Returns the new index section."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    index = faiss.read_index(str(path / "index.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    manifest["index"].update(_tuned(index, path / "embeddings.f16", manifest["count"], manifest["dim"], queries,
                                    options, np.random.default_rng(options.seed), progress or _no_progress))
    partial = path / "manifest.json.part"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path / "manifest.json")
    return manifest["index"]


def _describe(index: faiss.Index) -> str:
    """An index's structure, e.g. ``OPQMatrix(64->96),IndexIVFPQ(nlist=512, quantizer=IndexFlatIP)``
    (imports keep someone else's index; faiss reads an OPQ rotation back as a LinearTransform)."""
    parts = []
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            parts.append(f"{type(transform).__name__}({transform.d_in}->{transform.d_out})")
        index = faiss.downcast_index(index.index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        quantizer = type(faiss.downcast_index(ivf.quantizer)).__name__
        parts.append(f"{type(faiss.downcast_index(ivf)).__name__}(nlist={ivf.nlist}, quantizer={quantizer})")
    else:
        parts.append(type(index).__name__)
    return ",".join(parts)


def build_database(sources: Sequence[str | Path], out_dir: str | Path, model, lexicon: Lexicon,
                   caption_column: str = "caption", chunk_size: int = 16_384, batch_size: int = 256,
                   progress: Progress | None = None, options: BuildOptions = BuildOptions()) -> Path:
    """`cased db build`: stream captions from files (normalised, exact duplicates dropped), embed them
    with `model`'s text encoder, index them, write a database folder.

    Raises:
        DatabaseError: `out_dir` not empty, no captions, or an unreadable caption file.
    """
    captions = unique_captions(c for source in sources for c in read_captions(source, caption_column))
    parts = ((chunk, model.encode_texts(chunk, batch_size=batch_size)) for chunk in chunks(captions, chunk_size))
    total = sum(caption_rows(source, caption_column) for source in sources)  # at most: duplicates are dropped
    return _write(out_dir, model.dim, parts, model.identity, model.encode_texts, lexicon,
                  {"files": [Path(s).name for s in sources], "caption_column": caption_column}, options, progress,
                  total=total)


def build_from_embeddings(captions: Sequence[str], embeddings: np.ndarray, out_dir: str | Path,
                          model_identity: str, encode_texts: Callable[[Sequence[str]], np.ndarray],
                          lexicon: Lexicon, progress: Progress | None = None,
                          options: BuildOptions = BuildOptions(), chunk_size: int = 65_536) -> Path:
    """Write a database from captions whose embeddings are already computed and held in memory."""
    parts = ((captions[s:s + chunk_size], embeddings[s:s + chunk_size]) for s in range(0, len(captions), chunk_size))
    return build_from_parts(parts, out_dir, embeddings.shape[1], model_identity, encode_texts, lexicon,
                            progress, options, total=len(captions))


def build_from_parts(parts: Iterable[tuple[Sequence[str], np.ndarray]], out_dir: str | Path, dim: int,
                     model_identity: str, encode_texts: Callable[[Sequence[str]], np.ndarray], lexicon: Lexicon,
                     progress: Progress | None = None, options: BuildOptions = BuildOptions(),
                     queries: np.ndarray | None = None, total: int | None = None) -> Path:
    """Write a database from (captions, embeddings) parts as they come (a generator: any size in
    bounded memory). `queries`: held-out image embeddings to tune the index's search on (default:
    `caption_queries`).

    Examples:
        >>> import tempfile, numpy as np
        >>> from cased_core.method.lexicon import load_lexicon
        >>> rows = np.eye(3, 8, dtype=np.float32)
        >>> out = build_from_parts([(["a dog", "a cat", "a cow"], rows)], tempfile.mkdtemp() + "/db", 8,
        ...                        "example", lambda texts: np.ones((len(texts), 8), np.float32), load_lexicon())
        >>> json.loads((out / "manifest.json").read_text())["count"]
        3
    """
    return _write(out_dir, dim, parts, model_identity, encode_texts, lexicon, {"origin": "embeddings"}, options,
                  progress, queries=queries, total=total)


def import_clip_retrieval(src_dir: str | Path, out_dir: str | Path, model, lexicon: Lexicon,
                          caption_column: str = "caption", chunk_size: int = 16_384, batch_size: int = 256,
                          progress: Progress | None = None, options: BuildOptions = BuildOptions()) -> Path:
    """Import a clip-retrieval/autofaiss database (``text.index`` + ``metadata/``: Parquet as its
    inference writes, or Arrow as its back end's ``--use_arrow`` reads; see
    `captions.clip_retrieval_captions`), the layout the CaSED authors publish their databases in. The
    index is kept as is, its search settings tuned here like a built one's; captions are embedded once
    here so that query time never does it.

    Raises:
        DatabaseError: not that layout, or metadata and index of different lengths.
        ModelMismatchError: the index holds embeddings of another dimension than `model`'s.
    """
    src = Path(src_dir)
    index_path = src / "text.index"
    if not index_path.is_file() or not (src / "metadata").is_dir():
        raise DatabaseError(f"{src} is not a clip-retrieval database: expected text.index and metadata/")
    index = faiss.read_index(str(index_path))
    if index.d != model.dim:
        raise ModelMismatchError(f"{index_path} holds {index.d}-dimensional embeddings but model "
                                 f"{model.identity} has {model.dim}; import it with the model it was built with")
    # Rows must stay aligned with the index: no dropping, no deduplication here.
    parts = ((column, model.encode_texts(column, batch_size=batch_size))
             for column in clip_retrieval_captions(src / "metadata", caption_column, chunk_size))
    return _write(out_dir, model.dim, parts, model.identity, model.encode_texts, lexicon,
                  {"clip_retrieval": str(src), "caption_column": caption_column,
                   "origin": f"clip-retrieval import of {src.name}"}, options, progress, index=index,
                  total=index.ntotal)
