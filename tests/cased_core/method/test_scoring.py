import numpy as np

from cased_core.method import scoring


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_cased_scores_match_a_direct_computation():
    rng = np.random.default_rng(0)
    image, centre = unit(rng.standard_normal(16)), unit(rng.standard_normal(16))
    candidates = unit(rng.standard_normal((7, 16)))
    scale, alpha = 42.0, 0.7
    visual = np.exp(scale * candidates @ image) / np.exp(scale * candidates @ image).sum()
    textual = np.exp(scale * candidates @ centre) / np.exp(scale * candidates @ centre).sum()
    expected = alpha * visual + (1 - alpha) * textual
    got = scoring.cased_scores(image, centre, candidates, scale, alpha)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert abs(got.sum() - 1.0) < 1e-6


def test_alpha_one_is_the_visual_softmax_only():
    candidates = np.eye(3)
    image = unit(np.array([1.0, 0.2, 0.0]))
    centre = np.array([0.0, 0.0, 1.0])
    only_visual = scoring.cased_scores(image, centre, candidates, 10.0, alpha=1.0)
    assert np.argmax(only_visual) == 0
    only_textual = scoring.cased_scores(image, centre, candidates, 10.0, alpha=0.0)
    assert np.argmax(only_textual) == 2


def test_drop_near_duplicates_keeps_the_first_of_each_near_copy():
    a = unit(np.array([1.0, 0.0, 0.0]))
    near_a = unit(np.array([1.0, 0.3, 0.0]))  # cos 0.958 >= 0.94
    far = unit(np.array([1.0, 0.4, 0.0]))  # cos 0.928 < 0.94
    kept = scoring.drop_near_duplicates(np.stack([a, near_a, far, a]))
    assert kept.tolist() == [0, 2]


def test_centroid_normalises_each_then_the_mean():
    rows = np.array([[2.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(scoring.centroid(rows), [np.sqrt(0.5), np.sqrt(0.5)])


def test_top_n_orders_by_probability():
    assert scoring.top_n(["a", "b", "c"], np.array([0.2, 0.5, 0.3]), 2) == (("b", 0.5), ("c", 0.3))
