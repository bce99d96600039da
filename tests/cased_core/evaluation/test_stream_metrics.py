"""cased_core.evaluation.stream_metrics on hand-computed streams."""
from __future__ import annotations

from cased_core.evaluation.stream_metrics import Frame, changes, pooled, stream_figures, switches

SYNONYMS = {"moon": {"moon", "crescent"}, "star": {"star"}, "heart": {"heart"}}


def is_right(label: str, concept: str) -> bool:
    return label in SYNONYMS[concept]


def frames(concepts: str, labels: str, step: float = 0.5) -> list[Frame]:
    """One letter a frame: m(oon), c(rescent), s(tar), h(eart); '-' none (a gap or a dead letter)."""
    names = {"m": "moon", "c": "crescent", "s": "star", "h": "heart", "-": None}
    return [Frame(i * step, names[c] if c != "c" else "moon", names[lab]) for i, (c, lab) in
            enumerate(zip(concepts, labels))]


def test_switches_skip_frames_without_a_label():
    assert switches(["a", "a", None, "a", "b", None, None, "b", "a"]) == 2
    assert switches([None, None]) == 0 and switches([]) == 0


def test_a_cut_followed_after_two_frames():
    stream = frames("mmmmssss", "mmmmmmss")
    [change] = changes(stream, is_right)
    assert (change.index, change.concept, change.lag_frames, change.lag_s, change.followed) == (4, "star", 2, 1.0, True)
    figures = stream_figures(stream, is_right)
    assert figures["switches"] == 1 and figures["true_changes"] == 1
    assert figures["right"] == 6 and figures["scored"] == 8  # two moon labels on star frames


def test_synonyms_are_right_and_count_as_names():
    # the concept moon named moon, then crescent: right every time, but two names for one concept
    figures = stream_figures(frames("mmmm", "mmcc"), is_right)
    assert figures["right"] == 4 and figures["names_per_concept"] == [2] and figures["switches"] == 1


def test_a_segment_never_followed_is_censored_at_its_length():
    [change] = changes(frames("mmsss", "mmmmm"), is_right)
    assert (change.lag_frames, change.lag_s, change.followed) == (3, 1.0, False)


def test_gaps_are_neither_changes_nor_switches_and_a_return_is_a_change():
    stream = frames("mm--mmsm", "mm--mmsm")
    assert [c.index for c in changes(stream, is_right)] == [6, 7]
    figures = stream_figures(stream, is_right)
    assert figures["switches"] == 2 and figures["true_changes"] == 2 and figures["scored"] == 6


def test_pooled_over_streams():
    one = stream_figures(frames("mmmmssss", "mmmmmmss"), is_right)  # 1 switch, 1 change, lag 2, 6/8
    two = stream_figures(frames("hhhh", "hshh"), is_right)  # 2 switches, no change, 3/4
    result = pooled([one, two])
    assert result["streams"] == 2 and result["frames"] == 12
    assert result["switches_per_100"] == 25.0  # 3 of 12 labelled frames
    assert result["excess_switches"] == 2.0  # (3 - 1) / 1
    assert result["accuracy"] == 0.75  # 9 of 12
    assert result["lag_frames"] == {"median": 2.0, "p90": 2.0} and result["lag_s"]["median"] == 1.0
    assert result["changes_followed"] == "1/1" and result["names_per_concept"] == 1.0


def test_lags_count_after_the_changes_the_raw_labels_recognise():
    """With the raw labels as a reference, a change into a scene the image alone mostly names wrong has
    no lag (no history can name it) and is counted apart; the others keep theirs."""
    stream = frames("mmmmsssshhhh", "mmmmmsssmmmm")  # consistent labels: star one frame late, heart never
    raw = [f.label for f in frames("mmmmsssshhhh", "mmmmssssmhmm")]  # the image alone: star, but not heart
    figures = stream_figures(stream, is_right, raw)
    assert figures["lags_frames"] == [1] and figures["unrecognised"] == 1 and figures["followed"] == 1
    plain = stream_figures(stream, is_right)
    assert plain["lags_frames"] == [1, 4] and plain["unrecognised"] == 0
    assert pooled([figures])["changes_unrecognised"] == 1 and pooled([figures])["changes_followed"] == "1/1"
