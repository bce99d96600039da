"""k-nearest-caption search over a database's embeddings, by inner product: two backends, one call.

- `FaissSearch`: the database's faiss index on the CPU (exact when small; IVF-PQ when large, its hits
  re-ranked exactly against the stored embeddings), memory-mapped, any size;
- `ExactSearch`: the fp16 caption embeddings resident on a torch device, searched exactly by a
  chunked matrix product and top-k per chunk. On a GPU a million 768-d captions take 1.5 GB and a
  batch's search a fraction of a millisecond per image, where IVF-PQ on the CPU took as long as a
  ViT-L-14 forward; on the CPU it is the same code (tests run it there), slower than faiss.

`choose_search` picks: exact on a GPU when the embeddings fit the memory budget, faiss otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from cased_core.options import SEARCHES

REFINE = 4  # approximate indexes fetch REFINE * k hits and re-rank them exactly


@dataclass(frozen=True)
class SearchHits:
    scores: np.ndarray  # (batch, k) inner products, best first
    ids: np.ndarray  # (batch, k) caption ids, -1 where fewer than k exist


def _padded(scores: np.ndarray, ids: np.ndarray, k: int) -> SearchHits:
    short = k - ids.shape[1]  # a database of fewer than k captions
    return SearchHits(np.pad(scores, ((0, 0), (0, short)), constant_values=-np.inf),
                      np.pad(ids, ((0, 0), (0, short)), constant_values=-1))


class FaissSearch:
    def __init__(self, index: faiss.Index, embeddings: np.ndarray, nprobe: int | None, factory: str):
        self.index, self.embeddings, self.approximate = index, embeddings, nprobe is not None
        if nprobe:
            faiss.extract_index_ivf(index).nprobe = nprobe
        self.name = f"faiss {factory}" + (f", nprobe {nprobe}, exact re-ranking of {REFINE}k" if nprobe else "")

    def search(self, queries: np.ndarray, k: int) -> SearchHits:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self.index.search(queries, min(len(self.embeddings), k * REFINE if self.approximate else k))
        if not self.approximate:
            return _padded(scores, ids, k)
        valid = ids >= 0  # re-ranked exactly against the stored embeddings, all rows at once
        stored = np.asarray(self.embeddings[np.where(valid, ids, 0).reshape(-1)], np.float32).reshape(*ids.shape, -1)
        exact = np.where(valid, np.einsum("nrd,nd->nr", stored, queries), -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(exact, order, axis=1)
        return _padded(top, np.where(np.isfinite(top), np.take_along_axis(ids, order, axis=1), -1), k)


class ExactSearch:
    """Every caption embedding on `device`, fp16; queries against `chunk` rows at a time (bounding the
    score matrix), each chunk's top k kept, then the top k of those."""

    def __init__(self, embeddings: np.ndarray, device: torch.device | str, chunk: int = 1 << 18):
        self.device, self.chunk = torch.device(device), chunk
        # fp16 products on a GPU; on the CPU fp16 matmul is slow, so chunks are widened to fp32 there
        self.compute = torch.float16 if self.device.type == "cuda" else torch.float32
        self.table = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float16)).to(self.device)
        self.name = f"exact on {self.device} ({len(embeddings):,} x {embeddings.shape[1]} fp16)"

    @torch.inference_mode()
    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> SearchHits:
        q = torch.as_tensor(queries).to(self.device, self.compute)
        best_scores, best_ids = [], []
        for start in range(0, len(self.table), self.chunk):
            scores = q @ self.table[start:start + self.chunk].to(self.compute).T
            top = torch.topk(scores.float(), min(k, scores.shape[1]), dim=1)
            best_scores.append(top.values)
            best_ids.append(top.indices + start)
        if not best_scores:
            return _padded(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        scores, ids = torch.cat(best_scores, dim=1), torch.cat(best_ids, dim=1)
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        return _padded(top.values.cpu().numpy(), torch.gather(ids, 1, top.indices).cpu().numpy(), k)


def choose_search(kind: str, device: torch.device | str, embeddings: np.ndarray, index: faiss.Index,
                  nprobe: int | None, factory: str, memory_budget_mb: float) -> FaissSearch | ExactSearch:
    """The backend for `kind`: 'exact' (on `device`), 'faiss', or 'auto': exact on a GPU when the
    embeddings fit `memory_budget_mb`, faiss otherwise.

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in SEARCHES:
        raise ValueError(f"unknown search {kind!r}: choose one of {', '.join(SEARCHES)}")
    fits = embeddings.nbytes <= memory_budget_mb * 2**20
    if kind == "exact" or (kind == "auto" and torch.device(device).type == "cuda" and fits):
        return ExactSearch(embeddings, device)
    return FaissSearch(index, embeddings, nprobe, factory)
