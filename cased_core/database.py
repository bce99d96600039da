"""The caption database: build, import, save, load (local or s3://), search.

A database is a folder:
- ``manifest.json``: model identity, dimension, count, index parameters, checksums;
- ``index.faiss``: inner-product index over caption text embeddings (exact when small, IVF-PQ when large);
- ``embeddings.f16``: caption embeddings, fp16 (count, dim), so query time never re-encodes captions;
- ``captions.bin`` + ``captions.offsets``: UTF-8 captions and their int64 offsets, memory-mapped;
- ``terms.txt`` + ``terms.f16``: the lexicon terms found in the captions and their text embeddings, so
  candidate names never cost a text-encoder forward per image;
- ``caption_terms.ptr`` + ``caption_terms.ids``: each caption's terms (CSR), precomputed by the same
  cleaning the reference runs per image.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

from cased_core.candidates import caption_terms
from cased_core.digest import sha256_file
from cased_core.lexicon import Lexicon

FORMAT = "cased-db/1"
TINY_DATABASE_DIR = Path(__file__).parent / "data" / "tiny-db"
EXACT_INDEX_LIMIT = 200_000  # below this an exact index is small and fast enough
REFINE = 4  # approximate indexes fetch REFINE * k hits and re-rank them exactly

FILES = ("index.faiss", "embeddings.f16", "captions.bin", "captions.offsets", "terms.txt", "terms.f16",
         "caption_terms.ptr", "caption_terms.ids")


class DatabaseError(RuntimeError):
    """A database that cannot be built or used; the message says what is wrong and how to fix it."""


class ModelMismatchError(DatabaseError):
    pass


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # faiss index_factory string
    nprobe: int | None
    train_size: int


def plan_index(count: int, dim: int) -> IndexPlan:
    """Exact search for small databases; IVF with PQ (OPQ-rotated from 5M) for large ones."""
    if count < EXACT_INDEX_LIMIT:
        return IndexPlan("Flat", None, 0)
    nlist = 2 ** round(math.log2(math.sqrt(count)))
    m = max(d for d in range(1, dim // 8 + 1) if dim % d == 0)  # about 8 dims per byte-sized sub-quantiser
    prefix = f"OPQ{m}," if count >= 5_000_000 else ""
    return IndexPlan(f"{prefix}IVF{nlist},PQ{m}x8", nprobe=max(16, nlist // 32), train_size=min(count, 64 * nlist))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="cap", disable=not enabled, file=sys.stderr, mininterval=1.0)


# ---------------------------------------------------------------- reading caption files

def normalise_caption(text: str) -> str:
    return " ".join(text.split())


def read_captions(path: str | Path, column: str = "caption", chunk_rows: int = 65_536) -> Iterator[str]:
    """Stream captions from plain text (one per line), CSV, JSONL or Parquet with a caption column."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if not path.is_file():
        raise DatabaseError(f"caption file {path} does not exist")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise DatabaseError(f"{path} has no column {column!r} (columns: {parquet.schema_arrow.names}); "
                                f"pass --caption-column")
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[column]):
            yield from (c for c in batch.column(0).to_pylist() if c)
        return
    opener = (lambda: io.TextIOWrapper(__import__("gzip").open(path), encoding="utf-8")) \
        if path.suffix == ".gz" else (lambda: open(path, encoding="utf-8", newline=""))
    with opener() as f:
        if suffix.startswith(".csv") or suffix.startswith(".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix.startswith(".tsv") else ",")
            if column not in (reader.fieldnames or []):
                raise DatabaseError(f"{path} has no column {column!r} (columns: {reader.fieldnames}); "
                                    f"pass --caption-column")
            yield from (row[column] for row in reader if row.get(column))
        elif suffix.startswith(".jsonl"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        value = json.loads(line).get(column)
                    except (json.JSONDecodeError, AttributeError) as err:
                        raise DatabaseError(f"{path}:{number}: not a JSON object ({err})") from err
                    if value:
                        yield str(value)
        else:
            yield from (line.rstrip("\n") for line in f)


def unique_captions(captions: Iterable[str]) -> Iterator[str]:
    """Normalised, non-empty, exact duplicates dropped (8-byte digests keep memory at ~80 B a caption)."""
    seen: set[bytes] = set()
    for caption in captions:
        text = normalise_caption(caption)
        if not text:
            continue
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if digest not in seen:
            seen.add(digest)
            yield text


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------- writing

class _Writer:
    """Appends captions, their embeddings and their terms to a database folder with bounded memory."""

    def __init__(self, out_dir: Path, dim: int, lexicon: Lexicon):
        if out_dir.exists() and any(out_dir.iterdir()):
            raise DatabaseError(f"output folder {out_dir} is not empty; choose a new folder or delete it")
        out_dir.mkdir(parents=True, exist_ok=True)
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
        assert embeddings.shape == (len(captions), self.dim)
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

    def finish(self, model_identity: str, encode_texts: Callable[[Sequence[str]], np.ndarray],
               index: faiss.Index | None, index_info: dict, source: dict, show_progress: bool) -> Path:
        for f in self._files.values():
            f.close()
        if self.count == 0:
            raise DatabaseError("no captions were read: check the input files and --caption-column")
        terms = list(self.term_ids)
        (self.out_dir / "terms.txt").write_text("".join(t + "\n" for t in terms), encoding="utf-8")
        _say(f"embedding {len(terms)} candidate terms found in the captions")
        term_embeddings = encode_texts(terms) if terms else np.zeros((0, self.dim), np.float32)
        term_embeddings.astype(np.float16).tofile(self.out_dir / "terms.f16")
        embeddings = np.memmap(self.out_dir / "embeddings.f16", np.float16, "r", shape=(self.count, self.dim))
        if index is None:
            plan = plan_index(self.count, self.dim)
            index = _build_index(embeddings, plan, show_progress)
            index_info = {"factory": plan.factory, "nprobe": plan.nprobe, "train_size": plan.train_size,
                          "metric": "inner_product", "origin": "built"}
        faiss.write_index(index, str(self.out_dir / "index.faiss"))
        manifest = {
            "format": FORMAT, "model": model_identity, "dim": self.dim, "count": self.count,
            "terms": len(terms), "index": index_info, "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {name: sha256_file(self.out_dir / name) for name in FILES},
        }
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return self.out_dir


def _build_index(embeddings: np.ndarray, plan: IndexPlan, show_progress: bool, chunk: int = 65_536) -> faiss.Index:
    count, dim = embeddings.shape
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.train_size:
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(count, size=plan.train_size, replace=False))
        _say(f"training {plan.factory} on {plan.train_size} of {count} embeddings")
        index.train(np.asarray(embeddings[sample], dtype=np.float32))
    with _progress_bar(count, "indexing", show_progress) as bar:
        for start in range(0, count, chunk):
            index.add(np.asarray(embeddings[start:start + chunk], dtype=np.float32))
            bar.update(min(chunk, count - start))
    return index


def build_database(sources: Sequence[str | Path], out_dir: str | Path, model, lexicon: Lexicon,
                   caption_column: str = "caption", chunk_size: int = 16_384, batch_size: int = 256,
                   show_progress: bool = True) -> Path:
    """`cased db build`: stream captions from files, embed them, index them, write a database folder."""
    writer = _Writer(Path(out_dir), model.dim, lexicon)
    captions = unique_captions(c for source in sources for c in read_captions(source, caption_column))
    with _progress_bar(None, "embedding captions", show_progress) as bar:
        for chunk in _chunks(captions, chunk_size):
            writer.add(chunk, model.encode_texts(chunk, batch_size=batch_size, progress=bar.update))
    return writer.finish(model.identity, model.encode_texts, None, {},
                         {"files": [Path(s).name for s in sources], "caption_column": caption_column},
                         show_progress)


def build_from_embeddings(captions: Sequence[str], embeddings: np.ndarray, out_dir: str | Path,
                          model_identity: str, encode_texts: Callable[[Sequence[str]], np.ndarray],
                          lexicon: Lexicon, show_progress: bool = True, chunk_size: int = 65_536) -> Path:
    """Write a database from captions whose embeddings are already computed (imports, benchmarks)."""
    writer = _Writer(Path(out_dir), embeddings.shape[1], lexicon)
    with _progress_bar(len(captions), "writing captions", show_progress) as bar:
        for start in range(0, len(captions), chunk_size):
            writer.add(captions[start:start + chunk_size], embeddings[start:start + chunk_size])
            bar.update(min(chunk_size, len(captions) - start))
    return writer.finish(model_identity, encode_texts, None, {}, {"origin": "embeddings"}, show_progress)


def import_clip_retrieval(src_dir: str | Path, out_dir: str | Path, model, lexicon: Lexicon,
                          caption_column: str = "caption", chunk_size: int = 16_384,
                          show_progress: bool = True) -> Path:
    """Import a clip-retrieval/autofaiss database (``text.index`` + ``metadata/**/*.arrow``), the layout
    the CaSED authors publish their databases in. The index is kept as is; captions are embedded once
    here so that query time never does it."""
    import pyarrow as pa

    src = Path(src_dir)
    index_path = src / "text.index"
    arrows = sorted(p for p in (src / "metadata").glob("**/*.arrow") if p.is_file())
    if not index_path.is_file() or not arrows:
        raise DatabaseError(f"{src} is not a clip-retrieval database: expected text.index and metadata/*.arrow")
    index = faiss.read_index(str(index_path))
    if index.d != model.dim:
        raise ModelMismatchError(f"{index_path} holds {index.d}-dimensional embeddings but model "
                                 f"{model.identity} has {model.dim}; import it with the model it was built with")
    writer = _Writer(Path(out_dir), model.dim, lexicon)
    with _progress_bar(index.ntotal, "embedding captions", show_progress) as bar:
        for arrow in arrows:
            table = pa.ipc.RecordBatchFileReader(pa.memory_map(str(arrow), "r")).read_all()
            if caption_column not in table.column_names:
                raise DatabaseError(f"{arrow} has no column {caption_column!r} (columns: {table.column_names})")
            # Rows must stay aligned with the index: no dropping, no deduplication here.
            column = [normalise_caption(c or "") for c in table.column(caption_column).to_pylist()]
            for chunk in _chunks(column, chunk_size):
                writer.add(chunk, model.encode_texts(chunk, progress=bar.update))
    if writer.count != index.ntotal:
        raise DatabaseError(f"{src}: the metadata holds {writer.count} captions but text.index "
                            f"holds {index.ntotal} vectors; the database is incomplete")
    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, faiss.IndexFlat) else None
    info = {"factory": type(index).__name__, "nprobe": max(16, ivf.nlist // 32) if ivf else None,
            "metric": "inner_product", "origin": f"clip-retrieval import of {src.name}"}
    return writer.finish(model.identity, model.encode_texts, index, info,
                         {"clip_retrieval": str(src), "caption_column": caption_column}, show_progress)


# ---------------------------------------------------------------- loading and searching

@dataclass(frozen=True)
class SearchHits:
    scores: np.ndarray  # (batch, k) inner products
    ids: np.ndarray  # (batch, k) caption ids, -1 where fewer than k exist


class Database:
    """A loaded database; large arrays stay memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise DatabaseError(f"{self.path} is not a cased database (no manifest.json); build one with "
                                f"`cased db build` or import one with `cased db import`")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise DatabaseError(f"{self.path} has format {self.manifest.get('format')!r}, this version reads {FORMAT}")
        self.model: str = self.manifest["model"]
        self.dim: int = self.manifest["dim"]
        self.count: int = self.manifest["count"]
        self.index = faiss.read_index(str(self.path / "index.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        nprobe = self.manifest["index"].get("nprobe")
        if nprobe:
            faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.approximate = nprobe is not None
        self.embeddings = np.memmap(self.path / "embeddings.f16", np.float16, "r", shape=(self.count, self.dim))
        self._text = np.memmap(self.path / "captions.bin", np.uint8, "r") if self.count else np.zeros(0, np.uint8)
        self._offsets = np.fromfile(self.path / "captions.offsets", np.int64)
        self.terms: list[str] = (self.path / "terms.txt").read_text(encoding="utf-8").splitlines()
        self.term_embeddings = np.fromfile(self.path / "terms.f16", np.float16).reshape(-1, self.dim).astype(np.float32)
        self._term_ptr = np.fromfile(self.path / "caption_terms.ptr", np.int64)
        self._term_ids = np.memmap(self.path / "caption_terms.ids", np.int32, "r") \
            if self._term_ptr[-1] else np.zeros(0, np.int32)

    @property
    def name(self) -> str:
        """Names this database's content in label events: folder name and manifest digest."""
        digest = hashlib.sha256(json.dumps(self.manifest["files"], sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.path.name}@{digest}"

    def check_model(self, model_identity: str) -> None:
        if model_identity != self.model:
            raise ModelMismatchError(f"database {self.path} was built with model {self.model!r} but the loaded "
                                     f"model is {model_identity!r}; load that model or rebuild the database "
                                     f"with `cased db build --model ...`")

    def caption(self, i: int) -> str:
        return bytes(self._text[self._offsets[i]:self._offsets[i + 1]]).decode("utf-8")

    def caption_embeddings(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.embeddings[np.asarray(ids)], dtype=np.float32)

    def caption_term_ids(self, i: int) -> np.ndarray:
        return np.asarray(self._term_ids[self._term_ptr[i]:self._term_ptr[i + 1]])

    def caption_terms_flat(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The term ids of the captions `ids` (1-D), concatenated in order, and for each the index in
        `ids` of the caption it came from."""
        ids = np.asarray(ids, np.int64)
        starts, lengths = self._term_ptr[ids], self._term_ptr[ids + 1] - self._term_ptr[ids]
        owners = np.repeat(np.arange(len(ids)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owners, np.asarray(self._term_ids[np.repeat(starts, lengths) + within])

    def search(self, queries: np.ndarray, k: int) -> SearchHits:
        """k nearest captions by inner product; approximate indexes re-rank REFINE * k hits exactly
        against the stored embeddings."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = min(self.count, k * REFINE if self.approximate else k)
        scores, ids = self.index.search(queries, fetch)
        if not self.approximate:
            return SearchHits(scores, ids)
        valid = ids >= 0  # re-ranked exactly against the stored embeddings, all rows at once
        stored = self.caption_embeddings(np.where(valid, ids, 0).reshape(-1)).reshape(*ids.shape, -1)
        exact = np.where(valid, np.einsum("nrd,nd->nr", stored, queries), -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(exact, order, axis=1)
        out_ids = np.where(np.isfinite(out_scores), np.take_along_axis(ids, order, axis=1), -1)
        short = k - out_ids.shape[1]  # a database of fewer than k captions
        return SearchHits(np.pad(out_scores, ((0, 0), (0, short)), constant_values=-np.inf),
                          np.pad(out_ids, ((0, 0), (0, short)), constant_values=-1))


def default_cache_dir() -> Path:
    return Path(os.environ.get("CASED_CACHE_DIR", Path.home() / ".cache" / "cased-stream"))


def _download_s3(uri: str, cache_dir: Path, s3_client=None) -> Path:
    """Fetch a database folder from s3://bucket/prefix once; files already cached with the manifest's
    checksum are not fetched again, and every file is verified."""
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise DatabaseError(f"{uri}: expected s3://BUCKET/PREFIX pointing at a database folder")
    client = s3_client or boto3.client("s3")
    local = cache_dir / "databases" / bucket / prefix
    local.mkdir(parents=True, exist_ok=True)
    try:
        manifest_bytes = client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    except client.exceptions.NoSuchKey as err:
        raise DatabaseError(f"{uri}/manifest.json does not exist: is the prefix a database folder?") from err
    manifest = json.loads(manifest_bytes)
    for name, checksum in manifest["files"].items():
        target = local / name
        if target.is_file() and sha256_file(target) == checksum:
            continue
        _say(f"downloading {uri}/{name}")
        partial = target.with_suffix(target.suffix + ".part")
        client.download_file(bucket, f"{prefix}/{name}", str(partial))
        if sha256_file(partial) != checksum:
            partial.unlink()
            raise DatabaseError(f"{uri}/{name} does not match its manifest checksum; the upload is corrupt or "
                                f"incomplete, upload the database folder again")
        partial.replace(target)
    (local / "manifest.json").write_bytes(manifest_bytes)
    return local


def load_database(location: str | Path = "tiny", model_identity: str | None = None,
                  cache_dir: str | Path | None = None, s3_client=None) -> Database:
    """Open a database: 'tiny' (shipped), a local folder, or an s3:// URI (cached locally, verified).
    With `model_identity`, a database built with another model is refused."""
    location = str(location)
    if location == "tiny":
        path = TINY_DATABASE_DIR
    elif location.startswith("s3://"):
        path = _download_s3(location, Path(cache_dir) if cache_dir else default_cache_dir(), s3_client)
    else:
        path = Path(location)
        if not path.is_dir():
            raise DatabaseError(f"database folder {path} does not exist; pass 'tiny', a folder written by "
                                f"`cased db build`, or an s3:// URI")
    database = Database(path)
    if model_identity is not None:
        database.check_model(model_identity)
    return database

