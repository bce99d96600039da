"""cased_core.artifacts.search: the exact torch backend finds what faiss's exact index finds; the choice of backend."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cased_core.artifacts.search import (GPU_RESERVE_MIN_MB, ExactSearch, FaissSearch, backend_for, choose_search,
                               exact_budget_mb, exact_search_blocks)

GIB = 2**30
CC12M_TABLE = 12_000_000 * 768 * 2  # CC12M's caption embeddings at ViT-L-14's width, fp16: 18 GB


def queries_near(database, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = database.caption_embeddings(rng.choice(database.count, count))
    noisy = picked + 0.1 * rng.standard_normal(picked.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def test_exact_search_matches_faiss_exact_index(small_database):
    assert small_database.manifest["index"]["factory"] == "Flat"
    queries = queries_near(small_database, 32)
    faiss_hits = small_database.search(queries, 10)
    exact = ExactSearch(small_database.embeddings, "cpu", chunk=7)  # many chunks: the merge is exercised
    hits = exact.search(queries, 10)
    assert hits.ids.shape == hits.scores.shape == (32, 10)
    np.testing.assert_allclose(hits.scores, faiss_hits.scores, atol=1e-5)
    same = (hits.ids == faiss_hits.ids).mean()
    assert same >= 0.99, same  # only exact ties may come in another order
    assert (np.diff(hits.scores, axis=1) <= 0).all()


def test_fewer_captions_than_k_are_padded(small_database):
    exact = ExactSearch(small_database.embeddings[:3], "cpu")
    hits = exact.search(queries_near(small_database, 2), 5)
    assert (hits.ids[:, 3:] == -1).all() and np.isinf(hits.scores[:, 3:]).all() and (hits.ids[:, :3] >= 0).all()


def test_exact_search_over_blocks_matches_faiss_exact_index(small_database):
    queries = queries_near(small_database, 16)
    rows = small_database.caption_embeddings(np.arange(small_database.count))
    blocks = ((start, rows[start:start + 7]) for start in range(0, len(rows), 7))
    scores, ids = exact_search_blocks(blocks, queries, 10)
    faiss_hits = small_database.search(queries, 10)
    np.testing.assert_allclose(scores, faiss_hits.scores, atol=1e-5)
    assert (ids == faiss_hits.ids).mean() >= 0.99
    scores, ids = exact_search_blocks([(0, rows[:3])], queries, 5)  # fewer rows than k: padded
    assert (ids[:, 3:] == -1).all() and (ids[:, :3] >= 0).all()


def test_the_exact_budget_follows_the_devices_free_memory():
    # An 80 GB card with the model loaded: 78 GiB free, a 16 GiB reserve (a fifth of the card).
    assert exact_budget_mb(78 * GIB, 80 * GIB) == (78 - 16) * 1024
    # A small card: the reserve is at least GPU_RESERVE_MIN_MB.
    assert exact_budget_mb(6 * GIB, 8 * GIB) == 6 * 1024 - GPU_RESERVE_MIN_MB
    assert exact_budget_mb(1 * GIB, 8 * GIB) == 0  # less free than the reserve: nothing
    assert exact_budget_mb(78 * GIB, 80 * GIB, cap_mb=4096) == 4096  # CASED_SEARCH_MEMORY_MB caps it
    assert exact_budget_mb(None, None) == exact_budget_mb(None, None, cap_mb=4096) == 0  # no GPU


def test_auto_searches_exactly_on_a_gpu_whose_free_memory_holds_the_table():
    # CC12M (18 GB fp16) on an 80 GB card: exact; on a 16 GB card, or with 50 GB already taken: faiss.
    assert backend_for("auto", "cuda", CC12M_TABLE, exact_budget_mb(78 * GIB, 80 * GIB)) == "exact"
    assert backend_for("auto", "cuda", CC12M_TABLE, exact_budget_mb(15 * GIB, 16 * GIB)) == "faiss"
    assert backend_for("auto", "cuda", CC12M_TABLE, exact_budget_mb(30 * GIB, 80 * GIB)) == "faiss"
    # the former fixed 4 GB budget sent a 2M-caption table to faiss even on an idle 80 GB card
    assert backend_for("auto", "cuda", 2_000_000 * 768 * 2, exact_budget_mb(78 * GIB, 80 * GIB)) == "exact"
    assert backend_for("auto", "cpu", 1, 1e9) == "faiss"  # never exact on the CPU unless asked
    assert backend_for("exact", "cpu", CC12M_TABLE, 0) == "exact"
    assert backend_for("faiss", "cuda", 1, 1e9) == "faiss"


def test_choice_of_backend(small_database):
    args = (small_database.embeddings, small_database.index, None, "Flat")
    assert isinstance(choose_search("auto", "cpu", *args, memory_budget_mb=1e6), FaissSearch)
    assert isinstance(choose_search("exact", "cpu", *args, memory_budget_mb=0), ExactSearch)
    assert isinstance(choose_search("faiss", "cpu", *args, memory_budget_mb=1e6), FaissSearch)
    with pytest.raises(ValueError, match="choose one of"):
        choose_search("gpu", "cpu", *args, memory_budget_mb=1)
    small_database.use_search("exact", "cpu")
    try:
        assert small_database.searcher.name.startswith("exact on cpu")
        assert small_database.search(queries_near(small_database, 4), 3).ids.shape == (4, 3)
    finally:
        small_database.use_search("faiss")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the exact search on a device")
def test_auto_picks_exact_on_a_gpu_within_the_budget(small_database):
    args = (small_database.embeddings, small_database.index, None, "Flat")
    assert isinstance(choose_search("auto", "cuda", *args, memory_budget_mb=1e6), ExactSearch)
    assert isinstance(choose_search("auto", "cuda", *args, memory_budget_mb=0), FaissSearch)
    queries = queries_near(small_database, 16)
    hits = ExactSearch(small_database.embeddings, "cuda").search(queries, 10)
    np.testing.assert_allclose(hits.scores, small_database.search(queries, 10).scores, atol=2e-3)  # fp16 products
