"""cased_core.streams: seeded simulated streams with the truth laid out as each scenario says."""
from __future__ import annotations

import numpy as np
import pytest

from cased_core.streams import SCENARIOS, generate, names_of


def concepts(stream) -> list:
    return [f.concept for f in stream.frames]


def test_seeded_and_held_apart():
    a, b = generate("cut", 2, seed=7), generate("cut", 2, seed=7)
    assert [concepts(s) for s in a] == [concepts(s) for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a[0].frames, b[0].frames))
    assert concepts(generate("cut", 1, seed=8)[0]) != concepts(a[0])


def test_each_scenario_lays_out_its_truth():
    [cut] = generate("cut", 1, seed=1, scenes=3, length=5)
    assert len(cut.frames) == 15 and len(set(concepts(cut))) == 3 and cut.policy == "live"
    assert [t for t in (f.t for f in cut.frames)] == [i * 0.5 for i in range(15)]  # 2 frames a second
    [gaps] = generate("gaps", 1, seed=1, scenes=2, length=10)
    dead = [f for f in gaps.frames if f.concept is None]
    assert len(dead) == 6 and all(f.image is None for f in dead)
    [back] = generate("return", 1, seed=1, length=4)
    assert concepts(back)[:4] == concepts(back)[-4:] != concepts(back)[4:8]
    [ramp] = generate("gradual", 1, seed=1, scenes=2, length=10)
    first, second = concepts(ramp)[0], concepts(ramp)[-1]
    assert concepts(ramp) == [first] * 13 + [second] * 7  # 10 held, then a 6-frame ramp turning halfway
    rates = generate("frame_rates", 3, seed=1, scenes=2, length=4)
    assert [s.frames[1].t for s in rates] == [round(1 / 30, 3), 0.5, 60.0]
    [upload] = generate("upload", 1, seed=1, scenes=2, length=10)
    assert upload.policy == "upload" and len(set(concepts(upload))) <= 3 < len(upload.frames)
    assert all(b.t > a.t for a, b in zip(upload.frames, upload.frames[1:]))


def test_consecutive_frames_of_a_scene_are_close_and_a_cut_is_not():
    [cut] = generate("cut", 1, seed=3, scenes=2, length=6)
    pixels = [np.asarray(f.image, np.float32) for f in cut.frames]
    within = [np.abs(a - b).mean() for a, b in zip(pixels[:5], pixels[1:6])]
    assert max(within) < np.abs(pixels[5] - pixels[6]).mean()


def test_names_and_errors():
    assert names_of("moon") == {"moon", "crescent", "crescent moon"}
    with pytest.raises(ValueError, match="choose from"):
        generate("fog", 1, seed=1)
    assert set(SCENARIOS) >= {"cut", "gradual", "near_tie", "degraded", "return", "gaps", "frame_rates", "upload"}
