"""A small synthetic world to train and test CaSED offline.

No pretrained CLIP weights or caption corpus can be had offline, so the
project renders its own labelled images (shapes with varied colour, size,
position, rotation, textured backgrounds and distractors) together with
captions written the way web captions describe such images: noisy, with
file names, hashtags, URLs, filler words and synonyms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart",
    "cross", "ring", "arrow", "moon", "diamond",
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (240, 220, 30), "orange": (245, 140, 20), "purple": (140, 40, 180),
    "pink": (250, 130, 190), "black": (15, 15, 15), "white": (245, 245, 245),
    "brown": (120, 70, 30), "grey": (128, 128, 128), "cyan": (40, 210, 220),
}

IMAGE_SIZE = 64  # pixels a side of a rendered image
SIZES = {"small": (0.16, 0.24), "medium": (0.25, 0.33), "large": (0.34, 0.44)}

# Words a web caption may use for each shape, besides its own name.
ALIASES: dict[str, tuple[str, ...]] = {
    "moon": ("crescent moon", "crescent", "moon"),
    "heart": ("love heart", "heart"),
    "diamond": ("diamond", "rhombus", "diamond"),
    "ring": ("ring", "donut ring", "ring"),
    "cross": ("cross", "plus cross", "cross"),
    "star": ("star", "star"),
    "arrow": ("arrow", "arrow"),
    "square": ("square", "square"),
    "triangle": ("triangle", "triangle"),
    "circle": ("circle", "disc circle", "circle"),
}

_BACKGROUND_WORDS = ("white", "dark", "light", "blurry", "noisy", "plain", "textured")

_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} on a {bg} background",
    "{shape} vector clipart",
    "{colour} {shape} icon",
    "drawing of a {size} {shape}",
    "{shape}_{colour}_{n}.png",
    "a {shape} shape, free download http://img.example.com/{shape}{n}.jpg",
    "the {shape} #{shape} #art",
    "{size} {colour} {shape}",
    "simple {shape} symbol",
    "<b>{shape}</b> sticker for kids",
    "a {shape} in the picture",
    "hand drawn {shape} design",
    "{shape} shape wallpaper",
    "{shape}-shaped cookie cutter",
    "my {shape} tattoo idea",
    "{shape} pattern on a {bg} wall",
)


@dataclass(frozen=True)
class Scene:
    """What a rendered image shows: enough to render it and caption it."""

    category: str
    colour: str
    size: str


def _polygon(points: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = points @ rot.T * radius + np.array([cx, cy])
    return [tuple(p) for p in pts]


def _star_points(n: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.arange(2 * n) * math.pi / n - math.pi / 2
    radii = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def _heart_points() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1) / 17.0


_SHAPE_POINTS: dict[str, np.ndarray] = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": np.array([[0.0, -1.0], [0.87, 0.5], [-0.87, 0.5]]),
    "star": _star_points(),
    "heart": _heart_points(),
    "cross": np.array([
        [-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3],
        [0.3, 1], [-0.3, 1], [-0.3, 0.3], [-1, 0.3], [-1, -0.3], [-0.3, -0.3],
    ]),
    "arrow": np.array([
        [-1, -0.25], [0.2, -0.25], [0.2, -0.6], [1, 0], [0.2, 0.6], [0.2, 0.25], [-1, 0.25],
    ]),
    "diamond": np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]]),
}


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Gradient plus noise plus a few faint stripes: the shape must be found on texture."""
    c0, c1 = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, size)[:, None, None]
    grad = c0 * (1 - t) + c1 * t
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    img = np.broadcast_to(grad, (size, size, 3)).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(5, 25), size=img.shape)
    if rng.random() < 0.4:
        period = rng.integers(4, 12)
        stripes = ((np.arange(size) // period) % 2)[None, :, None] * rng.uniform(10, 35)
        img = img + stripes
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _contrasting_colour(rng: np.random.Generator, background: Image.Image) -> str:
    """Pick a named colour far enough from the background's mean to be visible."""
    mean = np.asarray(background, dtype=np.float32).reshape(-1, 3).mean(axis=0)
    names = list(COLOURS)
    rng.shuffle(names)
    for name in names:
        if np.linalg.norm(np.array(COLOURS[name]) - mean) > 120:
            return name
    return names[0]


def _draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(rng.integers(0, 4)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            x1, y1 = rng.uniform(0, size, 2)
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(1, size * 0.04)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)


def _draw_shape(image: Image.Image, scene: Scene, rng: np.random.Generator) -> None:
    size = image.width
    lo, hi = SIZES[scene.size]
    radius = rng.uniform(lo, hi) * size
    margin = radius * 1.05
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(-0.6, 0.6)
    colour = COLOURS[scene.colour]
    # Shapes are drawn into a mask so that holes (ring, moon) show the background.
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if scene.category == "circle":
        draw.ellipse(box, fill=255)
    elif scene.category == "ring":
        draw.ellipse(box, fill=255)
        inner = radius * rng.uniform(0.5, 0.65)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif scene.category == "moon":
        draw.ellipse(box, fill=255)
        dx, dy = radius * 0.55 * math.cos(angle * 3), radius * 0.55 * math.sin(angle * 3)
        draw.ellipse([cx - radius + dx, cy - radius + dy, cx + radius + dx, cy + radius + dy], fill=0)
    else:
        draw.polygon(_polygon(_SHAPE_POINTS[scene.category], cx, cy, radius, angle), fill=255)
    image.paste(Image.new("RGB", image.size, colour), (0, 0), mask)


def random_scene(rng: np.random.Generator, category: str | None = None) -> Scene:
    return Scene(
        category=category or CATEGORIES[int(rng.integers(len(CATEGORIES)))],
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        size=list(SIZES)[int(rng.integers(len(SIZES)))],
    )


def render(rng: np.random.Generator, category: str | None = None, size: int = IMAGE_SIZE) -> tuple[Image.Image, Scene]:
    """Render one image of `category` (random if None); the colour is chosen to contrast with the background."""
    background = _background(rng, size)
    scene = random_scene(rng, category)
    scene = Scene(scene.category, _contrasting_colour(rng, background), scene.size)
    image = background
    draw = ImageDraw.Draw(image)
    _draw_distractors(draw, rng, size)
    _draw_shape(image, scene, rng)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image, scene


def caption(rng: np.random.Generator, scene: Scene) -> str:
    """A web-style caption of a scene. Colour appears in a minority of templates on purpose:
    captions where colour dominates teach a model colour rather than shape."""
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    aliases = ALIASES[scene.category]
    return template.format(
        shape=aliases[int(rng.integers(len(aliases)))],
        colour=scene.colour,
        size=scene.size,
        bg=_BACKGROUND_WORDS[int(rng.integers(len(_BACKGROUND_WORDS)))],
        n=int(rng.integers(1, 999)),
    )


def captions(rng: np.random.Generator, count: int) -> Iterator[str]:
    """Captions of random scenes: the tiny world's caption database."""
    for _ in range(count):
        yield caption(rng, random_scene(rng))


def write_dataset(root: str | Path, per_category: int, seed: int, size: int = IMAGE_SIZE) -> Path:
    """Write an evaluation dataset: one sub-folder per category, PNG images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for category in CATEGORIES:
        folder = root / category
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_category):
            image, _ = render(rng, category, size)
            image.save(folder / f"{category}_{i:04d}.png")
    return root
