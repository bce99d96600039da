"""Image bytes -> an 8-bit RGB image, at a cost bounded by ImageLimits whatever the bytes claim.

Why a module of its own: an image well within the byte and pixel limits can still cost gigabytes. A
102-byte 1x4000 PNG becomes a 224x896,000 image in open_clip's shortest-side resize; a 20 MiB GIF of
comment blocks costs 700 MB in Pillow's header parser. A worker killed for memory is handed the same
event again and dies again. So, before any pixel is decoded:

- the container is walked (PNG chunks, JPEG segments and scans, GIF blocks, TIFF tags and strips) and
  refused past counts no real encoder writes, because Pillow handles each of those units in Python;
- the size in the header is checked: too many pixels is too_large; a short side under min_side or an
  aspect ratio over max_aspect is unsupported_image (there is nothing meaningful to classify);

then only the first frame is decoded, its EXIF orientation applied, every mode mapped to 8-bit RGB, and
an elongated image resized and centre-cropped here exactly as the model's preprocess would, from the
part it keeps only, so that preprocessing costs about input_size^2 pixels whatever the shape. JPEGs are
decoded at the smallest DCT scale that still covers the model's input (PIL's draft); other RGB images up
to 2:1 come out exactly as `Image.open(...).convert("RGB")` makes them.

What else bounds the header parsers, given the fetch's byte limit (20 MiB by default):
- PNG text chunks: a compressed one inflates to at most PngImagePlugin.MAX_TEXT_CHUNK (1 MiB) and all
  text together to MAX_TEXT_MEMORY (64 MiB); an iCCP profile to MAX_TEXT_CHUNK. Past these Pillow
  raises (not_an_image).
- JPEG segments hold at most 64 KiB each, so EXIF, ICC and XMP cost at most their own bytes.
- TIFF: only the first IFD is parsed (at most 65,535 tags) and tag data is read from the bytes in
  ImageFile.SAFEBLOCK pieces, never allocated from a claimed count.
- WebP and AVIF containers are parsed in C (libwebp, libavif), up to the first frame.
- BMP: RLE data is decoded in Python, ~0.2 s per MiB (4 s at the byte limit), into at most max_pixels.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from topics import events as ev
from workers.failures import RecordFault

# Pillow's raster formats that photos and web images come in. Its other plugins are more attack
# surface than use: EPS runs Ghostscript; PSD, ICO, PCX and the like parse headers in Python with
# counts that the container walks below do not bound. AVIF needs Pillow >= 11.2.
Image.init()
FORMATS = tuple(f for f in ("AVIF", "BMP", "GIF", "JPEG", "MPO", "PNG", "TIFF", "WEBP") if f in Image.OPEN)

# Container units (PNG chunks, JPEG segments and stray bytes before the first scan, GIF blocks before
# the first image, TIFF tags and strips or tiles) Pillow would handle one by one in Python. Encoders
# write tens to a few thousand (libpng splits IDAT every 8 KiB: 2,560 chunks for 20 MiB; one TIFF strip
# per row is a strip per row); at 65,536 Pillow spends ~0.5 s and ~15 MB at most.
MAX_CONTAINER_UNITS = 65_536
# Progressive JPEG decoding takes a pass over the whole image per scan: encoders write about 10, a
# crafted file can hold 100,000s of a few bytes each. Counted over the whole file (EXIF thumbnails and
# MPO frames have their own scans), so the bound is generous.
MAX_JPEG_SCANS = 100
# Images up to this aspect ratio are returned exactly as decoded (the model's resize makes at most
# 2 * input_size^2 pixels of them); longer ones come back already resized and centre-cropped.
REDUCE_ABOVE_ASPECT = 2.0

# Once, at import: the warnings filters are process-wide, and changing them per call
# (warnings.catch_warnings) is not thread-safe, while decoding runs in a thread pool. Pillow warns per
# image about corrupt EXIF, MPO and TIFF metadata (UserWarning), which would flood the worker's log;
# its DecompressionBombWarning is redundant with the max_pixels check made right after opening (its
# DecompressionBombError, at twice Image.MAX_IMAGE_PIXELS, still applies).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# What Pillow's decoders raise on hostile bytes, besides the DecodeErrors raised here (found by fuzzing
# the test corpus; the AVIF plugin raises RuntimeError).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError,
                   ZeroDivisionError, OverflowError, RuntimeError, struct.error)
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_NUMERIC_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_GIF_BLOCK = re.compile(rb"[!,;]")


class DecodeError(RecordFault):
    """Bytes that do not become a classifiable image; `reason` is a dead-letter reason code."""


@dataclass(frozen=True)
class ImageLimits:
    """What the worker decodes and classifies.

    max_pixels: width x height from the header; more is too_large, refused before decoding. Decoding
        holds up to ~16 bytes per pixel (WebP, float TIFF; 4 to 8 for JPEG, PNG, GIF), so one decode
        needs at most ~16 x max_pixels bytes (640 MB at the default), whatever the shape.
    max_aspect: long side / short side. Past 20:1 the square centre crop CLIP sees holds under 5% of
        the image, so a label would describe a sliver; panoramas (up to ~10:1) and web banners
        (728x90 is 8:1, 970x90 is 11:1) pass, pixel strips (1x4000) do not.
    min_side: the short side in pixels. An 8 px side is upscaled 28x for a 224 px model and carries
        barely a shape; below it there is nothing to see. 16 px favicons, 32 px thumbnails and the tiny
        model's 64 px frames pass.
    """

    max_pixels: int = 40_000_000
    max_aspect: float = 20.0
    min_side: int = 8

    def __post_init__(self):
        if self.max_pixels < 1 or self.min_side < 1 or self.max_aspect < 1:
            raise ValueError(f"invalid image limits: {self}")


def decode_image(data: bytes, limits: ImageLimits, input_size: int | None) -> Image.Image:
    """Bytes -> an 8-bit RGB image, the first frame of an animation or multi-page file, shown upright.

    Alpha is dropped (not composited), as `convert("RGB")` and open_clip's training data do; 16-bit
    samples keep their high byte; CMYK, YCbCr, LAB and palettes become RGB.

    Args:
        data: the encoded image (PNG, JPEG, GIF, WebP, TIFF, BMP, AVIF; see FORMATS).
        limits: the pixel count, aspect ratio and short side accepted.
        input_size: the side of the model's square input when its preprocess resizes the shortest
            side and centre-crops (cased_core.method.preprocess.TensorPreprocess.of(...).size). When set, a
            JPEG is decoded at 1/2, 1/4 or 1/8 scale where that still covers input_size, and an image
            longer than REDUCE_ABOVE_ASPECT:1 comes back as the input_size x input_size image the preprocess's
            Resize and CenterCrop would make of it (up to the rounding of PIL's filter weights: under
            0.1% of samples differ, by one or two levels of 255), which the preprocess then leaves as it
            is. None returns every shape whole.

    Raises:
        DecodeError: reason too_large (more pixels than limits.max_pixels, or the decoder ran out of
            memory), unsupported_image (outside max_aspect or min_side, or a container over
            MAX_CONTAINER_UNITS / MAX_JPEG_SCANS), not_an_image (anything that does not decode, a
            truncated file included). The detail is one line.
    """
    try:
        _check_container(data)
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        _check_size(image.size, limits)
        if input_size and image.format in ("JPEG", "MPO"):
            # DCT scaling: decode at 1/2, 1/4 or 1/8 of the size, the smallest that still covers the
            # model's input (a 640x480 frame becomes 80x60 for a 32 px model, 320x240 for 224 px),
            # at a fraction of the cost of decoding every pixel and then resizing them away.
            image.draft("RGB", (input_size, input_size))
        image.load()
        image = _to_rgb(_upright(image))
        return _resize_elongated(image, input_size) if input_size else image
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise DecodeError(ev.TOO_LARGE, _one_line(err)) from err
    except UnidentifiedImageError as err:
        raise DecodeError(ev.NOT_AN_IMAGE, f"not an image in a supported format ({', '.join(FORMATS)})") from err
    except MemoryError as err:
        raise DecodeError(ev.TOO_LARGE, "decoding needs more memory than is available") from err
    except _DECODER_ERRORS as err:
        raise undecodable(err) from err


def undecodable(err: BaseException) -> DecodeError:
    """The not_an_image error for bytes a decoder (PIL's, or a batched one) failed on, in one line."""
    return DecodeError(ev.NOT_AN_IMAGE, f"cannot decode the bytes as an image: {_one_line(err)}")


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG whose header passed every check, left encoded for a batched decoder (nvJPEG on a GPU)."""
    data: bytes
    orientation: int  # EXIF orientation, 1 when upright or unreadable


def jpeg_gray(data: bytes) -> np.ndarray:
    """A JPEG that `inspect_jpeg` passed, in grayscale at its smallest DCT scale (1/8 a side): what a
    change gate's thumbnail needs, for about 1/64 of a full decode's pixels."""
    image = Image.open(io.BytesIO(data), formats=("JPEG",))
    image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
    return np.asarray(image.convert("L"))


def inspect_jpeg(data: bytes, limits: ImageLimits) -> EncodedJpeg | None:
    """The checks `decode_image` makes before decoding, on a JPEG, without decoding it: an EncodedJpeg
    when a batched tensor decoder can take it (an 8-bit YCbCr or greyscale JPEG, one frame, up to
    REDUCE_ABOVE_ASPECT:1), None when it is not a JPEG or needs decode_image (CMYK, MPO, elongated).

    Raises:
        DecodeError: as decode_image, for what its header shows (size, aspect, container floods).
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        _check_container(data)
        image = Image.open(io.BytesIO(data), formats=("JPEG",))
        _check_size(image.size, limits)
        if image.format != "JPEG" or image.mode not in ("RGB", "L") or \
                max(image.size) > REDUCE_ABOVE_ASPECT * min(image.size):
            return None
        orientation = _orientation(image)
        return EncodedJpeg(data, orientation if orientation in _UPRIGHT else 1)
    except DecodeError:
        raise
    except (UnidentifiedImageError, *_DECODER_ERRORS):
        return None  # decode_image says what is wrong with it


_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


def _one_line(err: BaseException) -> str:
    # Decoders name the buffer they read ("<_io.BytesIO object at 0x7f...>"): noise to whoever reads it.
    text = _OBJECT_REPR.sub("the image", " ".join(str(err).split())) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise DecodeError(ev.TOO_LARGE, f"{width}x{height} pixels is over the limit of {limits.max_pixels}")
    short, long = min(width, height), max(width, height)
    if short < limits.min_side:
        raise DecodeError(ev.UNSUPPORTED_IMAGE, f"{width}x{height} pixels: a side under {limits.min_side} pixels "
                                                f"is too small to classify")
    if long > limits.max_aspect * short:
        raise DecodeError(ev.UNSUPPORTED_IMAGE, f"{width}x{height} pixels: an aspect ratio of {long / short:.4g}:1 "
                                                f"is over the limit of {limits.max_aspect:g}:1")


def _check_container(data: bytes) -> None:
    """Refuse containers whose header Pillow would parse for unbounded time or memory."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        units, what = _png_chunks(data), "chunks"
    elif data.startswith(b"\xff\xd8"):
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise DecodeError(ev.UNSUPPORTED_IMAGE, f"a JPEG with {scans} scans is over the limit of {MAX_JPEG_SCANS}")
        units, what = _jpeg_header_units(data), "segments or stray bytes before the first scan"
    elif data.startswith((b"GIF87a", b"GIF89a")):
        units, what = _gif_header_units(data), "blocks or stray bytes before the first image"
    elif data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        units, what = _tiff_units(data), "tags, strips or tiles in the first TIFF image"
    else:
        return
    if units > MAX_CONTAINER_UNITS:
        raise DecodeError(ev.UNSUPPORTED_IMAGE, f"more than {MAX_CONTAINER_UNITS} {what}")


def _png_chunks(data: bytes) -> int:
    pos, count = 8, 0
    while pos + 8 <= len(data) and count <= MAX_CONTAINER_UNITS:
        length, kind = struct.unpack_from(">I4s", data, pos)
        count += 1
        if kind == b"IEND":
            break
        pos += 12 + length
    return count


def _jpeg_header_units(data: bytes) -> int:
    """Segments, fill and stray bytes up to the first SOS: Pillow steps over stray bytes one at a time."""
    pos, count = 2, 0
    while pos + 4 <= len(data) and count <= MAX_CONTAINER_UNITS:
        marker = data[pos + 1]
        if data[pos] == 0xFF and marker not in (0x00, 0xFF):
            if marker == 0xDA:
                break
            standalone = 0xD0 <= marker <= 0xD9 or marker == 0x01
            pos += 2 + (0 if standalone else int.from_bytes(data[pos + 2:pos + 4], "big"))
            count += 1
        else:
            next_marker = data.find(b"\xff", pos + 1)
            next_marker = len(data) if next_marker < 0 else next_marker
            count += next_marker - pos
            pos = next_marker
    return count


def _gif_header_units(data: bytes) -> int:
    """Extensions, their sub-blocks and stray bytes up to the first image descriptor (all Pillow reads
    to open a GIF and decode its first frame)."""
    flags = data[10] if len(data) > 10 else 0
    pos, count = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0), 0
    while pos < len(data) and count <= MAX_CONTAINER_UNITS:
        if data[pos] == 0x21:  # extension: label, then sub-blocks up to an empty one
            pos += 2
            while pos < len(data) and data[pos] and count <= MAX_CONTAINER_UNITS:
                count += 1
                pos += 1 + data[pos]
            pos += 1
            count += 1
        elif data[pos] in (0x2C, 0x3B):  # image descriptor, trailer
            break
        else:
            found = _GIF_BLOCK.search(data, pos)
            skip = (found.start() if found else len(data)) - pos
            count += skip
            pos += skip
    return count


def _tiff_units(data: bytes) -> int:
    """Entries of the first IFD (BigTIFF's count is 64 bits) and its strips or tiles: Pillow parses
    each entry, and makes a tile of each strip or tile, in Python."""
    order = "<" if data.startswith(b"II") else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    entry_size, count_format = (20, "Q") if big else (12, "I")
    most = 0
    try:
        (ifd,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
        (most,) = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)
        first = ifd + (8 if big else 2)
        for at in range(first, first + entry_size * min(most, MAX_CONTAINER_UNITS + 1), entry_size):
            if struct.unpack_from(order + "H", data, at)[0] in (273, 279, 324, 325):  # strip/tile offsets, sizes
                most = max(most, struct.unpack_from(order + count_format, data, at + 4)[0])
    except struct.error:  # cut short: Pillow reads what is there, and says so
        pass
    return most


def _orientation(image: Image.Image):
    """The EXIF orientation tag as stored (any type), None when absent or unreadable: the pixels are
    still good, and are labelled as stored."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation)
    except _DECODER_ERRORS:
        return None


def _upright(image: Image.Image) -> Image.Image:
    orientation = _orientation(image)
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _resize_elongated(image: Image.Image, size: int) -> Image.Image:
    """An RGB image longer than REDUCE_ABOVE_ASPECT:1 -> the size x size image that torchvision's
    Resize(size) (shortest side, bicubic) then CenterCrop(size) would make of it, computed by PIL from
    the kept part only (resize with a source box samples the same points with the same filter), so the
    model's preprocess then leaves it as it is."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= REDUCE_ABOVE_ASPECT * short:
        return image
    resized = int(size * long / short)  # torchvision's arithmetic, to the bit
    step = long / resized
    first = int(round((resized - size) / 2.0))
    kept = (first * step, (first + size) * step)
    box = (kept[0], 0, kept[1], height) if width > height else (0, kept[0], width, kept[1])
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _NUMERIC_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "LAB":  # Pillow's convert() copies LAB channels as if they were RGB
        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                              "LAB", "RGB")
        return ImageCms.applyTransform(image, lab_to_srgb)
    if image.mode == "La":  # premultiplied: Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode == "P":
        # convert("RGB") drops palette transparency anyway; given per entry (bytes) it also warns.
        image.info.pop("transparency", None)
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """One channel of 16-bit, 32-bit integer or float samples -> 8 bits (Pillow's convert() clips
    them at 255, turning a 16-bit image white). 16-bit samples keep their high byte, as Pillow does for
    16-bit RGB PNGs (65535 -> 255, 32768 -> 128); 32-bit integers within 0..65535 are 16-bit data;
    floats within 0..1 scale by 255; anything else is stretched from its own range."""
    if values.dtype.kind == "u":
        return (values >> 8).astype(np.uint8)
    if values.dtype.kind == "f":
        values = np.where(np.isfinite(values), values, 0)
    low, high = values.min(), values.max()
    if values.dtype.kind == "i" and low >= 0 and high <= 0xFFFF:
        return (values >> 8).astype(np.uint8)
    if values.dtype.kind == "f" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    scale = 255.0 / (float(high) - float(low) or 1.0)
    return np.rint((values.astype(np.float32) - np.float32(low)) * np.float32(scale)).clip(0, 255).astype(np.uint8)
