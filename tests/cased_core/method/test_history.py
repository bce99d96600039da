import msgpack
import numpy as np
import pytest

from cased_core.method import history
from cased_core.method.history import HistoryPolicy

SYNONYMS = {frozenset({"cassowary", "casuarius"})}
DIM = 64
FAST = HistoryPolicy(mode="fast")


def same(a, b):
    return frozenset({a, b}) in SYNONYMS


def scene(seed: int) -> np.ndarray:
    """A scene's embedding: random unit vectors in 64-d are far apart (cosine near 0)."""
    v = np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


def near(base: np.ndarray, seed: int, noise: float = 0.1) -> np.ndarray:
    """A frame of the scene `base`: cosine above 0.9 to it."""
    v = base + noise * np.random.default_rng(1000 + seed).normal(size=DIM) / np.sqrt(DIM)
    return v / np.linalg.norm(v)


def run(frames, policy, state=None):
    """frames: candidates, or (candidates, embedding) or (candidates, embedding, t)."""
    labels = []
    for frame in frames:
        candidates, *rest = frame if isinstance(frame, tuple) else (frame,)
        outcome = history.apply(state, candidates, policy, same, *rest)
        state = outcome.state
        labels.append(outcome.label)
    return labels, state


def camera(plan, flicker=None):
    """plan: (label, scene seed, frames); flicker: {frame index: raw label} for frames of the same scene
    whose own top name is wrong."""
    frames, i = [], 0
    for label, seed, count in plan:
        for _ in range(count):
            raw = (flicker or {}).get(i, label)
            frames.append(([(raw, 0.9), (label if raw != label else "thing", 0.1)], near(scene(seed), i), 0.5 * i))
            i += 1
    return frames


def test_a_concept_keeps_the_first_name_the_stream_used():
    labels, state = run([[("cassowary", 0.8)], [("casuarius", 0.9), ("bird", 0.1)]], HistoryPolicy(mode="upload"))
    assert labels == ["cassowary", "cassowary"]
    assert state["names"] == ["cassowary"]


def test_upload_streams_follow_every_image():
    labels, _ = run([[("dog", 0.9)], [("cat", 0.9)], [("dog", 0.9)]], HistoryPolicy(mode="upload"))
    assert labels == ["dog", "cat", "dog"]


def test_frames_of_one_scene_outvote_a_wrong_top_name():
    """Near-tie frames of the same scene (close embeddings) whose own top name is wrong do not move the label."""
    frames = camera([("star", 1, 12)], flicker={2: "heart", 5: "heart", 6: "heart", 9: "cross"})
    labels, _ = run(frames, HistoryPolicy())
    assert labels == ["star"] * 12


def test_fast_follows_a_cut_at_once_and_a_synonym_keeps_the_name():
    frames = camera([("cassowary", 1, 5), ("moon", 2, 5), ("casuarius", 3, 5)])
    labels, state = run(frames, FAST)
    assert labels == ["cassowary"] * 5 + ["moon"] * 5 + ["cassowary"] * 5
    assert state["changes"] == 2 and state["excursions"] == 0


def test_fast_undoes_a_one_frame_excursion_and_turns_wary():
    """A clean fast stream trusts a far frame (lag 0 after cuts); once a far frame turned out to be an
    excursion, the next far frame waits for one more frame before the label moves."""
    star, blip, moon = scene(1), scene(7), scene(2)
    frames = [([("star", 1.0)], near(star, i)) for i in range(4)]
    frames += [([("heart", 1.0)], blip)]  # something passes the camera for one frame
    frames += [([("star", 1.0)], near(star, i)) for i in range(5, 8)]
    frames += [([("moon", 1.0)], near(moon, i)) for i in range(8, 11)]  # a real cut
    labels, state = run(frames, FAST)
    assert labels[:4] == ["star"] * 4
    assert labels[4] == "heart"  # trusted at once ...
    assert labels[5:8] == ["star"] * 3  # ... and undone when the scene came back
    assert labels[8:] == ["star", "moon", "moon"]  # wary now: the cut waits one frame
    assert state["excursions"] == 1 and state["changes"] == 1


def test_patience_frames_must_agree_before_a_wary_fast_stream_changes():
    star, moon = scene(1), scene(2)
    state = {**history.new_state(), "excursions": 1}  # a stream that has seen an excursion
    frames = [([("star", 1.0)], near(star, i)) for i in range(3)] + \
             [([("moon", 1.0)], near(moon, i)) for i in range(3, 7)]
    labels, _ = run(frames, HistoryPolicy(mode="fast", patience=2), state)
    assert labels == ["star"] * 3 + ["star", "star", "moon", "moon"]


@pytest.mark.parametrize("mode", ["steady", "fast"])
def test_a_far_frame_after_a_long_gap_changes_at_once_even_in_a_wary_stream(mode):
    star, moon = scene(1), scene(2)
    state = {**history.new_state(), "excursions": 5}
    slow = [([("star", 1.0)], near(star, 0), 0.0), ([("star", 1.0)], near(star, 1), 60.0),
            ([("moon", 1.0)], near(moon, 2), 120.0)]  # one frame a minute
    labels, _ = run(slow, HistoryPolicy(mode=mode, patience_s=10.0), state)
    assert labels == ["star", "star", "moon"]
    fast = [(c, e, t / 120) for c, e, t in slow]  # the same frames a second apart
    labels, _ = run(fast, HistoryPolicy(mode=mode, patience_s=10.0), state)
    assert labels == ["star", "star", "star"]


def test_a_scene_that_returns_gets_its_votes_back():
    """The first scene's votes (star over its near-ties) come back with it, so its first frame back is
    labelled by all of them, not by that frame's own wrong top name."""
    star, moon = scene(1), scene(2)
    frames = [([("star", 0.6), ("heart", 0.4)], near(star, i)) for i in range(6)]
    frames += [([("moon", 1.0)], near(moon, i)) for i in range(6, 10)]
    frames += [([("heart", 0.55), ("star", 0.45)], near(star, 10))]
    labels, state = run(frames, FAST)
    assert labels == ["star"] * 6 + ["moon"] * 4 + ["star"]
    assert state["scene"]["frames"] == 7
    labels, state = run(frames, HistoryPolicy())  # steady: the cut waits a frame, the known scene does not
    assert labels == ["star"] * 7 + ["moon"] * 3 + ["star"] and state["scene"]["frames"] == 7


def test_without_embeddings_every_frame_votes_in_one_scene():
    flicker = [[("star", 0.55), ("heart", 0.45)], [("heart", 0.52), ("star", 0.48)]] * 4
    change = [[("moon", 0.9), ("star", 0.1)]] * 12
    fast, _ = run(flicker + change[:6], FAST)
    assert set(fast[:8]) == {"star"}
    assert fast[-1] == "moon" and fast[8] == "star"  # outvoted first, then followed
    steady, _ = run(flicker + change, HistoryPolicy())  # steady wants a lead no noise over 20 frames makes
    assert set(steady[:14]) == {"star"} and steady[-1] == "moon"


def test_the_margin_keeps_the_label_on_a_close_call():
    frames = [[("star", 0.52), ("heart", 0.48)], [("heart", 0.6), ("star", 0.4)]]
    wide, _ = run(frames, HistoryPolicy(mode="fast", margin=0.3))
    narrow, _ = run(frames, HistoryPolicy(mode="fast", margin=0.0))
    assert wide == ["star", "star"]
    assert narrow == ["star", "heart"]
    steady, _ = run(frames, HistoryPolicy(margin=0.0))  # one frame is no lead beyond noise
    assert steady == ["star", "star"]


def test_history_is_bounded_and_newest_last():
    frames = [[(f"name{i}", 1.0)] for i in range(30)]
    labels, state = run(frames, HistoryPolicy(mode="upload", recent=5, names=4))
    assert state["recent"] == labels[-5:]
    assert state["names"] == [f"name{i}" for i in range(26, 30)]


def test_the_state_is_small_plain_data_and_never_mutated():
    frames = camera([("star", 1, 5), ("moon", 2, 5), ("star", 1, 2), ("ring", 3, 5), ("arrow", 4, 5)])
    _, state = run(frames, HistoryPolicy())
    packed = msgpack.packb(state, use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False) == state
    assert len(state["past"]) <= history.MEMORY
    assert len(state["scene"]["anchor"]) == DIM  # int8: one byte per dimension
    before = msgpack.packb(state, use_bin_type=True)
    history.apply(state, [("cat", 1.0)], HistoryPolicy(), same, scene(9), 100.0)
    assert msgpack.packb(state, use_bin_type=True) == before


def test_a_state_from_the_previous_policy_continues():
    old = {"names": ["dog"], "recent": ["dog"], "average": {"dog": 1.0}, "current": "dog", "challenger": None,
           "streak": 0}
    outcome = history.apply(old, [("dog", 0.9), ("cat", 0.1)], HistoryPolicy(), same, scene(1), 1.0)
    assert outcome.label == "dog" and outcome.history == ["dog", "dog"]
    assert "average" not in outcome.state and outcome.state["scene"]["frames"] == 1


def test_a_bad_policy_setting_is_named():
    for bad, message in [({"patience": 0}, "patience 0"), ({"similarity": 2.0}, "similarity 2.0"),
                         ({"margin": -0.1}, "margin -0.1"), ({"mode": "sometimes"}, "'sometimes'"),
                         ({"mode": "live"}, "choose steady or fast or upload"), ({"stillness": -2}, "stillness -2")]:
        with pytest.raises(ValueError, match=message):
            HistoryPolicy(**bad)


# -- steady: a change must be confirmed ----------------------------------------------------------------


def test_steady_follows_a_cut_once_a_frame_confirms_it():
    """Lag 1 after a cut: the first far frame keeps the label, the next one, still and naming the same,
    confirms the new scene."""
    frames = camera([("cassowary", 1, 5), ("moon", 2, 5), ("casuarius", 3, 5)])
    labels, state = run(frames, HistoryPolicy())
    assert labels == ["cassowary"] * 6 + ["moon"] * 5 + ["cassowary"] * 4
    assert state["changes"] == 2


def test_steady_a_new_stream_never_switches_on_a_lone_far_frame():
    """Where fast trusts a far frame at once (a new stream has seen no excursion), steady holds it."""
    star, blip = scene(1), scene(7)
    frames = [([("star", 1.0)], near(star, i)) for i in range(2)] + [([("heart", 1.0)], blip)]
    frames += [([("star", 1.0)], near(star, i)) for i in range(3, 6)]
    steady, state = run(frames, HistoryPolicy())
    fast, _ = run(frames, FAST)
    assert steady == ["star"] * 6 and state["excursions"] == 1
    assert fast == ["star", "star", "heart", "star", "star", "star"]


def test_steady_frames_that_move_do_not_confirm_a_change():
    """Something crossing the view: far frames naming one thing, but each far from the one before (it
    moves), so they never confirm a scene; a still new scene does."""
    star = scene(1)
    frames = [([("star", 1.0)], near(star, i)) for i in range(3)]
    frames += [([("bird", 1.0)], scene(20 + i)) for i in range(3)]  # a bird flying through
    frames += [([("star", 1.0)], near(star, i)) for i in range(6, 8)]
    labels, _ = run(frames, HistoryPolicy())
    assert labels == ["star"] * 8
    tree = scene(30)
    frames += [([("tree", 1.0)], near(tree, i)) for i in range(8, 11)]
    labels, _ = run(frames, HistoryPolicy())
    assert labels[8:] == ["star", "tree", "tree"]
    looser, _ = run(frames[:8], HistoryPolicy(stillness=-1.0))  # any far frame confirms: the bird wins
    assert "bird" in looser


def test_steady_far_frames_that_disagree_on_the_name_wait_twice_as_long():
    star, new = scene(1), scene(2)
    frames = [([("star", 1.0)], near(star, i)) for i in range(3)]
    frames += [([(name, 0.6), ("thing", 0.4)], near(new, i)) for i, name in
               zip(range(3, 8), ["moon", "sun", "moon", "sun", "moon"])]
    labels, _ = run(frames, HistoryPolicy())
    assert labels[:6] == ["star"] * 6 and labels[6] in ("moon", "sun") and labels[7] == labels[6]


def test_steady_a_near_tie_scene_keeps_one_name():
    """A scene between two names (its frames' top names alternate in runs): fast's short memory lets the
    label follow the runs, steady's long one keeps the first name."""
    star = scene(1)
    pattern = ["star"] * 4 + ["heart"] * 3 + ["star"] * 2 + ["heart"] * 4 + ["star"] * 3 + ["heart"] * 4
    frames = [([(name, 0.55), ("star" if name == "heart" else "heart", 0.45)], near(star, i))
              for i, name in enumerate(pattern)]
    steady, _ = run(frames, HistoryPolicy())
    fast, _ = run(frames, FAST)
    assert set(steady) == {"star"}
    assert "heart" in fast


def at_cosine(base: np.ndarray, other: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at `cosine` to `base`, towards `other`."""
    orth = other - (other @ base) * base
    return cosine * base + np.sqrt(1 - cosine ** 2) * orth / np.linalg.norm(orth)


def test_steady_far_frames_that_still_show_part_of_the_scene_need_twice_the_confirmation():
    """Far frames at cosine 0.55 to the scene (below the similarity, but partly the scene: something in
    front of part of it) change the label after two confirming frames; frames at cosine 0 after one."""
    star, other = scene(1), scene(2)
    frames = [([("star", 1.0)], near(star, i)) for i in range(4)]
    partly = frames + [([("moon", 1.0)], near(at_cosine(star, other, 0.55), i, 0.02)) for i in range(4, 8)]
    labels, _ = run(partly, HistoryPolicy())
    assert labels == ["star"] * 6 + ["moon"] * 2
    cut = frames + [([("moon", 1.0)], near(other, i, 0.02)) for i in range(4, 8)]
    labels, _ = run(cut, HistoryPolicy())
    assert labels == ["star"] * 5 + ["moon"] * 3


def test_a_repeated_frame_keeps_the_label_and_confirms_nothing():
    """The change gate's copies of an earlier frame's result are no new evidence: a far frame waiting
    for confirmation stays unconfirmed through them, and the label stays."""
    same = lambda a, b: False  # noqa: E731
    star, moon = np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1]
    policy = HistoryPolicy(mode="steady")
    state = None
    for _ in range(4):
        state = history.apply(state, [("star", 0.9), ("moon", 0.1)], policy, same, star).state
    passing = history.apply(state, [("moon", 0.9), ("star", 0.1)], policy, same, moon)
    copies = passing
    for _ in range(5):
        copies = history.apply(copies.state, [("moon", 0.9), ("star", 0.1)], policy, same, moon, repeated=True)
        assert copies.label == "star"
    assert copies.history[-6:] == ["star"] * 6
    confirmed = history.apply(passing.state, [("moon", 0.9), ("star", 0.1)], policy, same, moon)  # a second real look
    assert confirmed.label == "moon"
