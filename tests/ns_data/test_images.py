"""Tests for image decoding in `ns_data/images.py`."""
from __future__ import annotations

import pickle
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from ns_data.images import ImageDecoder, ImageSpec, image_dimensions


def png(pixels: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(pixels, dtype=tf.uint8)).numpy()


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


def test_truncated_png_raises():
    data = png(random_pixels((32, 32, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError):
        ImageDecoder(ImageSpec(32, 32, 3))(data[: len(data) // 2])


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


def test_image_dimensions_from_headers_without_decoding():
    pixels = np.zeros((7, 11, 3), dtype=np.uint8)
    assert image_dimensions(tf.io.encode_png(pixels).numpy()) == (7, 11)
    assert image_dimensions(tf.io.encode_jpeg(pixels).numpy()) == (7, 11)
    assert image_dimensions(b"GIF89a....") is None
    assert image_dimensions(b"\xff\xd8 not really a jpeg") is None


def test_decompression_bomb_is_refused_before_decoding():
    # A valid PNG header declaring 40000x40000 pixels (1.6e9), with no pixel data behind it.
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))
    decoder = ImageDecoder(ImageSpec(4, 4, 1))
    with pytest.raises(ValueError, match="40000x40000, over the limit of 89478485 pixels"):
        decoder(bomb)
    small = tf.io.encode_png(np.zeros((5, 5, 1), dtype=np.uint8)).numpy()
    assert decoder(small).shape == (4, 4, 1)
    with pytest.raises(ValueError, match="over the limit of 24 pixels"):
        ImageDecoder(ImageSpec(4, 4, 1), max_pixels=24)(small)
