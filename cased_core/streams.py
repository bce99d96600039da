"""Simulated streams from the tiny world, with the truth for every frame: what `cased eval stream` runs.

A camera holds a scene: its shape is rendered once and every frame is that rendering moved by a pixel
or two, with sensor noise and a little flicker of brightness, so consecutive frames of one scene are
close, as a real camera's are, and a cut is not. Scenarios (each a list of streams, seeded):

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

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from cased_core import tinyworld

SCENARIOS = ("cut", "gradual", "near_tie", "degraded", "return", "gaps", "frame_rates", "upload")
SIZE = 64  # the tiny model's frames (it sees 32 px)


@dataclass(frozen=True)
class StreamFrame:
    t: float  # seconds since the stream began
    concept: str | None  # the truth; None for an unreadable frame
    image: Image.Image | None  # None: the frame's bytes are not an image


@dataclass
class Stream:
    name: str
    scenario: str
    policy: str  # the history policy the stream asks for: live or upload
    frames: list[StreamFrame] = field(default_factory=list)


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


def generate(scenario: str, streams: int, seed: int, scenes: int = 4, length: int = 12) -> list[Stream]:
    """`streams` streams of `scenario`, each of `scenes` scenes of `length` frames, seeded.

    Raises:
        ValueError: an unknown scenario.

    Examples:
        >>> [len(s.frames) for s in generate("cut", 2, seed=1, scenes=3, length=5)]
        [15, 15]
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
    out = []
    for n in range(streams):
        rng = np.random.default_rng([seed, SCENARIOS.index(scenario), n])
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
        out.append(Stream(f"{scenario}-{n}", scenario, "live", cam.frames))
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
    return Stream(name, "scripted", "live", cam.frames)
