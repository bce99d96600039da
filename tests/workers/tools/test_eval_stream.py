from cased_core.stream_metrics import Frame
from workers.tools.eval_stream import hindsight

SYNONYMS = {frozenset({"moon", "crescent"})}


def same(a, b):
    return frozenset({a, b}) in SYNONYMS


def test_hindsight_gives_each_true_segment_its_most_common_raw_label():
    truth = ["star"] * 4 + [None] + ["moon"] * 5 + ["star"] * 2
    raw = ["star", "heart", "star", "heart", None, "crescent", "orange", "moon", "orange", "orange", "heart", "star"]
    frames = [Frame(float(i), c, r) for i, (c, r) in enumerate(zip(truth, raw))]
    labels = [f.label for f in hindsight(frames, same)]
    # star 2 : heart 2 -> the first counted; moon + crescent 2 : orange 3; the gap keeps no label;
    # the star after the moon is its own segment (1 : 1 -> the first)
    assert labels == ["star"] * 4 + [None] + ["orange"] * 5 + ["heart"] * 2
    assert [f.concept for f in hindsight(frames, same)] == truth


def test_synonyms_vote_together_and_the_first_name_counts():
    frames = [Frame(0, "moon", "crescent"), Frame(1, "moon", "orange"), Frame(2, "moon", "moon")]
    assert [f.label for f in hindsight(frames, same)] == ["crescent"] * 3


def test_a_segment_split_by_a_gap_is_one_segment():
    frames = [Frame(0, "star", "star"), Frame(1, None, None), Frame(2, "star", "heart"), Frame(3, "star", "star")]
    assert [f.label for f in hindsight(frames, same)] == ["star", None, "star", "star"]
