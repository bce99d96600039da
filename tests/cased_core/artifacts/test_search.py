"""cased_core.artifacts.search: the exact torch backend finds what faiss's exact index finds; the choice of backend."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cased_core.artifacts.search import ExactSearch, FaissSearch, choose_search


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
