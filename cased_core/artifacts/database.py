"""A caption database, loaded for serving: captions, their embeddings and terms, and the k-NN search.
Writing one is cased_core.artifacts.database_build; fetching one from S3 is workers.databases.

A database is a folder:
- ``manifest.json``: model identity, dimension, count, index parameters, checksums;
- ``index.faiss``: inner-product index over caption text embeddings (exact when small, OPQ + IVF + PQ
  when large; memory-mapped), with the search settings the builder tuned on held-out queries recorded
  in the manifest (``index.search_params``);
- ``embeddings.f16``: caption embeddings, fp16 (count, dim), so query time never re-encodes captions;
- ``captions.bin`` + ``captions.offsets``: UTF-8 captions and their int64 offsets, memory-mapped;
- ``terms.txt`` + ``terms.f16``: the lexicon terms found in the captions and their text embeddings, so
  candidate names never cost a text-encoder forward per image;
- ``caption_terms.ptr`` + ``caption_terms.ids``: each caption's terms (CSR), precomputed by the same
  cleaning the reference runs per image.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import torch

from cased_core.errors import DatabaseError
from cased_core.artifacts.search import REFINE, ExactSearch, FaissSearch, SearchHits, choose_search

FORMAT = "cased-db/1"
TINY_DATABASE_DIR = Path(__file__).parents[1] / "data" / "tiny-db"

FILES = ("index.faiss", "embeddings.f16", "captions.bin", "captions.offsets", "terms.txt", "terms.f16",
         "caption_terms.ptr", "caption_terms.ids")


class ModelMismatchError(DatabaseError):
    pass


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
        self.embeddings = np.memmap(self.path / "embeddings.f16", np.float16, "r", shape=(self.count, self.dim))
        self.searcher: FaissSearch | ExactSearch = FaissSearch(self.index, self.embeddings, self.search_params,
                                                               self.manifest["index"].get("factory", "index"),
                                                               self.refine)
        self._text = np.memmap(self.path / "captions.bin", np.uint8, "r") if self.count else np.zeros(0, np.uint8)
        self._offsets = np.fromfile(self.path / "captions.offsets", np.int64)
        self.terms: list[str] = (self.path / "terms.txt").read_text(encoding="utf-8").splitlines()
        self.term_embeddings = np.fromfile(self.path / "terms.f16", np.float16).reshape(-1, self.dim).astype(np.float32)
        self._term_ptr = np.fromfile(self.path / "caption_terms.ptr", np.int64)
        self._term_ids = np.memmap(self.path / "caption_terms.ids", np.int32, "r") \
            if self._term_ptr[-1] else np.zeros(0, np.int32)

    @property
    def search_params(self) -> str | None:
        """The index's faiss search settings (``nprobe=...``); databases from before tuning name nprobe only."""
        info = self.manifest["index"]
        if "search_params" in info:
            return info["search_params"] or None
        return f"nprobe={info['nprobe']}" if info.get("nprobe") else None

    @property
    def refine(self) -> int:
        return int(self.manifest["index"].get("refine", REFINE))

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

    def caption_embeddings_on(self, ids: np.ndarray, device: torch.device) -> torch.Tensor:
        """Embeddings of the captions `ids` (1-D) as float32 on `device`: gathered there when the exact
        search holds them on that device, else read from the memory-mapped file and copied."""
        if isinstance(self.searcher, ExactSearch) and self.searcher.device == device:
            return self.searcher.table[torch.from_numpy(np.asarray(ids, np.int64)).to(device)].float()
        return torch.from_numpy(self.caption_embeddings(ids)).to(device)

    def caption_terms_flat(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The term ids of the captions `ids` (1-D), concatenated in order, and for each the index in
        `ids` of the caption it came from."""
        ids = np.asarray(ids, np.int64)
        starts, lengths = self._term_ptr[ids], self._term_ptr[ids + 1] - self._term_ptr[ids]
        owners = np.repeat(np.arange(len(ids)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owners, np.asarray(self._term_ids[np.repeat(starts, lengths) + within])

    def use_search(self, kind: str = "auto", device: torch.device | str = "cpu",
                   memory_budget_mb: float = 0) -> None:
        """Search with the backend `kind` picks (cased_core.artifacts.search.choose_search); `memory_budget_mb`:
        what an exact search may hold on a GPU (cased_core.artifacts.search.exact_budget_mb sizes it)."""
        self.searcher = choose_search(kind, device, self.embeddings, self.index, self.search_params,
                                      self.manifest["index"].get("factory", "index"), memory_budget_mb, self.refine)

    def search(self, queries: np.ndarray, k: int) -> SearchHits:
        """The k nearest captions of each query by inner product, best first (`searcher` says how)."""
        return self.searcher.search(queries, k)
