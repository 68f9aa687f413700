"""Image decoding and resizing, shared by the Beam job and the trainer's tf.data pipeline.

Both sides call `decode_and_resize`, so the teacher in `label_and_balance` sees pixels prepared
exactly as the trainer prepared them.
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """Decoded image geometry: what the teacher's input expects."""

    height: int
    width: int
    channels: int

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def decode_and_resize(encoded: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [H, W, C], resizing only when the size differs.

    Resizing is bilinear with antialiasing, rounded back to uint8 so decoded images stay small
    in the pipeline. Raises `tf.errors.InvalidArgumentError` on undecodable bytes.
    """
    image = tf.io.decode_image(encoded, channels=spec.channels, expand_animations=False)
    image.set_shape([None, None, spec.channels])
    size = tf.shape(image)[:2]

    def resized():
        image_f = tf.image.resize(image, [spec.height, spec.width], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image_f), 0.0, 255.0), tf.uint8)

    same = tf.reduce_all(tf.equal(size, [spec.height, spec.width]))
    image = tf.cond(same, lambda: image, resized)
    return tf.ensure_shape(image, spec.shape)


# Pillow's default decompression-bomb limit: a larger image is refused before decoding.
DEFAULT_MAX_PIXELS = 89_478_485
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_dimensions(encoded: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header without decoding pixels; None if unknown."""
    if encoded.startswith(_PNG_SIGNATURE) and len(encoded) >= 24:
        width, height = struct.unpack(">II", encoded[16:24])
        return height, width
    if encoded.startswith(b"\xff\xd8"):
        try:
            height, width, _ = tf.io.extract_jpeg_shape(encoded).numpy().tolist()
        except tf.errors.InvalidArgumentError:
            return None
        return height, width
    return None


class ImageDecoder:
    """Decodes one image's bytes to a uint8 numpy array; builds its tf.function lazily.

    Images whose header declares more than `max_pixels` pixels are refused before decoding,
    so one decompression bomb costs a dead letter, not a worker's memory. Picklable (the
    compiled function is created on first use), so it can live in a DoFn.
    """

    def __init__(self, spec: ImageSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.max_pixels = max_pixels
        self._fn = None

    def __getstate__(self):
        return {"spec": self.spec, "max_pixels": self.max_pixels}

    def __setstate__(self, state):
        self.__init__(state["spec"], state.get("max_pixels", DEFAULT_MAX_PIXELS))

    def __call__(self, encoded: bytes) -> np.ndarray:
        if self._fn is None:
            self._fn = tf.function(
                lambda b: decode_and_resize(b, self.spec),
                input_signature=[tf.TensorSpec([], tf.string)],
            )
        if not encoded:
            raise ValueError("empty image bytes")
        size = image_dimensions(encoded)
        if size and size[0] * size[1] > self.max_pixels:
            raise ValueError(f"image is {size[1]}x{size[0]}, over the limit of "
                             f"{self.max_pixels} pixels (--max_image_pixels)")
        return self._fn(tf.constant(encoded)).numpy()
