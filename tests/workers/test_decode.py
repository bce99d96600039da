"""workers.decode: every image within the limits decodes to 8-bit RGB at a bounded cost, every other one
becomes a DecodeError with the right reason, ordinary PNGs give exactly today's pixels and JPEGs are
decoded at the smallest DCT scale that covers the model's input."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as photos
from sklearn.datasets import load_sample_images

from tests.workers.images import BLUE, FIRST_FRAME_RED, RED, hostile_images
from topics import events as ev
from cased_core.method.preprocess import decode_jpegs
from workers.decode import DecodeError, ImageLimits, decode_image, inspect_jpeg, undecodable

# workers.decode silences these at import, but pytest restores the warnings filters after collecting;
# test_corpus_bounded_in_memory_and_time checks the module's own filters in a fresh process.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL", "ignore::PIL.Image.DecompressionBombWarning")

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ImageLimits()
PREPROCESS_224 = open_clip.image_transform(224, is_train=False)
MAX_GROWTH_MIB = 300
MAX_SECONDS_PER_IMAGE = 5.0


@pytest.fixture(scope="module")
def corpus():
    return hostile_images()


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def centre(image: Image.Image) -> tuple:
    return image.getpixel((image.width // 2, image.height // 2))


def test_corpus_outcomes(corpus):
    outcomes = {}
    for name, (data, _) in corpus.items():
        try:
            image = decode_image(data, LIMITS, 224)
            outcomes[name] = None
            assert image.mode == "RGB" and np.asarray(image).dtype == np.uint8, name
        except DecodeError as err:
            outcomes[name] = err.reason
            assert err.detail and "\n" not in err.detail and len(err.detail) <= 300, (name, err.detail)
    assert outcomes == {name: reason for name, (_, reason) in corpus.items()}


def test_jpeg_headers_checked_for_the_batched_decoder_agree_with_decode_image(corpus):
    """inspect_jpeg refuses what decode_image refuses from the header, hands over only plain JPEGs, and
    what it hands over decodes with torchvision exactly when decode_image decodes it."""
    handed = 0
    for name, (data, reason) in corpus.items():
        try:
            encoded = inspect_jpeg(data, LIMITS)
        except DecodeError as err:
            assert err.reason == reason and reason != ev.NOT_AN_IMAGE, name
            continue
        if encoded is None:
            continue
        handed += 1
        assert data.startswith(b"\xff\xd8"), name
        [image] = decode_jpegs([encoded.data], [encoded.orientation])
        assert isinstance(image, torch.Tensor) == (reason is None), (name, image)
        if reason is None:
            expected = decode_image(data, LIMITS, None)
            assert (image.shape[2], image.shape[1]) == expected.size, name
    assert handed >= 3  # the corpus holds plain, rotated and truncated JPEGs
    for refused in (encode(Image.new("CMYK", (64, 64)), "JPEG"), encode(Image.new("RGB", (300, 100)), "JPEG"),
                    encode(Image.new("RGB", (64, 64)), "PNG")):
        assert inspect_jpeg(refused, LIMITS) is None  # CMYK, past 2:1, not a JPEG: decode_image's


def test_first_frame_and_pixel_modes(corpus):
    def decoded(name):
        return decode_image(corpus[name][0], LIMITS, 224)

    for name in FIRST_FRAME_RED:
        assert centre(decoded(name)) == RED, name
    assert centre(decoded("png_gray16")) == (128, 128, 128)  # 32768 of 65535, not clipped to white
    assert centre(decoded("png_rgb16")) == (255, 128, 0)
    assert centre(decoded("tiff_int32")) == (156, 156, 156)  # 40000 >> 8
    assert centre(decoded("tiff_float32")) == (128, 128, 128)  # 0.5 of 0..1
    assert centre(decoded("tiff_lab")) == (119, 119, 119)  # L* 50, a* b* 0: mid grey in sRGB
    assert centre(decoded("jpeg_cmyk")) == RED
    rotated = decoded("jpeg_exif_rotated")  # 64x32, left half red, shown rotated clockwise
    assert rotated.size == (32, 64)
    assert np.abs(np.subtract(rotated.getpixel((16, 8)), RED)).max() < 8
    assert np.abs(np.subtract(rotated.getpixel((16, 56)), BLUE)).max() < 8
    assert decoded("jpeg_corrupt_exif").size == (16, 16)
    # Alpha and palette transparency are dropped, as convert("RGB") always did.
    for name in ("png_palette_trns", "png_la", "png_rgba", "bmp_1bit"):
        today = Image.open(io.BytesIO(corpus[name][0])).convert("RGB")
        assert decoded(name).tobytes() == today.tobytes(), name


def test_samples_outside_16_bits_are_stretched():
    ramp = np.linspace(-2, 2, 64, dtype=np.float32)[None, :].repeat(16, 0)
    for pixels in (ramp, (ramp * 100_000).astype(np.int32)):
        decoded = np.asarray(decode_image(encode(Image.fromarray(pixels), "TIFF"), LIMITS, None))
        assert decoded[0, 0].tolist() == [0, 0, 0] and decoded[0, -1].tolist() == [255, 255, 255], pixels.dtype
        assert abs(int(decoded[0, 32, 0]) - 130) <= 1, pixels.dtype  # -2..2 -> 0..255: 0.03 -> 129.5


def test_limits_at_their_edges():
    gray = Image.new("L", (160, 8), 128)
    assert decode_image(encode(gray, "PNG"), LIMITS, None).size == (160, 8)
    for size in [(161, 8), (7, 7), (8, 7)]:
        with pytest.raises(DecodeError) as caught:
            decode_image(encode(Image.new("L", size), "PNG"), LIMITS, None)
        assert caught.value.reason == ev.UNSUPPORTED_IMAGE, size
    data = encode(Image.new("L", (100, 100)), "PNG")
    assert decode_image(data, ImageLimits(max_pixels=10_000), None).size == (100, 100)
    with pytest.raises(DecodeError) as caught:
        decode_image(data, ImageLimits(max_pixels=9_999), None)
    assert caught.value.reason == ev.TOO_LARGE
    assert decode_image(encode(Image.new("L", (1000, 10)), "PNG"), ImageLimits(max_aspect=100), None).size == (1000, 10)
    with pytest.raises(ValueError):
        ImageLimits(min_side=0)


def ordinary_photos() -> dict[str, np.ndarray]:
    china, flower = load_sample_images().images
    return {"astronaut": photos.astronaut(), "chelsea": photos.chelsea(), "coffee": photos.coffee(),
            "china": china, "flower": flower, "flower_2to1": np.vstack([flower, flower])[:640, :320]}


def test_ordinary_photos_give_todays_pixels():
    preprocess_32 = open_clip.image_transform(32, is_train=False)
    for name, pixels in ordinary_photos().items():
        data = encode(Image.fromarray(pixels), "PNG")
        today = Image.open(io.BytesIO(data)).convert("RGB")
        for preprocess, size in ((PREPROCESS_224, 224), (preprocess_32, 32)):
            assert torch.equal(preprocess(decode_image(data, LIMITS, size)), preprocess(today)), (name, size)
            assert torch.equal(preprocess(decode_image(data, LIMITS, None)), preprocess(today)), name


def test_jpegs_decoded_at_the_scale_the_model_needs():
    """A JPEG comes back at 1/2, 1/4 or 1/8 of its size, the smallest that still covers the input (by
    PIL's integer arithmetic), and what the model then sees is close to the full decode's."""
    preprocess_32 = open_clip.image_transform(32, is_train=False)
    for name, pixels in ordinary_photos().items():
        data = encode(Image.fromarray(pixels), "JPEG")
        whole = Image.open(io.BytesIO(data)).convert("RGB")
        assert decode_image(data, LIMITS, None).size == whole.size
        for preprocess, size in ((PREPROCESS_224, 224), (preprocess_32, 32)):
            reduced = decode_image(data, LIMITS, size)
            scale = next(s for s in (8, 4, 2, 1) if min(whole.width // size, whole.height // size) >= s)
            assert reduced.size == (-(-whole.width // scale), -(-whole.height // scale)), (name, size)
            assert min(reduced.size) >= size
            difference = (preprocess(reduced) - preprocess(whole)).abs()
            # Normalised units (one level of 255 is ~0.015). 1/8 DCT scaling averages 8x8 blocks, a
            # sharper low-pass than a 9x bicubic reduction, so fine texture differs (up to 0.09 on these
            # photos at 32 px, 0.02 at 224 px); swapped channels or a shifted crop give 0.3 and more.
            assert difference.mean() < 0.1, (name, size, float(difference.mean()))


def test_elongated_photos_resized_as_the_model_would():
    """Past 2:1, decode_image does the model's resize and centre crop itself, from the kept part only:
    what the model sees differs from preprocessing the whole image by PIL's weight rounding alone."""
    china, flower = load_sample_images().images  # 640x427
    strip = np.hstack([china, flower] * 5)  # 6400x427
    cases = {"2.5:1": strip[:, :1067], "3:1": strip[:, :1281], "10:1": strip[:, :4270], "15:1": strip[:, :6400],
             "10:1 tall": strip[:, :4270].transpose(1, 0, 2).copy(), "3:1 enlarged": strip[:100, :300],
             "20:1 enlarged": strip[:40, :800]}
    level = 1 / 255 / min(open_clip.OPENAI_DATASET_STD)  # one 8-bit level, normalised
    for name, pixels in cases.items():
        data = encode(Image.fromarray(pixels), "PNG")
        reduced, whole = decode_image(data, LIMITS, 224), decode_image(data, LIMITS, None)
        assert reduced.size == (224, 224) and whole.size == pixels.shape[1::-1], name
        difference = (PREPROCESS_224(reduced) - PREPROCESS_224(whole)).abs()
        assert (difference > 0).float().mean() < 0.002 and difference.max() < 2.5 * level, (name, difference.max())


MEASURE = r"""
import json, sys, time
from pathlib import Path
import open_clip
from cased_core.method.preprocess import decode_jpegs
from workers.decode import DecodeError, ImageLimits, decode_image, inspect_jpeg

def status(field):  # kB
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

corpus = {p.stem: p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.bin"))}
preprocess = open_clip.image_transform(224, is_train=False)
preprocess(decode_image(corpus["png_160x8"], ImageLimits(), 224))  # warm up torch and Pillow's plugins
base = status("VmRSS:")
results = {}
for name, data in corpus.items():
    start = time.perf_counter()
    try:
        preprocess(decode_image(data, ImageLimits(), 224))
        reason = None
    except DecodeError as err:
        reason = err.reason
    results[name] = {"reason": reason, "seconds": time.perf_counter() - start}
print(json.dumps({"results": results, "growth_mib": (status("VmHWM:") - base) / 1024}))
"""


@pytest.mark.slow  # a fresh interpreter imports open_clip (~5 s)
def test_corpus_bounded_in_memory_and_time(corpus, tmp_path):
    """Decoding and preprocessing (224 px) the whole corpus in a fresh process: peak RSS grows by at
    most MAX_GROWTH_MIB, no image takes MAX_SECONDS_PER_IMAGE, and Pillow prints no warning."""
    for name, (data, _) in corpus.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "PIL" not in done.stderr, done.stderr
    measured = json.loads(done.stdout)
    print(f"peak RSS growth {measured['growth_mib']:.0f} MiB; slowest:",
          sorted(((r["seconds"], n) for n, r in measured["results"].items()), reverse=True)[:3])
    assert {n: r["reason"] for n, r in measured["results"].items()} == {n: r for n, (_, r) in corpus.items()}
    assert measured["growth_mib"] < MAX_GROWTH_MIB
    assert max(r["seconds"] for r in measured["results"].values()) < MAX_SECONDS_PER_IMAGE


def test_a_decoder_error_names_no_python_object():
    err = undecodable(OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e40>"))
    assert err.detail == "cannot decode the bytes as an image: cannot identify image file the image"
