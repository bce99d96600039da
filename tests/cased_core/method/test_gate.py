"""The change gate's decisions over thumbnails, with figures set by hand."""
from __future__ import annotations

import numpy as np
import pytest

from cased_core.method import gate
from cased_core.method.gate import GatePolicy, classified, decide, difference, thumbnail


def scene(seed: int, shape=(240, 320)) -> np.ndarray:
    """A textured grayscale frame (smooth blobs: what a camera's thumbnail looks like)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8)).astype(np.float32)
    return np.kron(coarse, np.ones((shape[0] // 6, shape[1] // 8), np.float32)).astype(np.uint8)


def noisy(frame: np.ndarray, rng, sigma: float = 6.0, gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return np.clip(frame * gain + offset + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)


RESULT = {"label": "street", "score": 0.8, "candidates": [["street", 0.8]], "embedding": None}


def stepped(frames, policy=GatePolicy(), times=None) -> list[str | None]:
    """Each frame's decision, every classified frame given RESULT."""
    state, out = None, []
    for n, frame in enumerate(frames):
        why, state = decide(state, thumbnail(frame), None if times is None else times[n], policy)
        if why is not None:
            state = classified(state, f"e{n}", RESULT, why, None)
        out.append(why)
    return out


def test_a_thumbnail_is_block_means_and_small_images_are_enlarged():
    frame = np.zeros((48, 64), np.uint8)
    frame[:24] = 200
    cells = np.frombuffer(thumbnail(frame), np.uint8).reshape(gate.THUMB)
    assert cells.shape == (24, 32) and (cells[:12] == 200).all() and (cells[12:] == 0).all()
    assert len(thumbnail(np.full((5, 7), 9, np.uint8))) == 24 * 32


def test_lighting_is_not_a_change_and_a_cut_is():
    rng = np.random.default_rng(0)
    base = scene(1)
    same = difference(thumbnail(noisy(base, rng)), thumbnail(noisy(base, rng)))
    darker = difference(thumbnail(base), thumbnail(noisy(base, rng, gain=0.6, offset=-10)))
    cut = difference(thumbnail(base), thumbnail(scene(2)))
    assert same < 0.05 and darker < 0.05 and cut > 0.5, (same, darker, cut)


def test_a_still_camera_is_gated_a_cut_classified_at_once_and_a_refresh_comes_round():
    rng = np.random.default_rng(3)
    frames = [noisy(scene(1), rng) for _ in range(40)] + [noisy(scene(2), rng) for _ in range(5)]
    decisions = stepped(frames, GatePolicy(max_frames=30))
    assert decisions[:5] == ["first", "confirm", "cold", "cold", "cold"]  # a new stream's first frames
    assert decisions[40:42] == ["changed", "confirm"]  # a cut, and a second look at it
    assert decisions[34] == "due" and set(decisions[5:34]) == {None}  # 29 gated, then the refresh
    assert set(decisions[42:]) == {None}


def test_while_the_looks_after_a_cut_disagree_the_gate_looks_again():
    """A cut's first frame often blends both scenes and names something else: the second look names
    the new scene, and a third must come before the gate answers again (a steady history needs two
    frames naming the same thing). At most MORE_LOOKS more looks when the labels never settle."""
    rng = np.random.default_rng(5)
    frames = [noisy(scene(1), rng) for _ in range(10)] + [noisy(scene(2), rng) for _ in range(12)]
    for labels, looks in (({10: "blend", 11: "moon"}, 1), ({n: f"label {n}" for n in range(10, 22)}, gate.MORE_LOOKS),
                          ({10: "moon", 11: "moon"}, 0)):
        state, decisions, before = None, [], None
        for n, frame in enumerate(frames):
            why, state = decide(state, thumbnail(frame), None, GatePolicy())
            if why is not None:
                result = {**RESULT, "label": labels.get(n, "street" if n < 10 else "moon")}
                state, before = classified(state, f"e{n}", result, why, before), result
            decisions.append(why)
        assert decisions[10:12 + looks] == ["changed"] + ["confirm"] * (1 + looks), labels
        assert set(decisions[12 + looks:]) == {None}, labels


def test_event_time_forces_a_classification():
    rng = np.random.default_rng(4)
    frames = [noisy(scene(1), rng) for _ in range(8)]
    decisions = stepped(frames, GatePolicy(max_frames=100, max_s=10), times=[0, 1, 2, 3, 4, 5, 9, 15])
    assert decisions == ["first", "confirm", "cold", "cold", "cold", None, None, "due"]


def test_slow_drift_cannot_add_up_unseen():
    """A pan one pixel column a frame: each step is small, the distance to the reference grows."""
    rng = np.random.default_rng(5)
    wide = scene(7, (240, 640))
    frames = [noisy(wide[:, k * 4:k * 4 + 320], rng, sigma=2) for k in range(60)]
    decisions = stepped(frames, GatePolicy(max_frames=1000, max_s=1e9))
    changed = [n for n, why in enumerate(decisions) if why == "changed"]
    assert changed and all(b - a < 30 for a, b in zip([0] + changed, changed + [59]))


def test_the_threshold_follows_the_stream_s_own_noise():
    rng = np.random.default_rng(6)
    quiet, grainy = None, None
    for _ in range(30):
        _, quiet = decide(quiet, thumbnail(noisy(scene(1), rng, sigma=1)), None, GatePolicy(max_frames=1000))
        _, grainy = decide(grainy, thumbnail(noisy(scene(1), rng, sigma=40)), None, GatePolicy(max_frames=1000))
    assert gate.threshold(grainy) > 2 * gate.threshold(quiet)


@pytest.mark.parametrize("why, cosine, direction", [("changed", 0.99, 1), ("due", 0.5, -1), ("changed", 0.5, 0),
                                                    ("due", 0.99, 0)])
def test_what_the_model_saw_tunes_the_scale(why, cosine, direction):
    a = np.zeros(8, np.float32)
    a[0] = 1
    b = np.array([cosine, np.sqrt(1 - cosine ** 2), 0, 0, 0, 0, 0, 0], np.float32)
    before = {**RESULT, "embedding": gate.pack_embedding(a)}
    state = {"noise": 0.02, "scale": 1.0}
    after = classified(state, "e1", {**RESULT, "embedding": gate.pack_embedding(b)}, why, before)
    assert np.sign(round(after["scale"] - 1.0, 6)) == direction and after["event"] == "e1"
