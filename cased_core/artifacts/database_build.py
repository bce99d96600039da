"""Writing caption databases: `cased db build` (caption files), imports of clip-retrieval databases,
and databases from precomputed embeddings (benchmarks). The layout is described in cased_core.artifacts.database.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np

from cased_core.method.candidates import caption_terms
from cased_core.artifacts.captions import chunks, normalise_caption, read_captions, unique_captions
from cased_core.artifacts.database import FILES, FORMAT, DatabaseError, ModelMismatchError
from cased_core.artifacts.digest import sha256_file
from cased_core.method.lexicon import Lexicon

EXACT_INDEX_LIMIT = 200_000  # below this an exact index is small and fast enough


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
        for chunk in chunks(captions, chunk_size):
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
            for chunk in chunks(column, chunk_size):
                writer.add(chunk, model.encode_texts(chunk, progress=bar.update))
    if writer.count != index.ntotal:
        raise DatabaseError(f"{src}: the metadata holds {writer.count} captions but text.index "
                            f"holds {index.ntotal} vectors; the database is incomplete")
    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, faiss.IndexFlat) else None
    info = {"factory": type(index).__name__, "nprobe": max(16, ivf.nlist // 32) if ivf else None,
            "metric": "inner_product", "origin": f"clip-retrieval import of {src.name}"}
    return writer.finish(model.identity, model.encode_texts, index, info,
                         {"clip_retrieval": str(src), "caption_column": caption_column}, show_progress)
