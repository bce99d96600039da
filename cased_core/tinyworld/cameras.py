"""Simulated streams from the tiny world, with the truth for every frame: what `cased eval stream` runs.

Two sets of scenarios, each a list of seeded streams.

**Realistic** (`REALISTIC`): fixed cameras as they are deployed. A camera holds each scene for tens to
thousands of frames at 1 to 30 frames a second (timestamps included), and what makes a per-image label
flicker happens on top of it: sensor noise (stronger in the dark), lighting that drifts over minutes and
sometimes steps (lights switched), a frame of vibration, reflections that blend another shape into a
frame (near-ties), brief passers-by and occlusions covering part of the view, and rarely a cut (the
camera turned, the object replaced; sometimes back to a scene seen before). Every stream starts cold.

- quiet: noise, drift and the odd reflection; long scenes, rare cuts;
- busy: passers-by and occlusions as well;
- ambiguous: scenes that sit near a tie (the object seen through a fainter second shape), and more
  reflections;
- cold_start: many new streams of a few dozen frames, some starting on a disturbed frame;
- outages: low frame rates with irregular intervals, dropped frames, and the camera offline for
  minutes, after which the scene may have changed.

The truth of a disturbed frame is its scene: a passer-by or a reflection is not what the camera
watches. Frames are rendered when read (`CameraFrames`), each from its own seed, so a stream of
thousands of frames holds only its plan and a few renderings, and any frame can be read alone.

**Stress** (`STRESS`): short scenes (12 frames at 2 frames/s), every disturbance frequent. A camera
renders its scene once and every frame is that rendering moved by a pixel or two, with sensor noise and a
little flicker of brightness, so consecutive frames of one scene are close, as a real camera's are, and
a cut is not:

- cut: scenes change at once;
- gradual: one shape blends into the next over a ramp of frames (the truth changes mid-ramp);
- near_tie: every third frame is blended 35-50% with another shape;
- degraded: occlusion, brightness and blur hit runs of frames;
- return: a scene comes back after another one;
- gaps: bursts of unreadable frames (they are dead-lettered; no truth);
- frame_rates: the same changes seen at 30 frames/s, 2 frames/s and 1 frame a minute (event `ts`);
- upload: unordered photos of recurring concepts, each a fresh rendering (the `upload` policy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from cased_core.tinyworld import world as tinyworld

REALISTIC = ("quiet", "busy", "ambiguous", "cold_start", "outages")
STRESS = ("cut", "gradual", "near_tie", "degraded", "return", "gaps", "frame_rates", "upload")
SETS = {"realistic": REALISTIC, "stress": STRESS}
SCENARIOS = REALISTIC + STRESS
SIZE = 64  # the tiny model's frames (it sees 32 px)
RATES = (1.0, 2.0, 5.0, 10.0, 15.0, 25.0, 30.0)  # frames a second of the realistic cameras


@dataclass(frozen=True)
class StreamFrame:
    t: float  # seconds since the stream began
    concept: str | None  # the truth; None for an unreadable frame
    image: Image.Image | None  # None: the frame's bytes are not an image


@dataclass
class Stream:
    name: str
    scenario: str
    policy: str | None  # the history policy the stream asks for: upload, or None for a camera (any live one)
    frames: Sequence[StreamFrame] = field(default_factory=list)

    def truth(self) -> list[tuple[float, str | None]]:
        """Each frame's time and concept, without rendering a realistic camera's frames."""
        if isinstance(self.frames, CameraFrames):
            return self.frames.truth()
        return [(f.t, f.concept) for f in self.frames]


class _Camera:
    """One camera: scenes rendered once, frames jittered around them."""

    def __init__(self, rng: np.random.Generator, fps: float):
        self.rng, self.fps, self.t = rng, fps, 0.0
        self.frames: list[StreamFrame] = []

    def scene(self, category: str) -> Image.Image:
        return tinyworld.render(self.rng, category, size=SIZE)[0]

    def jitter(self, image: Image.Image) -> Image.Image:
        dx, dy = (int(v) for v in self.rng.integers(-2, 3, 2))
        moved = ImageChops.offset(image, dx, dy)
        pixels = np.asarray(moved, np.float32) * self.rng.uniform(0.95, 1.05)
        pixels += self.rng.normal(0, 4, pixels.shape)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    def add(self, concept: str | None, image: Image.Image | None) -> None:
        self.frames.append(StreamFrame(round(self.t, 3), concept, image))
        self.t += 1.0 / self.fps

    def hold(self, category: str, frames: int, base: Image.Image | None = None) -> Image.Image:
        base = base or self.scene(category)
        for _ in range(frames):
            self.add(category, self.jitter(base))
        return base


def _other(rng: np.random.Generator, *not_these: str) -> str:
    choices = [c for c in tinyworld.CATEGORIES if c not in not_these]
    return choices[int(rng.integers(len(choices)))]


def _sequence(rng: np.random.Generator, scenes: int) -> list[str]:
    out: list[str] = []
    for _ in range(scenes):
        out.append(_other(rng, *out[-1:]))
    return out


def _cut(cam: _Camera, scenes: list[str], length: int) -> None:
    for category in scenes:
        cam.hold(category, length)


def _gradual(cam: _Camera, scenes: list[str], length: int, ramp: int = 6) -> None:
    base = cam.hold(scenes[0], length)
    for category in scenes[1:]:
        nxt = cam.scene(category)
        for i in range(ramp):  # alpha from 1/(ramp+1) to ramp/(ramp+1): the truth turns at 1/2
            alpha = (i + 1) / (ramp + 1)
            truth = category if alpha > 0.5 else cam.frames[-1].concept
            cam.add(truth, cam.jitter(Image.blend(base, nxt, alpha)))
        base = cam.hold(category, length - ramp, nxt)


def _near_tie(cam: _Camera, scenes: list[str], length: int) -> None:
    for category in scenes:
        base = cam.scene(category)
        for i in range(length):
            image = cam.jitter(base)
            if i % 3 == 2:
                distractor = cam.scene(_other(cam.rng, category))
                image = Image.blend(image, distractor, float(cam.rng.uniform(0.35, 0.5)))
            cam.add(category, image)


def _degrade(rng: np.random.Generator, image: Image.Image, how: str) -> Image.Image:
    if how == "occlusion":
        out = image.copy()
        x, y = (int(v) for v in rng.integers(0, SIZE // 2, 2))
        ImageDraw.Draw(out).rectangle([x, y, x + SIZE // 3, y + SIZE // 3], fill=(20, 20, 20))
        return out
    if how == "brightness":
        return ImageEnhance.Brightness(image).enhance(float(rng.choice([0.45, 1.6])))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def _degraded(cam: _Camera, scenes: list[str], length: int) -> None:
    for category in scenes:
        base = cam.scene(category)
        how = ("occlusion", "brightness", "blur")[int(cam.rng.integers(3))]
        start = int(cam.rng.integers(2, length - 4))
        for i in range(length):
            image = cam.jitter(base)
            cam.add(category, _degrade(cam.rng, image, how) if start <= i < start + 4 else image)


def _return(cam: _Camera, scenes: list[str], length: int) -> None:
    first = cam.hold(scenes[0], length)
    cam.hold(scenes[1], length)
    cam.hold(scenes[0], length, first)  # the same scene again


def _gaps(cam: _Camera, scenes: list[str], length: int) -> None:
    for category in scenes:
        base = cam.scene(category)
        burst = int(cam.rng.integers(2, length - 4))
        for i in range(length):
            if burst <= i < burst + 3:
                cam.add(None, None)
            else:
                cam.add(category, cam.jitter(base))


# -- realistic fixed cameras -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shot:
    """A scene a fixed camera holds for `frames` frames."""
    category: str  # the truth
    look: int  # seeds its rendering: a shot with the look of an earlier one is that scene coming back
    frames: int
    tie: tuple[str, float] | None = None  # a near-tie scene: another shape seen through it, and its weight


@dataclass(frozen=True)
class Disturbance:
    """Something on top of the scene for `frames` frames from frame `start`; the truth stays the scene's."""
    kind: str  # "reflection", "passer", "walker" or "occlusion" (see `_disturbances`)
    start: int
    frames: int
    look: int  # seeds its appearance and path
    category: str = ""  # what a reflection, a passer-by or a walker shows


@dataclass(frozen=True)
class CameraPlan:
    """Everything a realistic camera stream is, before any pixel: rendered frame by frame by CameraFrames."""
    seed: int
    shots: tuple[Shot, ...]
    times: tuple[float, ...]  # each frame's time, seconds since the stream began
    disturbances: tuple[Disturbance, ...] = ()
    noise: float = 4.0  # sensor noise (standard deviation, levels of 255) in full light
    drift: tuple[float, float, float] = (0.15, 1800.0, 0.0)  # lighting: amplitude, period (s), phase
    steps: tuple[tuple[float, float], ...] = ()  # lighting steps: (from time, gain)


class CameraFrames(Sequence[StreamFrame]):
    """A realistic camera's frames, each rendered when read from its plan and its own seed (so it reads
    the same alone or in order); the scenes' and disturbances' renderings are kept once made."""

    def __init__(self, plan: CameraPlan):
        self.plan = plan
        self._shot_of = np.repeat(np.arange(len(plan.shots)), [s.frames for s in plan.shots])
        self._looks: dict[tuple, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.plan.times)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        shot = self.plan.shots[int(self._shot_of[i])]
        return StreamFrame(self.plan.times[i], shot.category, self.render(i))

    def __iter__(self) -> Iterator[StreamFrame]:
        return (self[i] for i in range(len(self)))

    def truth(self) -> list[tuple[float, str | None]]:
        return [(t, self.plan.shots[k].category) for t, k in zip(self.plan.times, self._shot_of)]

    def render(self, i: int) -> Image.Image:
        plan = self.plan
        rng = np.random.default_rng([plan.seed, 1, i])
        shot = plan.shots[int(self._shot_of[i])]
        pixels = self._scene(shot).copy()
        if rng.random() < 0.05:  # vibration: the picture moves by a pixel
            pixels = np.roll(pixels, tuple(int(v) for v in rng.integers(-1, 2, 2)), axis=(0, 1))
        for d in plan.disturbances:
            if d.start <= i < d.start + d.frames:
                pixels = self._disturb(pixels, d, (i - d.start + 0.5) / d.frames)
        t = plan.times[i]
        amplitude, period, phase = plan.drift
        gain = 1.0 + amplitude * math.sin(2 * math.pi * t / period + phase)
        gain *= math.prod(g for since, g in plan.steps if t >= since)
        cast = 1.0 + 0.04 * np.sin(2 * math.pi * t / period + phase + np.array([0.0, 2.1, 4.2]))
        pixels = pixels * (gain * cast) + rng.normal(0, plan.noise / min(gain, 1.0), pixels.shape)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    def _look(self, key: tuple, category: str, size: int = SIZE) -> np.ndarray:
        if key not in self._looks:
            rng = np.random.default_rng([self.plan.seed, 2, *key])
            image = tinyworld.render(rng, category, size=SIZE)[0]
            self._looks[key] = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32)
        return self._looks[key]

    def _scene(self, shot: Shot) -> np.ndarray:
        base = self._look((0, shot.look), shot.category)
        if shot.tie is None:
            return base
        other, weight = shot.tie
        return (1 - weight) * base + weight * self._look((1, shot.look), other)

    def _disturb(self, pixels: np.ndarray, d: Disturbance, progress: float) -> np.ndarray:
        rng = np.random.default_rng([self.plan.seed, 3, d.look])
        if d.kind == "reflection":
            weight = rng.uniform(0.3, 0.45)
            return (1 - weight) * pixels + weight * self._look((2, d.look), d.category)
        out = pixels.copy()
        if d.kind in ("passer", "walker"):  # an object crossing the view: near the lens, or small along an edge
            lo, hi = (0.35, 0.5) if d.kind == "passer" else (0.12, 0.19)
            side = int(rng.integers(SIZE * lo, SIZE * hi))
            patch = self._look((3, d.look), d.category, side)
            y = int(rng.integers(0, SIZE - side)) if d.kind == "passer" else (0 if rng.random() < 0.5 else SIZE - side)
            x = int(round(-side + progress * (SIZE + side)))
            lo, hi = max(x, 0), min(x + side, SIZE)
            if hi > lo:
                out[y:y + side, lo:hi] = patch[:, lo - x:hi - x]
            return out
        # an occlusion: something near the lens, out of focus, darkening part of the view from an edge
        mask = Image.new("L", (SIZE, SIZE), 0)
        edge = np.array([1, 0.3]) if rng.random() < 0.5 else np.array([0.3, 1])  # near the top or the left
        corner = rng.uniform(0, SIZE, 2) * edge
        points = [tuple(corner + rng.normal(0, SIZE * 0.25, 2)) for _ in range(7)]
        ImageDraw.Draw(mask).polygon(points, fill=255)
        shade = np.asarray(mask.filter(ImageFilter.GaussianBlur(SIZE / 12)), np.float32)[..., None] / 255.0
        return out * (1 - shade * rng.uniform(0.5, 0.8))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _shots(rng: np.random.Generator, count: int, low: float, high: float, tie_share: float = 0.0) -> list[Shot]:
    """`count` scenes of log-uniform lengths; after a cut the camera sometimes returns to an earlier scene."""
    shots: list[Shot] = []
    for k in range(count):
        frames = max(2, int(_log_uniform(rng, low, high)))
        earlier = [s for s in shots[:-1] if s.category != shots[-1].category] if shots else []
        if earlier and rng.random() < 0.25:
            back = earlier[int(rng.integers(len(earlier)))]
            shots.append(Shot(back.category, back.look, frames, back.tie))
            continue
        category = _other(rng, *(s.category for s in shots[-1:]))
        tie = (_other(rng, category), float(rng.uniform(0.2, 0.35))) if rng.random() < tie_share else None
        shots.append(Shot(category, k, frames, tie))
    return shots


def _disturbances(rng: np.random.Generator, shots: Sequence[Shot], fps: float,
                  every: dict[str, float]) -> list[Disturbance]:
    """Disturbances of each kind at random, on average one per `every[kind]` frames: a reflection (another
    shape blended into one frame), a passer-by (something large crossing close to the lens within 1-2
    frames), a walker (something small crossing along the top or bottom edge in 1-4 s), an occlusion
    (something dark covering a corner for 1-4 s); the ones in seconds last as many frames as the rate
    makes, at least one."""
    total = sum(s.frames for s in shots)
    frames_of = {"reflection": lambda: 1, "passer": lambda: int(rng.integers(1, 3)),
                 "walker": lambda: max(1, round(rng.uniform(1, 4) * fps)),
                 "occlusion": lambda: max(1, round(rng.uniform(1, 4) * fps))}
    out = []
    for kind, mean_gap in every.items():
        i = 1 + int(rng.exponential(mean_gap))  # the first frame is undisturbed: it is all a new stream has
        while i < total:
            frames = frames_of[kind]()
            out.append(Disturbance(kind, i, min(frames, total - i), len(out),
                                   _other(rng, *sorted({s.category for s in shots}))))
            i += frames + int(rng.exponential(mean_gap))
    return sorted(out, key=lambda d: d.start)


def _times(rng: np.random.Generator, count: int, fps: float, jitter: float = 0.02) -> list[float]:
    steps = np.maximum(rng.normal(1.0, jitter, count - 1), 0.2) / fps
    return [0.0] + [round(float(t), 3) for t in np.cumsum(steps)]


def _realistic(scenario: str, rng: np.random.Generator, seed: int, scale: float) -> CameraPlan:
    fps = float(rng.choice(RATES))
    low, high = 20 * scale, 2000 * scale
    light = dict(noise=float(rng.uniform(2, 6)), drift=(float(rng.uniform(0.05, 0.25)), float(rng.uniform(600, 3600)),
                                                         float(rng.uniform(0, 2 * math.pi))))
    if scenario == "cold_start":
        shots = _shots(rng, int(rng.integers(1, 3)), 10 * scale, 60 * scale)
        every = {"reflection": 25.0, "passer": 40.0}
        disturbances = _disturbances(rng, shots, fps, every)
        if rng.random() < 0.5:  # disturbed within its first frames (the very first is the stream's only view)
            kind, start = ("reflection", "passer")[int(rng.integers(2))], int(rng.integers(1, 4))
            frames = 1 if kind == "reflection" else int(rng.integers(1, 3))
            disturbances.append(Disturbance(kind, start, frames, len(disturbances), _other(rng, shots[0].category)))
        return CameraPlan(seed, tuple(shots), tuple(_times(rng, sum(s.frames for s in shots), fps)),
                          tuple(disturbances), **light)
    if scenario == "outages":
        fps = float(rng.choice(RATES[:3]))
        shots = _shots(rng, int(rng.integers(3, 5)), low, high / 2)
        times = _times(rng, sum(s.frames for s in shots), fps, jitter=0.15)
        gaps = np.zeros(len(times))
        for _ in range(int(rng.integers(3, 12))):  # dropped frames: a few intervals missing
            gaps[int(rng.integers(1, len(times)))] += int(rng.integers(1, 5)) / fps
        starts = np.cumsum([s.frames for s in shots])[:-1]
        for k, start in enumerate(starts):  # the camera offline for minutes: at a cut, or within a scene
            at = int(start) if k % 2 == 0 else int(rng.integers(1, len(times)))
            gaps[at] += rng.uniform(30, 900)
        times = [round(float(t), 3) for t in np.asarray(times) + np.cumsum(gaps)]
        disturbances = _disturbances(rng, shots, fps, {"reflection": 300.0, "passer": 400.0})
        return CameraPlan(seed, tuple(shots), tuple(times), tuple(disturbances), **light)
    tie_share = 0.5 if scenario == "ambiguous" else 0.0
    shots = _shots(rng, int(rng.integers(3, 5)), low, high, tie_share)
    every = {"quiet": {"reflection": 400.0},
             "busy": {"reflection": 400.0, "passer": 150.0, "walker": 200.0, "occlusion": 600.0},
             "ambiguous": {"reflection": 60.0}}[scenario]
    disturbances = _disturbances(rng, shots, fps, every)
    times = _times(rng, sum(s.frames for s in shots), fps)
    steps: tuple[tuple[float, float], ...] = ()
    if rng.random() < 0.5:  # a light switched off for a while, then on again
        off, gain = float(rng.uniform(0.2, 0.6)) * times[-1], float(rng.uniform(0.5, 0.7))
        steps = ((off, gain), (off + float(rng.uniform(0.1, 0.3)) * times[-1], 1 / gain))
    return CameraPlan(seed, tuple(shots), tuple(times), tuple(disturbances), steps=steps, **light)


def generate(scenario: str, streams: int, seed: int, scenes: int = 4, length: int = 12,
             scale: float = 1.0) -> list[Stream]:
    """`streams` streams of `scenario`, seeded. A stress stream has `scenes` scenes of `length` frames;
    a realistic one's scenes last from 20 to 2,000 frames times `scale` (cold starts: 10 to 60).

    Raises:
        ValueError: an unknown scenario.

    Examples:
        >>> [len(s.frames) for s in generate("cut", 2, seed=1, scenes=3, length=5)]
        [15, 15]
        >>> [s.frames[0].concept for s in generate("quiet", 2, seed=1, scale=0.05)]
        ['ring', 'diamond']
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
    out = []
    for n in range(streams):
        if scenario in REALISTIC:
            rng = np.random.default_rng([seed, 100 + REALISTIC.index(scenario), n])
            plan = _realistic(scenario, rng, int(rng.integers(2**31)), scale)
            out.append(Stream(f"{scenario}-{n}", scenario, None, CameraFrames(plan)))
            continue
        rng = np.random.default_rng([seed, STRESS.index(scenario), n])
        if scenario == "upload":
            concepts = [str(c) for c in rng.choice(tinyworld.CATEGORIES, 3, replace=False)]
            times = np.cumsum(rng.uniform(5, 600, scenes * length // 2))  # photos minutes apart
            frames = [StreamFrame(round(float(t), 3), str(c), tinyworld.render(rng, str(c), size=SIZE)[0])
                      for t, c in zip(times, rng.choice(concepts, len(times)))]
            out.append(Stream(f"{scenario}-{n}", scenario, "upload", frames))
            continue
        fps = (30.0, 2.0, 1 / 60)[n % 3] if scenario == "frame_rates" else 2.0
        cam = _Camera(rng, fps)
        build = {"cut": _cut, "gradual": _gradual, "near_tie": _near_tie, "degraded": _degraded,
                 "return": _return, "gaps": _gaps, "frame_rates": _cut}[scenario]
        build(cam, _sequence(rng, 2 if scenario == "return" else scenes), length)
        out.append(Stream(f"{scenario}-{n}", scenario, None, cam.frames))
    return out


def names_of(concept: str) -> frozenset[str]:
    """The names that count as right for a tiny-world concept: its own and its captions' synonyms."""
    return frozenset({concept, *tinyworld.ALIASES[concept]})


def scripted(name: str, plan: Sequence[tuple[str, int]], seed: int, fps: float = 2.0, near_tie_every: int = 0,
             distractor: str = "heart") -> Stream:
    """One live camera following `plan`, (category, frames) per scene; a category seen before comes back
    as the same rendering (a return). Every `near_tie_every`-th frame (0: none) is blended 30-45% with a
    rendering of `distractor`, so its own top name may flicker while the truth stays.

    Examples:
        >>> [f.concept for f in scripted("cam", [("star", 2), ("moon", 1), ("star", 1)], seed=1).frames]
        ['star', 'star', 'moon', 'star']
    """
    rng = np.random.default_rng(seed)
    cam, bases = _Camera(rng, fps), {}
    other = cam.scene(distractor)
    for category, frames in plan:
        base = bases.setdefault(category, cam.scene(category))
        for _ in range(frames):
            image = cam.jitter(base)
            if near_tie_every and len(cam.frames) % near_tie_every == near_tie_every - 1:
                image = Image.blend(image, other, float(rng.uniform(0.3, 0.45)))
            cam.add(category, image)
    return Stream(name, "scripted", None, cam.frames)
