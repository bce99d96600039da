"""A corpus of hostile and unusual images, built in code (no binary fixtures), for the decoder's tests
and for worker-level memory tests: extreme shapes, lying and oversized headers, multi-frame files, every
odd pixel mode, broken bytes."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from topics import events as ev

RED, BLUE = (255, 0, 0), (0, 0, 255)
# Multi-frame files whose first frame is RED and later frames BLUE.
FIRST_FRAME_RED = ("gif_animated", "apng_animated", "tiff_multipage", "webp_animated")


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows: bytes, bit_depth: int = 8, before_idat: bytes = b"") -> bytes:
    """An RGB PNG written by hand, for what Pillow will not write: 16-bit RGB, a lying header, odd
    chunks. `rows` are the unfiltered scanlines, each without its filter byte."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    stride = len(rows) // height if height and len(rows) >= height else 0
    raw = b"".join(b"\0" + rows[y * stride:(y + 1) * stride] for y in range(height)) if stride else b"\0"
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + before_idat + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _small_png(before_idat: bytes = b"") -> bytes:
    return png(16, 16, bytes([90, 140, 200]) * 256, before_idat=before_idat)


def _frames(fmt: str, **options) -> bytes:
    red, blue = Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)
    return _save(red, fmt, save_all=True, append_images=[blue, blue], **options)


def _gradient(width: int, height: int) -> Image.Image:
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    pixels[..., 2] = 128
    return Image.fromarray(pixels)


def _jpeg_with_segments(segments: bytes) -> bytes:
    jpeg = _save(Image.new("RGB", (16, 16), (90, 140, 200)), "JPEG")
    return jpeg[:2] + segments + jpeg[2:]


def _gif_with_comments(blocks: int) -> bytes:
    gif = _save(Image.new("P", (16, 16)), "GIF")
    palette_end = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
    return gif[:palette_end] + b"\x21\xfe" + b"\x01c" * blocks + b"\x00" + gif[palette_end:]


def _tiff_with_strips(strips: int) -> bytes:
    """An 8x8 grey TIFF whose every strip is the same one row (classic little-endian TIFF)."""
    offsets_at, sizes_at = 16, 16 + 4 * strips
    tags = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, strips, offsets_at), (277, 3, 1, 1), (278, 3, 1, 1), (279, 4, strips, sizes_at)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + b"\0" * 4
    return (b"II*\0" + struct.pack("<I", sizes_at + 4 * strips) + b"\x80" * 8 + struct.pack("<I", 8) * strips
            + struct.pack("<I", 8) * strips + ifd)


def _jpeg_with_corrupt_exif() -> bytes:
    """Orientation 6, and a description tag whose data lies past the end (Pillow warns, then skips it)."""
    ifd = struct.pack("<H", 2) + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x010E, 2, 5000, 26)
    exif = b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    return _jpeg_with_segments(b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)


def hostile_images() -> dict[str, tuple[bytes, str | None]]:
    """name -> (encoded bytes, the dead-letter reason expected with the default ImageLimits, or None
    when the image must be labelled). Every file is at most a few MB; decoding one needs at most
    ~60 MB (jpeg_5000x4000, 20 M pixels; png_ztxt_60mib keeps 60 MiB of text)."""
    gray16 = Image.fromarray(np.full((32, 32), 32768, np.uint16))
    palette = Image.new("P", (32, 32))
    palette.putpalette([200, 30, 30, 30, 200, 30])
    palette.paste(1, (0, 0, 16, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    left_red = Image.new("RGB", (64, 32), BLUE)
    left_red.paste(RED, (0, 0, 32, 32))
    text_mib = zlib.compress(b"x" * (2**20 - 64), 9)
    png_ok = _small_png()
    png_full = _save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "PNG")
    jpeg_ok = _save(_gradient(64, 48), "JPEG", quality=90)
    return {
        # Shapes: within max_pixels, yet too thin or too elongated to classify.
        "png_1x4000": (_save(Image.new("L", (1, 4000), 128), "PNG"), ev.UNSUPPORTED_IMAGE),
        "png_1x1000000": (_save(Image.new("L", (1, 1_000_000), 128), "PNG"), ev.UNSUPPORTED_IMAGE),
        "png_4000x1": (_save(Image.new("L", (4000, 1), 128), "PNG"), ev.UNSUPPORTED_IMAGE),
        "png_100000x3": (_save(Image.new("L", (100_000, 3), 128), "PNG"), ev.UNSUPPORTED_IMAGE),
        "png_210x10": (_save(_gradient(210, 10), "PNG"), ev.UNSUPPORTED_IMAGE),  # 21:1
        "png_160x8": (_save(_gradient(160, 8), "PNG"), None),  # 20:1 and an 8 px side: the limits
        "jpeg_12000x600": (_save(_gradient(12_000, 600), "JPEG", quality=50), None),  # 20:1, 7.2 M pixels
        "jpeg_5000x4000": (_save(_gradient(5000, 4000), "JPEG", quality=50), None),  # 20 M pixels
        # Headers claiming more pixels than the limit (PIL's own bomb error, and ours).
        "png_header_100000x100000": (png(100_000, 100_000, b""), ev.TOO_LARGE),
        "png_header_10000x10000": (png(10_000, 10_000, b""), ev.TOO_LARGE),  # PIL warns about a bomb
        "png_header_7000x6000": (png(7000, 6000, b""), ev.TOO_LARGE),
        # Huge and numerous headers.
        "png_text_4mib": (_small_png(_chunk(b"tEXt", b"Comment\0" + b"x" * 4 * 2**20)), None),
        "png_ztxt_60mib": (_small_png(b"".join(_chunk(b"zTXt", b"k%02d\0\0" % i + text_mib) for i in range(60))), None),
        "png_ztxt_bomb": (_small_png(_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"x" * 16 * 2**20, 9))), ev.NOT_AN_IMAGE),
        "png_iccp_bomb": (_small_png(_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"x" * 8 * 2**20, 9))),
                          ev.NOT_AN_IMAGE),
        "png_chunk_flood": (_small_png(_chunk(b"abCd", b"") * 70_000), ev.UNSUPPORTED_IMAGE),
        "jpeg_com_flood": (_jpeg_with_segments(b"\xff\xfe\x00\x02" * 70_000), ev.UNSUPPORTED_IMAGE),
        "jpeg_stray_bytes": (_jpeg_with_segments(b"\x00" * 100_000), ev.UNSUPPORTED_IMAGE),
        "jpeg_scan_flood": (_jpeg_with_segments(b"\xff\xfe\x01\x92" + b"\xff\xda" * 200), ev.UNSUPPORTED_IMAGE),
        "gif_comment_flood": (_gif_with_comments(70_000), ev.UNSUPPORTED_IMAGE),
        "tiff_strip_flood": (_tiff_with_strips(70_000), ev.UNSUPPORTED_IMAGE),
        "tiff_8_strips": (_tiff_with_strips(8), None),
        # Multi-frame: the first frame is classified.
        "gif_animated": (_frames("GIF"), None),
        "apng_animated": (_frames("PNG"), None),
        "tiff_multipage": (_frames("TIFF"), None),
        "webp_animated": (_frames("WEBP", lossless=True), None),
        # Pixel modes.
        "png_gray16": (_save(gray16, "PNG"), None),
        "png_rgb16": (png(32, 32, struct.pack(">3H", 65535, 32768, 0) * 32 * 32, bit_depth=16), None),
        "png_palette_trns": (_save(palette, "PNG", transparency=bytes([0, 128])), None),
        "png_la": (_save(Image.new("LA", (32, 32), (100, 50)), "PNG"), None),
        "png_rgba": (_save(Image.new("RGBA", (32, 32), (10, 200, 30, 0)), "PNG"), None),
        "jpeg_cmyk": (_save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), None),
        "tiff_int32": (_save(Image.new("I", (32, 32), 40_000), "TIFF"), None),
        "tiff_float32": (_save(Image.new("F", (32, 32), 0.5), "TIFF"), None),
        "tiff_lab": (_save(Image.new("LAB", (32, 32), (128, 128, 128)), "TIFF"), None),
        "tiff_ycbcr": (_save(Image.new("YCbCr", (32, 32), (128, 128, 128)), "TIFF"), None),
        "bmp_1bit": (_save(Image.new("1", (32, 32), 1), "BMP"), None),
        "jpeg_exif_rotated": (_save(left_red, "JPEG", exif=exif), None),
        "jpeg_corrupt_exif": (_jpeg_with_corrupt_exif(), None),  # PIL warns about it
        # Broken or not images at all.
        "png_truncated": (png_full[:len(png_full) // 2], ev.NOT_AN_IMAGE),
        "jpeg_truncated": (jpeg_ok[:len(jpeg_ok) // 2], ev.NOT_AN_IMAGE),
        "png_header_only": (png_ok[:33], ev.NOT_AN_IMAGE),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n", ev.NOT_AN_IMAGE),
        "garbage": (bytes(range(256)) * 16, ev.NOT_AN_IMAGE),
        "empty": (b"", ev.NOT_AN_IMAGE),
    }
