"""cased_core.tinyworld.cameras: seeded simulated streams with the truth laid out as each scenario says."""
from __future__ import annotations

import numpy as np
import pytest

from cased_core.tinyworld.cameras import RATES, REALISTIC, SCENARIOS, SETS, STRESS, CameraFrames, generate, names_of


def concepts(stream) -> list:
    return [f.concept for f in stream.frames]


def test_seeded_and_held_apart():
    a, b = generate("cut", 2, seed=7), generate("cut", 2, seed=7)
    assert [concepts(s) for s in a] == [concepts(s) for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a[0].frames, b[0].frames))
    assert concepts(generate("cut", 1, seed=8)[0]) != concepts(a[0])


def test_each_scenario_lays_out_its_truth():
    [cut] = generate("cut", 1, seed=1, scenes=3, length=5)
    assert len(cut.frames) == 15 and len(set(concepts(cut))) == 3 and cut.policy is None  # a camera: any live policy
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
    assert set(STRESS) == {"cut", "gradual", "near_tie", "degraded", "return", "gaps", "frame_rates", "upload"}
    assert SCENARIOS == REALISTIC + STRESS and SETS == {"realistic": REALISTIC, "stress": STRESS}


# -- realistic fixed cameras ----------------------------------------------------------------------------


def shots_of(stream) -> list:
    return list(stream.frames.plan.shots)


def test_a_realistic_camera_is_seeded_and_renders_any_frame_alone():
    [a], [b] = generate("busy", 1, seed=5, scale=0.1), generate("busy", 1, seed=5, scale=0.1)
    assert isinstance(a.frames, CameraFrames) and a.frames.plan == b.frames.plan
    late = len(a.frames) - 1
    alone = np.asarray(b.frames[late].image)  # read first, before any other frame of b
    in_order = [np.asarray(f.image) for f in a.frames]
    assert np.array_equal(alone, in_order[late]) and np.array_equal(in_order[0], np.asarray(b.frames[0].image))
    assert [(f.t, f.concept) for f in a.frames] == b.truth()
    assert generate("busy", 1, seed=6, scale=0.1)[0].frames.plan != a.frames.plan


def test_realistic_scenes_last_tens_to_thousands_of_frames_at_1_to_30_frames_a_second():
    streams = [s for scenario in ("quiet", "busy", "ambiguous") for s in generate(scenario, 6, seed=3)]
    lengths = [shot.frames for s in streams for shot in shots_of(s)]
    assert min(lengths) >= 20 and max(lengths) > 500 and len(streams) == 18
    rates = [1 / np.median(np.diff(s.frames.plan.times)) for s in streams]
    assert all(min(abs(rate / r - 1) for r in RATES) < 0.05 for rate in rates)  # one of RATES, a little jitter
    assert max(rates) >= 25 and min(rates) <= 2
    for s in streams:  # cuts are rare, each scene's truth is its shot's
        assert [c for _, c in s.truth()] == [shot.category for shot in shots_of(s) for _ in range(shot.frames)]
        shots = shots_of(s)
        assert 2 <= len(shots) <= 4 and all(a.category != b.category for a, b in zip(shots, shots[1:]))
        times = s.frames.plan.times
        assert all(b > a for a, b in zip(times, times[1:]))


def test_each_realistic_scenario_brings_its_disturbances():
    kinds = {scenario: {d.kind for s in generate(scenario, 6, seed=2) for d in s.frames.plan.disturbances}
             for scenario in REALISTIC}
    assert kinds["quiet"] == {"reflection"}
    assert kinds["busy"] == {"reflection", "passer", "walker", "occlusion"}
    assert any(shot.tie for s in generate("ambiguous", 6, seed=2) for shot in shots_of(s))
    colds = generate("cold_start", 10, seed=2)
    assert all(10 <= len(s.frames) <= 150 for s in colds) and kinds["cold_start"] <= {"reflection", "passer"}
    assert all(d.start >= 1 for s in colds for d in s.frames.plan.disturbances)  # the first frame is clean
    for s in generate("outages", 4, seed=2):  # minutes offline, at 1 to 5 frames a second
        steps = np.diff(s.frames.plan.times)
        assert steps.max() >= 30 and np.median(steps) >= 0.19


def test_a_disturbed_frame_keeps_its_scene_and_a_still_scene_changes_little():
    [s] = generate("busy", 1, seed=4, scale=0.3)
    plan = s.frames.plan
    d = next(d for d in plan.disturbances if d.kind == "passer")
    assert s.frames[d.start].concept == s.frames[d.start - 1].concept
    before, during = (np.asarray(s.frames[i].image, np.float32) for i in (d.start - 1, d.start))
    still = [np.abs(np.asarray(s.frames[i].image, np.float32) - np.asarray(s.frames[i + 1].image, np.float32)).mean()
             for i in range(3)]
    assert max(still) < np.abs(during - before).mean()
