"""Tests for image decoding in `ns_data/images.py`."""
from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, JpegImagePlugin

from ns_data import images as images_module
from ns_data.images import (DECODERS, ImageDecoder, ImageSpec, PillowDecoder, decode_and_resize,
                            image_dimensions, make_decoder, truncation)
from tests.data_files import png


def jpeg(pixels: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(tf.constant(pixels, dtype=tf.uint8), quality=100).numpy()


def random_pixels(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# ImageSpec
# --------------------------------------------------------------------------------------------

def test_image_spec_shape():
    assert ImageSpec(28, 32, 1).shape == (28, 32, 1)


@pytest.mark.parametrize("height, width, channels, match", [
    (0, 8, 3, "size must be positive"),
    (8, -1, 3, "size must be positive"),
    (8, 8, 2, "channels must be 1 or 3"),
    (8, 8, 4, "channels must be 1 or 3"),
])
def test_image_spec_rejects_bad_geometry(height, width, channels, match):
    with pytest.raises(ValueError, match=match):
        ImageSpec(height, width, channels)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def test_png_same_size_is_pixel_exact():
    pixels = random_pixels((5, 7, 3))
    decoded = ImageDecoder(ImageSpec(5, 7, 3))(png(pixels))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, pixels)


def test_png_grayscale_same_size_is_pixel_exact():
    pixels = random_pixels((6, 4, 1), seed=1)
    np.testing.assert_array_equal(ImageDecoder(ImageSpec(6, 4, 1))(png(pixels)), pixels)


@pytest.mark.parametrize("encode", [png, jpeg], ids=["png", "jpeg"])
@pytest.mark.parametrize("size", [(4, 6), (20, 13)], ids=["down", "up"])
def test_resize_constant_image(encode, size):
    pixels = np.full((10, 10, 3), (200, 100, 30), dtype=np.uint8)
    decoded = ImageDecoder(ImageSpec(*size, 3))(encode(pixels))
    assert decoded.shape == (*size, 3)
    assert decoded.dtype == np.uint8
    expected = np.broadcast_to(np.uint8([200, 100, 30]), decoded.shape)
    np.testing.assert_allclose(decoded.astype(int), expected.astype(int), atol=2)


def test_resize_keeps_left_right_halves():
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, 8:] = 255
    decoded = ImageDecoder(ImageSpec(8, 8, 3))(png(pixels)).astype(int)
    # Away from the edge, the 2x downscale sees only one side.
    np.testing.assert_array_equal(decoded[:, :3], 0)
    np.testing.assert_array_equal(decoded[:, 5:], 255)


def test_jpeg_same_size_is_close():
    pixels = np.full((8, 8, 3), (10, 120, 240), dtype=np.uint8)
    decoded = ImageDecoder(ImageSpec(8, 8, 3))(jpeg(pixels))
    assert decoded.shape == (8, 8, 3)
    np.testing.assert_allclose(decoded.astype(int), pixels.astype(int), atol=3)


def test_grayscale_png_to_three_channels_repeats_the_gray_value():
    gray = random_pixels((5, 5, 1), seed=2)
    decoded = ImageDecoder(ImageSpec(5, 5, 3))(png(gray))
    assert decoded.shape == (5, 5, 3)
    np.testing.assert_array_equal(decoded, np.repeat(gray, 3, axis=2))


@pytest.mark.parametrize("encode", [png, jpeg], ids=["png", "jpeg"])
@pytest.mark.parametrize("rgb", [(90, 90, 90), (255, 0, 0), (0, 255, 0), (20, 60, 250)])
def test_rgb_to_one_channel_is_luma(encode, rgb):
    pixels = np.full((8, 8, 3), rgb, dtype=np.uint8)
    decoded = ImageDecoder(ImageSpec(8, 8, 1))(encode(pixels))
    assert decoded.shape == (8, 8, 1)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # ITU-R BT.601
    np.testing.assert_allclose(decoded.astype(float), luma, atol=3)


@pytest.mark.parametrize("data", [
    b"definitely not an image",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,  # PNG signature, garbage chunks
    b"\xff\xd8\xff\xe0" + b"\x00" * 32,  # JPEG SOI/APP0 marker, garbage after
], ids=["garbage", "bad-png", "bad-jpeg"])
def test_corrupt_bytes_raise(data):
    with pytest.raises(tf.errors.InvalidArgumentError):
        ImageDecoder(ImageSpec(4, 4, 3))(data)


def test_empty_bytes_raise():
    with pytest.raises(ValueError, match="empty image bytes"):
        ImageDecoder(ImageSpec(4, 4, 3))(b"")


def test_decoder_survives_a_failure():
    decoder = ImageDecoder(ImageSpec(3, 3, 3))
    with pytest.raises(tf.errors.InvalidArgumentError):
        decoder(b"junk")
    pixels = random_pixels((3, 3, 3), seed=3)
    np.testing.assert_array_equal(decoder(png(pixels)), pixels)


def test_decoder_pickles_after_use():
    spec = ImageSpec(4, 5, 3)
    pixels = random_pixels((4, 5, 3), seed=4)
    decoder = ImageDecoder(spec)
    np.testing.assert_array_equal(decoder(png(pixels)), pixels)  # builds the tf.function
    clone = pickle.loads(pickle.dumps(decoder))
    assert clone.spec == spec
    np.testing.assert_array_equal(clone(png(pixels)), pixels)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decode_batch_gives_each_image_what_decoding_it_alone_gives(name):
    """Pixels (a resize and a JPEG included) and errors equal one call per image, also when a
    bad image makes the batched TensorFlow call fail and it falls back to single images."""
    spec = ImageSpec(8, 6, 3)
    decoder = make_decoder(name, spec, max_pixels=5_000)
    good = [png(random_pixels((8, 6, 3), seed=5)), jpeg(smooth_pixels(30, 40, seed=6)),
            png(random_pixels((16, 12, 3), seed=7))]
    for batch in (good, [good[0], b"junk", b"", good[1], png(np.zeros((100, 80, 3), np.uint8)),
                         good[2]]):
        alone, alone_errors = [], {}
        for i, data in enumerate(batch):
            try:
                alone.append(decoder(data))
            except Exception as e:  # noqa: BLE001
                alone_errors[i] = f"{type(e).__name__}: {e}"
        pixels, errors = decoder.decode_batch(batch)
        assert pixels.dtype == np.uint8 and pixels.shape == (len(alone), *spec.shape)
        np.testing.assert_array_equal(pixels, np.stack(alone))
        assert {i: f"{type(e).__name__}: {e}" for i, e in errors.items()} == alone_errors
    assert sorted(alone_errors) == [1, 2, 4]
    pixels, errors = decoder.decode_batch([b""])
    assert pixels.shape == (0, *spec.shape) and list(errors) == [0]


def test_image_dimensions_from_headers_without_decoding():
    pixels = np.zeros((7, 11, 3), dtype=np.uint8)
    assert image_dimensions(tf.io.encode_png(pixels).numpy()) == (7, 11)
    assert image_dimensions(tf.io.encode_jpeg(pixels).numpy()) == (7, 11)
    assert image_dimensions(pil_bytes(np.zeros((9, 4, 3), np.uint8), "GIF")) == (9, 4)
    assert image_dimensions(pil_bytes(np.zeros((3, 8, 3), np.uint8), "WEBP")) == (3, 8)
    assert image_dimensions(tf.io.encode_png(pixels).numpy()[:30]) is None  # a cut IHDR
    assert image_dimensions(b"GIF89a....") is None
    assert image_dimensions(b"\xff\xd8 not really a jpeg") is None


def test_decompression_bomb_is_refused_before_decoding():
    # A PNG declaring 40000x40000 pixels (1.6e9) whose data is one small deflate stream.
    bomb = (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""))
    decoder = ImageDecoder(ImageSpec(4, 4, 1))
    with pytest.raises(ValueError, match="40000x40000, over the limit of 89478485 pixels"):
        decoder(bomb)
    small = tf.io.encode_png(np.zeros((5, 5, 1), dtype=np.uint8)).numpy()
    assert decoder(small).shape == (4, 4, 1)
    with pytest.raises(ValueError, match="over the limit of 24 pixels"):
        ImageDecoder(ImageSpec(4, 4, 1), max_pixels=24)(small)


# --------------------------------------------------------------------------------------------
# Truncated and corrupt files, named alike by both decoders
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_a_png_cut_anywhere_is_named_truncated_not_huge(decoder):
    data = pil_bytes(smooth_pixels(40, 50), "PNG")
    size = len(data)
    assert data[33:41] == struct.pack(">I", size - 57) + b"IDAT"  # one IDAT chunk, then IEND
    decode = make_decoder(decoder, ImageSpec(40, 50, 3))
    assert decode(data).shape == (40, 50, 3)
    want = {
        1: "truncated PNG: 1 of the header's 33 bytes",
        8: "truncated PNG: 8 of the header's 33 bytes",  # the signature, no IHDR
        20: "truncated PNG: 20 of the header's 33 bytes",  # cut inside the size
        32: "truncated PNG: 32 of the header's 33 bytes",
        33: "truncated PNG: the file ends at byte 33, after its IHDR chunk, without the IEND "
            "chunk that ends a PNG",
        57: f"truncated PNG: the file ends at byte 57, inside its IDAT chunk (bytes 33 to "
            f"{size - 13})",
        size // 2: f"truncated PNG: the file ends at byte {size // 2}, inside its IDAT chunk "
                   f"(bytes 33 to {size - 13})",
        size - 12: f"truncated PNG: the file ends at byte {size - 12}, after its IDAT chunk, "
                   "without the IEND chunk that ends a PNG",
        size - 1: f"truncated PNG: the file ends at byte {size - 1}, inside its IEND chunk "
                  f"(bytes {size - 12} to {size - 1})",
    }
    for cut, message in want.items():
        with pytest.raises(ValueError) as error:
            decode(data[:cut])
        assert str(error.value) == message
        # Named before the header is trusted: with a limit the image is over, still truncated.
        with pytest.raises(ValueError, match="^truncated PNG: "):
            make_decoder(decoder, ImageSpec(40, 50, 3), max_pixels=100)(data[:cut])


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("encode", [lambda p: pil_bytes(p, "JPEG"), jpeg],
                         ids=["pillow-jpeg", "tf-jpeg"])
def test_a_jpeg_cut_anywhere_is_named_truncated(decoder, encode):
    data = encode(smooth_pixels(40, 50))
    size = len(data)
    scan = data.index(b"\xff\xda")
    image_data = scan + 2 + int.from_bytes(data[scan + 2:scan + 4], "big")
    decode = make_decoder(decoder, ImageSpec(40, 50, 3))
    assert decode(data).shape == (40, 50, 3)
    for cut in (1, 2, 4, 20, scan, image_data - 1):
        with pytest.raises(ValueError) as error:
            decode(data[:cut])
        assert str(error.value) == (f"truncated JPEG: the file ends at byte {cut}, in its "
                                    "headers, before the image data")
    for cut in (image_data, (image_data + size) // 2, size - 2, size - 1):
        with pytest.raises(ValueError) as error:
            decode(data[:cut])
        assert str(error.value) == (f"truncated JPEG: the file ends at byte {cut}, in its image "
                                    f"data (from byte {image_data}), without the end marker")


def test_whole_and_corrupt_files_are_not_called_truncated():
    png_data = pil_bytes(smooth_pixels(40, 50), "PNG")
    jpeg_data = jpeg(smooth_pixels(40, 50))
    assert truncation(png_data) is None and truncation(jpeg_data) is None
    assert truncation(png_data + b"trailing") is None  # bytes after IEND are ignored
    assert truncation(jpeg_data + b"trailing") is None
    for other in ("GIF", "BMP", "WEBP"):
        assert truncation(pil_bytes(smooth_pixels(40, 50), other)[:30]) is None
    assert truncation(b"definitely not an image") is None
    # A corrupted length that runs past a whole file: corrupt, not cut.
    damaged = bytearray(png_data)
    damaged[33] = 0x7F
    assert truncation(bytes(damaged)) is None
    damaged = bytearray(jpeg_data)
    damaged[4:6] = b"\xff\xf0"  # the APP0 segment's length
    assert truncation(bytes(damaged)) is None
    # Garbage where a chunk or a marker belongs: corrupt, for the decoder to name.
    assert truncation(png_data[:33] + b"\x00" * 12) is None
    assert truncation(b"\x89PNG\r\n\x1a\n-not-really") is None  # no IHDR, though short
    assert truncation(b"\xff\xd8\xff\xe0" + b"\x00" * 32) is None


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_a_png_whose_size_fails_its_checksum_is_refused_not_huge(decoder):
    data = bytearray(pil_bytes(smooth_pixels(40, 50), "PNG"))
    data[17] ^= 0x40  # the width's second byte: 50 becomes 4194354
    message = r"^corrupt PNG: its IHDR chunk \(the image size\) fails its checksum$"
    with pytest.raises(ValueError, match=message):
        make_decoder(decoder, ImageSpec(40, 50, 3))(bytes(data))
    with pytest.raises(ValueError, match=message):
        image_dimensions(bytes(data))


# --------------------------------------------------------------------------------------------
# PillowDecoder: the Beam job's default, checked against decode_and_resize
# --------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pil_bytes(pixels: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.squeeze() if pixels.shape[-1] == 1 else pixels, mode).save(
        out, fmt, **options)
    return out.getvalue()


def smooth_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: random colour blobs, blurred (JPEG and resizing behave on it)."""
    coarse = random_pixels((height // 25 + 2, width // 25 + 2, 3), seed)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def tf_reference(encoded: bytes, spec: ImageSpec) -> np.ndarray:
    return decode_and_resize(tf.constant(encoded), spec).numpy()


def max_and_mean_diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    diff = np.abs(a.astype(int) - b.astype(int))
    return int(diff.max()), float(diff.mean())


@pytest.mark.parametrize("fmt, shape", [
    ("PNG", (9, 13, 3)), ("PNG", (9, 13, 1)), ("BMP", (9, 13, 3)), ("GIF", (9, 13, 3)),
], ids=["png-rgb", "png-gray", "bmp", "gif"])
def test_pillow_is_pixel_exact_at_the_target_size(fmt, shape):
    pixels = random_pixels(shape, seed=5)
    if fmt == "GIF":  # a palette of 256 colours holds every gray exactly
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    encoded = pil_bytes(pixels, fmt)
    spec = ImageSpec(*shape)
    decoded = PillowDecoder(spec)(encoded)
    assert decoded.dtype == np.uint8 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, tf_reference(encoded, spec))
    np.testing.assert_array_equal(decoded, pixels)


class CountingOpenCV:
    """ns_data.images.cv2 stand-in: OpenCV itself, counting the images it decodes."""

    def __init__(self):
        self.decoded = 0

    def __getattr__(self, name):
        return getattr(cv2, name)

    def imdecode(self, *args):
        self.decoded += 1
        return cv2.imdecode(*args)


def outcome(decode, encoded: bytes):
    """The pixels, or the error as "Type: message" (a dead letter's words)."""
    try:
        return decode(encoded)
    except Exception as e:  # noqa: BLE001 - compared by the caller
        return f"{type(e).__name__}: {e}"


def decode_both_ways(spec: ImageSpec, encoded: bytes, monkeypatch):
    """(PillowDecoder's outcome, how many images OpenCV decoded for it), after checking that
    Pillow alone gives the same outcome: the same pixels, or the same error word for word."""
    counting = CountingOpenCV()
    monkeypatch.setattr(images_module, "cv2", counting)
    fast = outcome(PillowDecoder(spec), encoded)
    monkeypatch.setattr(images_module, "cv2", None)
    pillow = outcome(PillowDecoder(spec), encoded)
    if isinstance(pillow, str):
        assert fast == pillow
    else:
        np.testing.assert_array_equal(fast, pillow)
    return fast, counting.decoded


@pytest.mark.parametrize("shape, spec, options", [
    ((9, 13, 1), ImageSpec(9, 13, 1), {}),
    ((9, 13, 3), ImageSpec(9, 13, 3), {}),
    ((40, 30, 1), ImageSpec(20, 15, 1), {}),  # decoded by OpenCV, resized by Pillow
    ((40, 30, 3), ImageSpec(17, 11, 3), {}),
    ((9, 13, 1), ImageSpec(9, 13, 1), {"transparency": 7}),  # a tRNS chunk: pixels kept
    ((9, 13, 3), ImageSpec(9, 13, 3), {"transparency": (1, 2, 3)}),
], ids=["gray", "rgb", "gray-resized", "rgb-resized", "gray-trns", "rgb-trns"])
def test_pillow_plain_pngs_are_decoded_by_opencv_to_pillows_pixels(shape, spec, options,
                                                                   monkeypatch):
    pixels = random_pixels(shape, seed=21)
    fast, decoded = decode_both_ways(spec, pil_bytes(pixels, "PNG", **options), monkeypatch)
    assert decoded == 1 and fast.shape == spec.shape and fast.dtype == np.uint8
    if spec.shape == shape:
        np.testing.assert_array_equal(fast, pixels)


def test_opencv_is_imported_when_a_png_is_first_decoded_not_with_the_module():
    code = ("import sys; from ns_data import images; assert 'cv2' not in sys.modules; "
            "images.make_decoder('pillow', images.ImageSpec(2, 2, 1))(bytes.fromhex("
            f"'{png(np.zeros((2, 2, 1), np.uint8)).hex()}')); print('cv2' in sys.modules)")
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["True"]


def plain_png_with(chunk: bytes, channels: int = 1) -> bytes:
    """A 13x9 8-bit PNG (gray or RGB) with `chunk` between its header and its image data."""
    rows = random_pixels((9, 13 * channels), seed=28)
    header = struct.pack(">IIBBBBB", 13, 9, 8, {1: 0, 3: 2}[channels], 0, 0, 0)
    data = zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + chunk
            + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("chunk, channels, by_opencv", [
    (b"", 1, True),
    (png_chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)), 1, True),
    (png_chunk(b"gAMA", struct.pack(">I", 45455)) + png_chunk(b"sRGB", b"\0"), 3, True),
    (png_chunk(b"tRNS", struct.pack(">HHH", 1, 2, 3)), 3, True),
    (png_chunk(b"tEXt", b"Software\0test"), 1, True),
    # Checksums right, content malformed: libpng skips the chunk, Pillow refuses the file.
    (png_chunk(b"sRGB", b""), 1, False),
    (png_chunk(b"pHYs", b"\0\0"), 1, False),
    (png_chunk(b"gAMA", b"\0\0"), 3, False),
    (png_chunk(b"tRNS", b"\0"), 1, False),
    (png_chunk(b"iCCP", b"icc\0\1" + b"junk"), 3, False),
    (png_chunk(b"zTXt", b"k\0\1" + b"junk"), 1, False),
    (png_chunk(b"acTL", struct.pack(">II", 1, 0))
     + png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 5, 5, 0, 0, 1, 1, 0, 0)), 1, False),
    (png_chunk(b"tEXt", b"k\0" + b"x" * (1 << 20)), 1, False),  # over 1 MB of text: kept out
], ids=["none", "phys", "gama-srgb", "trns", "text", "short-srgb", "short-phys", "short-gama",
        "short-trns", "iccp", "ztxt", "apng", "big-text"])
def test_only_chunks_both_libraries_read_alike_take_the_opencv_way(chunk, channels, by_opencv,
                                                                   monkeypatch):
    spec = ImageSpec(9, 13, channels)
    fast, decoded = decode_both_ways(spec, plain_png_with(chunk, channels), monkeypatch)
    assert decoded == by_opencv
    assert not (by_opencv and isinstance(fast, str))  # the plain ones decode


def test_a_png_without_image_data_goes_the_pillow_way(monkeypatch):
    header = struct.pack(">IIBBBBB", 13, 9, 8, 0, 0, 0, 0)
    encoded = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    fast, decoded = decode_both_ways(ImageSpec(9, 13, 1), encoded, monkeypatch)
    assert isinstance(fast, str) and fast.split(":")[0] in ("OSError", "SyntaxError", "ValueError")
    assert decoded == 0  # OpenCV would print a warning about it first


def test_pillow_takes_over_when_opencv_raises(monkeypatch):
    class FailingOpenCV(CountingOpenCV):
        def imdecode(self, *args):
            self.decoded += 1
            raise cv2.error("imdecode failed")

    failing = FailingOpenCV()
    monkeypatch.setattr(images_module, "cv2", failing)
    pixels = random_pixels((9, 13, 1), seed=27)
    np.testing.assert_array_equal(PillowDecoder(ImageSpec(9, 13, 1))(png(pixels)), pixels)
    assert failing.decoded == 1


def test_pillow_other_pngs_go_the_pillow_way(monkeypatch):
    gray, rgb = random_pixels((9, 13, 1), seed=22), random_pixels((9, 13, 3), seed=23)
    wide = (random_pixels((9, 13), seed=24).astype(np.uint16) << 8) | 0x5A
    cases = [
        (ImageSpec(9, 13, 3), pil_bytes(gray, "PNG")),  # gray for an RGB teacher
        (ImageSpec(9, 13, 1), pil_bytes(rgb, "PNG")),  # RGB for a gray teacher
        (ImageSpec(9, 13, 3), pil_bytes(random_pixels((9, 13, 4), seed=25), "PNG")),  # RGBA
        (ImageSpec(9, 13, 3), pil_bytes(np.asarray(Image.fromarray(rgb).convert("P")), "PNG",
                                        mode="P")),  # palette
        (ImageSpec(9, 13, 1), pil_bytes(wide, "PNG", mode="I;16")),  # 16-bit
    ]
    for spec, encoded in cases:
        fast, decoded = decode_both_ways(spec, encoded, monkeypatch)
        assert decoded == 0 and fast.shape == spec.shape


def test_pillow_damaged_png_is_named_by_pillow_not_decoded_by_opencv(monkeypatch, capfd):
    spec = ImageSpec(28, 28, 1)
    whole = pil_bytes(random_pixels((28, 28, 1), seed=26), "PNG")
    idat = whole.index(b"IDAT")
    damaged = bytearray(whole)
    damaged[idat + 8] ^= 0xFF  # a byte of the image data: the IDAT checksum fails
    # The same damage with the checksum made right again: only decoding finds it.
    length = int.from_bytes(whole[idat - 4:idat], "big")
    recrc = bytearray(damaged)
    recrc[idat + 4 + length:idat + 8 + length] = struct.pack(
        ">I", zlib.crc32(bytes(damaged[idat:idat + 4 + length])))
    for encoded, opencv_tries in ((bytes(damaged), 0), (bytes(recrc), 1)):
        capfd.readouterr()
        fast, decoded = decode_both_ways(spec, encoded, monkeypatch)  # the same dead letter
        assert fast.startswith("OSError: ") and decoded == opencv_tries
        if not opencv_tries:  # libpng prints what it finds; a checksum's damage never gets there
            assert "libpng" not in capfd.readouterr().err


def test_pillow_rgba_png_drops_alpha_like_tensorflow():
    pixels = random_pixels((6, 7, 4), seed=6)
    encoded = pil_bytes(pixels, "PNG")
    decoded = PillowDecoder(ImageSpec(6, 7, 3))(encoded)
    np.testing.assert_array_equal(decoded, pixels[..., :3])
    np.testing.assert_array_equal(decoded, tf_reference(encoded, ImageSpec(6, 7, 3)))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pillow_grayscale_conversion_is_luma_like_tensorflow(fmt):
    encoded = pil_bytes(smooth_pixels(40, 30, seed=7), fmt, **({"quality": 95} if fmt == "JPEG"
                                                                   else {}))
    spec = ImageSpec(40, 30, 1)
    worst, mean = max_and_mean_diff(PillowDecoder(spec)(encoded), tf_reference(encoded, spec))
    assert worst <= (1 if fmt == "PNG" else 6), worst
    assert mean < 1.5


def test_pillow_16_bit_png_keeps_the_high_byte_like_tensorflow():
    wide = np.random.default_rng(8).integers(0, 65536, size=(5, 6), dtype=np.uint16)
    encoded = pil_bytes(wide[..., None], "PNG")
    decoded = PillowDecoder(ImageSpec(5, 6, 1))(encoded)
    np.testing.assert_array_equal(decoded[..., 0], (wide >> 8).astype(np.uint8))
    np.testing.assert_array_equal(decoded, tf_reference(encoded, ImageSpec(5, 6, 1)))


@pytest.mark.parametrize("target", [(24, 32), (150, 200)], ids=["down", "up"])
def test_pillow_resize_matches_tensorflow_within_one_level(target):
    encoded = pil_bytes(smooth_pixels(75, 100, seed=9), "PNG")
    spec = ImageSpec(*target, 3)
    worst, mean = max_and_mean_diff(PillowDecoder(spec)(encoded), tf_reference(encoded, spec))
    assert worst <= 1
    assert mean < 0.5


@pytest.mark.parametrize("channels", [1, 3])
def test_pillow_large_jpeg_decodes_at_reduced_scale_close_to_tensorflow(channels, monkeypatch):
    encoded = pil_bytes(smooth_pixels(375, 500, seed=10), "JPEG", quality=90)
    spec = ImageSpec(64, 64, channels)
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, *a: drafts.append(draft(self, *a) and (self.mode, self.size)))
    decoded = PillowDecoder(spec)(encoded)
    # libjpeg decoded at 1/4 scale (125x94, the smallest DCT scale still >= 64x64), in the
    # teacher's colour mode.
    assert drafts == [("L" if channels == 1 else "RGB", (125, 94))]
    assert decoded.shape == spec.shape
    worst, mean = max_and_mean_diff(decoded, tf_reference(encoded, spec))
    assert mean < 2.5, mean
    assert worst <= 16, worst


def test_pillow_decodes_what_tensorflow_cannot_for_a_grayscale_teacher():
    gray = random_pixels((6, 5, 1), seed=11)
    spec = ImageSpec(6, 5, 1)
    for fmt in ("GIF", "BMP"):
        encoded = pil_bytes(np.repeat(gray, 3, axis=2), fmt)
        np.testing.assert_array_equal(PillowDecoder(spec)(encoded), gray)
        with pytest.raises(tf.errors.InvalidArgumentError):
            ImageDecoder(spec)(encoded)
    webp = pil_bytes(np.repeat(gray, 3, axis=2), "WEBP", lossless=True)
    np.testing.assert_array_equal(PillowDecoder(spec)(webp), gray)


@pytest.mark.parametrize("data", [
    b"definitely not an image",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,
    b"\xff\xd8\xff\xe0" + b"\x00" * 32,
], ids=["garbage", "bad-png", "bad-jpeg"])
def test_pillow_corrupt_bytes_raise(data):
    with pytest.raises((OSError, SyntaxError, ValueError)):
        PillowDecoder(ImageSpec(4, 4, 3))(data)


def test_pillow_empty_bytes_raise():
    with pytest.raises(ValueError, match="empty image bytes"):
        PillowDecoder(ImageSpec(4, 4, 3))(b"")


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_every_format_is_checked_against_the_pixel_limit(decoder):
    # A 300x200 GIF is small on disk; a decoder limited to 50,000 pixels refuses it from its
    # header, whatever the format (TF's own header check knew only PNG and JPEG).
    for fmt in ("GIF", "BMP", "WEBP", "PNG", "JPEG"):
        encoded = pil_bytes(np.zeros((200, 300, 3), np.uint8), fmt)
        with pytest.raises(ValueError, match="300x200, over the limit of 50000 pixels"):
            make_decoder(decoder, ImageSpec(4, 4, 3), max_pixels=50_000)(encoded)


def test_pillow_bomb_beyond_pillows_own_limit_is_a_value_error():
    # A PNG declaring 40000x40000 pixels (1.6e9) whose data is one small deflate stream.
    bomb = (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b""))
    for max_pixels in (89_478_485, 10**10):
        with pytest.raises(ValueError, match="over Pillow's decompression-bomb limit, which "
                                             "--max_image_pixels cannot raise: Image size "
                                             r"\(1600000000 pixels\)"):
            PillowDecoder(ImageSpec(4, 4, 1), max_pixels)(bomb)


def test_pillow_decoder_pickles():
    spec = ImageSpec(4, 5, 3)
    pixels = random_pixels((4, 5, 3), seed=12)
    clone = pickle.loads(pickle.dumps(PillowDecoder(spec, max_pixels=99)))
    assert (clone.spec, clone.max_pixels) == (spec, 99)
    np.testing.assert_array_equal(clone(png(pixels)), pixels)


def test_make_decoder_names():
    assert isinstance(make_decoder("pillow", ImageSpec(2, 2, 1)), PillowDecoder)
    assert isinstance(make_decoder("tf", ImageSpec(2, 2, 1)), ImageDecoder)
    with pytest.raises(ValueError, match="unknown decoder 'cv2'; expected one of"):
        make_decoder("cv2", ImageSpec(2, 2, 1))
