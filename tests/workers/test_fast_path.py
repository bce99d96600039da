"""The worker's fast image path (JPEG DCT scaling, tensor preprocess) labels as the full-size path does:
the same label on >= 99% of tiny-world camera frames and the real photos shipped in packages."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos
from sklearn.datasets import load_sample_images

from cased_core.tinyworld import world as tinyworld
from cased_core.method.classifier import Classifier
from cased_core.method.preprocess import TensorPreprocess
from tests.workers.helpers import jpeg
from workers.decode import ImageLimits, decode_image

SIZES = [(640, 480), (1920, 1080), (320, 240), (800, 600)]


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    rng = np.random.default_rng(11)
    images = [tinyworld.render(rng, size=128)[0].convert("RGB").resize(SIZES[i % 4], Image.BILINEAR)
              for i in range(600)]
    images += [Image.fromarray(getattr(photos, name)()).convert("RGB")
               for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "horse")]
    images += [Image.fromarray(p) for p in load_sample_images().images]
    return [jpeg(image, quality=85) for image in images]


def test_the_fast_path_gives_todays_labels(frames, tiny_model, tiny_database):
    classifier = Classifier(tiny_model, tiny_database)
    spec = TensorPreprocess.of(tiny_model.preprocess)
    today = torch.stack([tiny_model.preprocess(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames])
    fast = spec([torch.from_numpy(np.array(decode_image(f, ImageLimits(), spec.size))).permute(2, 0, 1)
                 for f in frames])
    before = [p.label for p in classifier.classify_pixels(today)]
    after = [p.label for p in classifier.classify_pixels(fast)]
    agreement = np.mean([a == b for a, b in zip(before, after)])
    assert agreement >= 0.99, agreement


def test_the_batched_jpeg_decoder_gives_todays_labels(frames, tiny_model, tiny_database):
    """The path a GPU worker takes (torchvision decodes whole JPEGs a batch at a time, the tensor
    preprocess resizes them), run here on the CPU: no DCT scaling, so only rounding differs."""
    from cased_core.method.preprocess import decode_jpegs
    from workers.decode import inspect_jpeg

    classifier = Classifier(tiny_model, tiny_database)
    spec = TensorPreprocess.of(tiny_model.preprocess)
    inspected = [inspect_jpeg(f, ImageLimits()) for f in frames]
    assert all(i is not None for i in inspected)
    today = torch.stack([tiny_model.preprocess(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames])
    batched = spec(decode_jpegs([i.data for i in inspected], [i.orientation for i in inspected]))
    before = [p.label for p in classifier.classify_pixels(today)]
    after = [p.label for p in classifier.classify_pixels(batched)]
    assert np.mean([a == b for a, b in zip(before, after)]) >= 0.99
