"""cased_core.method.preprocess: the model's transform as batched tensor operations, compared with open_clip's
own transform on real photos (pixels after normalising, and embeddings of a real architecture)."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as photos
from sklearn.datasets import load_sample_images

from cased_core.method.preprocess import TensorPreprocess, decode_jpegs

LEVEL = 1 / 255 / 0.26  # one level of 255, in normalised units (the smallest std is ~0.26)


def real_photos() -> list[Image.Image]:
    china, flower = load_sample_images().images
    return [Image.fromarray(p).convert("RGB") for p in
            (photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket(), china, flower,
             np.hstack([china, flower]))]  # 1280x427: 3:1


def uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def test_of_reads_the_default_layout_only():
    spec = TensorPreprocess.of(open_clip.image_transform(224, is_train=False))
    assert spec.size == 224 and spec.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert TensorPreprocess.of(open_clip.image_transform(32, is_train=False, mean=(0.5,) * 3,
                                                         std=(0.25,) * 3)).std == (0.25, 0.25, 0.25)
    assert TensorPreprocess.of(open_clip.image_transform(224, is_train=False, resize_mode="longest")) is None
    assert TensorPreprocess.of(open_clip.image_transform(224, is_train=False, resize_mode="squash")) is None
    assert TensorPreprocess.of(lambda image: image) is None


@pytest.mark.parametrize("size", [224, 32])
def test_pixels_match_open_clips_transform(size):
    transform = open_clip.image_transform(size, is_train=False)
    spec = TensorPreprocess.of(transform)
    images = real_photos()
    expected = torch.stack([transform(im) for im in images])
    got = spec([uint8(im) for im in images])
    difference = (got - expected).abs()
    assert got.shape == expected.shape == (len(images), 3, size, size)
    # torchvision resizes uint8 with PIL's own filter: at most a level or two of rounding apart
    assert difference.max() <= 2 * LEVEL + 1e-6, float(difference.max())
    assert difference.mean() < 0.01 * LEVEL, float(difference.mean())


def test_equal_sized_images_batch_together_and_keep_their_order():
    transform = open_clip.image_transform(32, is_train=False)
    spec = TensorPreprocess.of(transform)
    images = real_photos()[:4] * 2  # mixed sizes, repeated
    got = spec([uint8(im) for im in images])
    for i, image in enumerate(images):
        assert torch.equal(got[i], spec([uint8(image)])[0]), i


def test_embeddings_of_a_real_architecture_agree():
    """ViT-B-32 (random init: the architecture and its 224 px transform, not the weights, matter here)."""
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms("ViT-B-32")
    model.eval()
    spec = TensorPreprocess.of(transform)
    images = real_photos()
    with torch.inference_mode():
        expected = model.encode_image(torch.stack([transform(im) for im in images]), normalize=True)
        got = model.encode_image(spec([uint8(im) for im in images]), normalize=True)
    cosine = (expected * got).sum(dim=1)
    assert cosine.min() > 0.9999, cosine.tolist()


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    import io

    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_batched_jpeg_decode_shows_every_orientation_upright_as_pil_does():
    """torchvision's decoder (nvJPEG on a GPU; libjpeg-turbo here) with the EXIF orientation applied as
    tensor flips and rotations, against PIL's decode and transpose (ImageOps.exif_transpose)."""
    import io

    from PIL import ImageOps

    photo = Image.fromarray(photos.astronaut()).resize((300, 200))
    encoded = [jpeg_with_orientation(photo, o) for o in range(1, 9)]
    decoded = decode_jpegs(encoded, list(range(1, 9)))
    for orientation, data, image in zip(range(1, 9), encoded, decoded):
        expected = torch.from_numpy(np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))).permute(2, 0, 1)
        assert image.shape == expected.shape, orientation
        assert (image.int() - expected.int()).abs().max() <= 1, orientation  # the same libjpeg-turbo


def test_a_jpeg_that_does_not_decode_fails_alone():
    good = jpeg_with_orientation(Image.fromarray(photos.coffee()), 1)
    decoded = decode_jpegs([good, good[:len(good) // 3], good], [1, 1, 1])
    assert isinstance(decoded[1], Exception)
    assert decoded[0].shape == decoded[2].shape == (3, 400, 600)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: nvJPEG")
def test_nvjpeg_matches_the_cpu_decoder():
    encoded = [jpeg_with_orientation(Image.fromarray(p), o) for p, o in
               ((photos.astronaut(), 1), (photos.coffee(), 6), (photos.chelsea(), 3))]
    on_gpu, on_cpu = decode_jpegs(encoded, [1, 6, 3], "cuda"), decode_jpegs(encoded, [1, 6, 3])
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        assert (gpu.cpu().float() - cpu.float()).abs().mean() < 2  # IDCT implementations differ slightly
