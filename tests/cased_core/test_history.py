from cased_core import history
from cased_core.history import HistoryPolicy

SYNONYMS = {frozenset({"cassowary", "casuarius"})}


def same(a, b):
    return frozenset({a, b}) in SYNONYMS


def run(frames, policy, state=None):
    labels = []
    for frame in frames:
        outcome = history.apply(state, frame, policy, same)
        state = outcome.state
        labels.append(outcome.label)
    return labels, state


def test_a_concept_keeps_the_first_name_the_stream_used():
    labels, state = run([[("cassowary", 0.8)], [("casuarius", 0.9), ("bird", 0.1)]], HistoryPolicy(mode="upload"))
    assert labels == ["cassowary", "cassowary"]
    assert state["names"] == ["cassowary"]


def test_upload_streams_follow_every_image():
    labels, _ = run([[("dog", 0.9)], [("cat", 0.9)], [("dog", 0.9)]], HistoryPolicy(mode="upload"))
    assert labels == ["dog", "cat", "dog"]


def test_live_stream_ignores_flicker_and_follows_a_real_change():
    flicker = [[("star", 0.55), ("heart", 0.45)], [("heart", 0.52), ("star", 0.48)]] * 4
    change = [[("moon", 0.9), ("star", 0.1)]] * 5
    labels, state = run(flicker + change, HistoryPolicy(mode="live", smoothing=0.5, margin=0.1, patience=3))
    assert set(labels[:8]) == {"star"}  # raw alternates, consistent label stays put
    assert labels[-1] == "moon"
    first_moon = labels.index("moon")
    assert 8 + 2 <= first_moon <= 8 + 4  # changes only after the challenger led long enough
    assert state["recent"][-1] == "moon" and len(state["recent"]) <= 10


def test_history_is_bounded_and_newest_last():
    frames = [[(f"name{i}", 1.0)] for i in range(30)]
    labels, state = run(frames, HistoryPolicy(mode="upload", recent=5, names=4))
    assert state["recent"] == labels[-5:]
    assert state["names"] == [f"name{i}" for i in range(26, 30)]


def test_apply_does_not_mutate_the_given_state():
    _, state = run([[("dog", 1.0)]], HistoryPolicy(mode="upload"))
    snapshot = {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
    history.apply(state, [("cat", 1.0)], HistoryPolicy(mode="upload"), same)
    assert state["names"] == snapshot["names"] and state["recent"] == snapshot["recent"]
