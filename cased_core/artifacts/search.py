"""k-nearest-caption search over a database's embeddings, by inner product: two backends, one call.

- `FaissSearch`: the database's faiss index on the CPU (exact when small; IVF-PQ when large, its hits
  re-ranked exactly against the stored embeddings), memory-mapped, any size;
- `ExactSearch`: the fp16 caption embeddings resident on a torch device, searched exactly by a
  chunked matrix product and top-k per chunk. On a GPU a million 768-d captions take 1.5 GB and a
  batch's search a fraction of a millisecond per image, where IVF-PQ on the CPU took as long as a
  ViT-L-14 forward; on the CPU it is the same code (tests run it there), slower than faiss.

`choose_search` picks: exact on a GPU when the embeddings fit the memory budget, faiss otherwise;
`exact_budget_mb` sizes that budget from the device's free memory (the worker reads it, see
workers.databases). `exact_search_blocks` is the same exact search streamed over blocks of rows, for
databases larger than memory (builds tune their index against it; benchmarks measure recall).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import faiss
import numpy as np
import torch

from cased_core.options import SEARCHES

REFINE = 4  # approximate indexes fetch REFINE * k hits and re-rank them exactly
# What an exact search on a GPU leaves free beside its table: the encoder's activations for a batch,
# the term table and the per-chunk score matrices (fractions of a GiB to a few GiB), with room to spare.
GPU_RESERVE_FRACTION = 0.2
GPU_RESERVE_MIN_MB = 2048


@dataclass(frozen=True)
class SearchHits:
    scores: np.ndarray  # (batch, k) inner products, best first
    ids: np.ndarray  # (batch, k) caption ids, -1 where fewer than k exist


def _padded(scores: np.ndarray, ids: np.ndarray, k: int) -> SearchHits:
    short = k - ids.shape[1]  # a database of fewer than k captions
    return SearchHits(np.pad(scores, ((0, 0), (0, short)), constant_values=-np.inf),
                      np.pad(ids, ((0, 0), (0, short)), constant_values=-1))


class FaissSearch:
    """The database's faiss index, searched with `params` (faiss ParameterSpace settings, e.g.
    ``nprobe=64,quantizer_efSearch=128``, as tuned by the builder); an approximate index's `refine` x k
    hits are re-ranked exactly against the stored embeddings, so scores are always exact."""

    def __init__(self, index: faiss.Index, embeddings: np.ndarray, params: str | None, factory: str,
                 refine: int = REFINE):
        self.index, self.embeddings, self.refine = index, embeddings, refine
        self.approximate = not isinstance(faiss.downcast_index(index), faiss.IndexFlat)
        if params:
            faiss.ParameterSpace().set_index_parameters(index, params)
        self.name = f"faiss {factory}" + (f", {params}" if params else "") + \
            (f", exact re-ranking of {refine}k" if self.approximate else "")

    def search(self, queries: np.ndarray, k: int) -> SearchHits:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self.index.search(queries, min(len(self.embeddings), k * self.refine if self.approximate else k))
        if not self.approximate:
            return _padded(scores, ids, k)
        return self.rerank(queries, ids, k)

    def rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> SearchHits:
        """The best k of candidate `ids` (-1: none) by their exact inner product with `queries`,
        computed against the stored embeddings, all rows at once."""
        valid = ids >= 0
        stored = np.asarray(self.embeddings[np.where(valid, ids, 0).reshape(-1)], np.float32).reshape(*ids.shape, -1)
        exact = np.where(valid, np.einsum("nrd,nd->nr", stored, queries), -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(exact, order, axis=1)
        return _padded(top, np.where(np.isfinite(top), np.take_along_axis(ids, order, axis=1), -1), k)


def exact_search_blocks(blocks: Iterable[tuple[int, np.ndarray]], queries: np.ndarray,
                        k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over (first row id, float32 rows) blocks: (scores, ids), best
    first, -1 ids where fewer than k rows exist. Memory: the queries and one block's scores.

    Examples:
        >>> rows = np.eye(4, dtype=np.float32)
        >>> exact_search_blocks([(0, rows[:3]), (3, rows[3:])], rows[[3, 1]], 1)[1].tolist()
        [[3], [1]]
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), -1, np.int64)
    for start, rows in blocks:
        scores = queries @ rows.T
        if scores.shape[1] > k:
            part = np.argpartition(-scores, k, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(scores.shape[1]), (len(queries), scores.shape[1]))
        scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        ids = np.concatenate([best_ids, part + start], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return best_scores, np.where(np.isfinite(best_scores), best_ids, -1)


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


def exact_budget_mb(free_bytes: int | None, total_bytes: int | None, cap_mb: float = 0) -> float:
    """GPU memory an exact search may hold: what the device has free once the model is loaded, less
    a reserve for the rest of a batch's work (GPU_RESERVE_FRACTION of the card, at least
    GPU_RESERVE_MIN_MB), and at most `cap_mb` when that is set (> 0). 0 without a device.

    Examples:
        >>> exact_budget_mb(78 * 2**30, 80 * 2**30)  # an 80 GB card: a 12M x 768 fp16 table (18 GB) fits
        63488.0
        >>> exact_budget_mb(20 * 2**30, 24 * 2**30, cap_mb=4096)
        4096
        >>> exact_budget_mb(None, None)
        0
    """
    if free_bytes is None or total_bytes is None:
        return 0
    reserve = max(GPU_RESERVE_MIN_MB * 2**20, GPU_RESERVE_FRACTION * total_bytes)
    budget = max(0.0, (free_bytes - reserve) / 2**20)
    return min(budget, cap_mb) if cap_mb > 0 else budget


def backend_for(kind: str, device_type: str, table_bytes: int, memory_budget_mb: float) -> str:
    """'exact' or 'faiss': what `kind` means on a device of `device_type` for a table of `table_bytes`.

    Raises:
        ValueError: an unknown kind.

    Examples:
        >>> cc12m = 12_000_000 * 768 * 2  # fp16
        >>> backend_for("auto", "cuda", cc12m, exact_budget_mb(78 * 2**30, 80 * 2**30))
        'exact'
        >>> backend_for("auto", "cuda", cc12m, exact_budget_mb(15 * 2**30, 16 * 2**30))
        'faiss'
    """
    if kind not in SEARCHES:
        raise ValueError(f"unknown search {kind!r}: choose one of {', '.join(SEARCHES)}")
    fits = table_bytes <= memory_budget_mb * 2**20
    return "exact" if kind == "exact" or (kind == "auto" and device_type == "cuda" and fits) else "faiss"


def choose_search(kind: str, device: torch.device | str, embeddings: np.ndarray, index: faiss.Index,
                  params: str | None, factory: str, memory_budget_mb: float,
                  refine: int = REFINE) -> FaissSearch | ExactSearch:
    """The backend for `kind` (see `backend_for`): 'exact' (on `device`), 'faiss', or 'auto': exact on
    a GPU when the embeddings fit `memory_budget_mb` (see `exact_budget_mb`), faiss otherwise.

    Raises:
        ValueError: an unknown kind.
    """
    if backend_for(kind, torch.device(device).type, embeddings.nbytes, memory_budget_mb) == "exact":
        return ExactSearch(embeddings, device)
    return FaissSearch(index, embeddings, params, factory, refine)
