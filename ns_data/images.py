"""Image decoding and resizing for the Beam job and the trainer's tf.data pipeline.

The trainer decodes with `decode_and_resize` (TensorFlow ops, in its graph). The Beam job picks a
decoder by name (`make_decoder`, `--decoder`): `ImageDecoder` runs the trainer's very function,
`PillowDecoder` gives the same pixels to within a level or a few (JPEG) at several times the
rate, without a TensorFlow op per image.
"""
from __future__ import annotations

import dataclasses
import io
import struct
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError


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
    """(height, width) from the image's header, without decoding pixels; None if unknown.

    PNG is read directly; every other format Pillow knows (JPEG, GIF, BMP, WebP, TIFF, ...) from
    the header Pillow parses when it opens the bytes.

    Raises:
      ValueError: when the header declares more pixels than Pillow agrees to open at all
        (twice `PIL.Image.MAX_IMAGE_PIXELS`).
    """
    if encoded.startswith(_PNG_SIGNATURE) and len(encoded) >= 24:
        width, height = struct.unpack(">II", encoded[16:24])
        return height, width
    try:
        with _open(encoded) as image:
            width, height = image.size
    except Image.DecompressionBombError as e:
        raise _bomb_error(e) from None
    except (OSError, SyntaxError, ValueError):  # not an image Pillow knows: let the decoder say
        return None
    return height, width


def _open(encoded: bytes) -> Image.Image:
    with warnings.catch_warnings():  # a large image is refused by our own limit, not a warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(encoded))


def _bomb_error(error: Exception) -> ValueError:
    return ValueError("image is over Pillow's decompression-bomb limit, which --max_image_pixels "
                      f"cannot raise: {error}")


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ValueError(f"image is {width}x{height}, over the limit of {max_pixels} pixels "
                         "(--max_image_pixels)")


class ImageDecoder:
    """Decodes one image's bytes with TensorFlow ops (`decode_and_resize`) to uint8 [H, W, C].

    Exactly the pixels the trainer's tf.data pipeline sees. Images whose header declares more
    than `max_pixels` pixels are refused before decoding, so one decompression bomb costs a
    dead letter, not a worker's memory. `decode_batch` decodes a batch in one TensorFlow call
    (the same ops mapped over it, in parallel and outside the GIL, as tf.data's map does): a
    call per image costs more than decoding a small image. Picklable (the compiled functions
    are created on first use), so it can live in a DoFn.
    """

    def __init__(self, spec: ImageSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.max_pixels = max_pixels
        self._fn = None
        self._batch_fn = None

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
        self._check(encoded)
        return self._fn(tf.constant(encoded)).numpy()

    def decode_batch(self, encoded: Sequence[bytes]) -> tuple[np.ndarray, dict[int, Exception]]:
        """`decode_each`'s result, in one call for the images that pass the header checks.

        When that call fails (an image TensorFlow cannot decode), the batch is decoded image by
        image, so each bad image fails with its own error and the others are decoded.
        """
        if self._batch_fn is None:
            self._batch_fn = tf.function(
                lambda batch: tf.map_fn(lambda b: decode_and_resize(b, self.spec), batch,
                                        fn_output_signature=tf.TensorSpec(self.spec.shape,
                                                                          tf.uint8)),
                input_signature=[tf.TensorSpec([None], tf.string)],
            )
        errors: dict[int, Exception] = {}
        for i, data in enumerate(encoded):
            try:
                self._check(data)
            except ValueError as e:
                errors[i] = e
        checked = [data for i, data in enumerate(encoded) if i not in errors]
        if not checked:
            return np.zeros((0, *self.spec.shape), np.uint8), errors
        try:
            return self._batch_fn(tf.constant(checked)).numpy(), errors
        except tf.errors.OpError:
            return decode_each(self, encoded)

    def _check(self, encoded: bytes) -> None:
        if not encoded:
            raise ValueError("empty image bytes")
        size = image_dimensions(encoded)
        if size:
            _check_size(*size, self.max_pixels)


# Modes Pillow keeps at more than 8 bits per sample; TensorFlow keeps their high byte.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")


class PillowDecoder:
    """Decodes one image's bytes with Pillow to uint8 [H, W, C]; no TensorFlow op per image.

    Made to feed an accelerator from a few CPU cores: a large JPEG is decoded at a reduced
    scale by libjpeg itself (DCT scaling to the smallest of 1/2, 1/4 or 1/8 that is still at
    least the target size, and straight to grayscale for a 1-channel teacher), then resized
    with Pillow's antialiased bilinear filter. Pixels match `decode_and_resize` exactly for a
    PNG, BMP or GIF at the target size, within 1 level for a resize or a colour-to-grayscale
    conversion, and within a few levels for JPEG (libjpeg's DCT and upsampling settings
    differ); `bench/decode.py` measures both. Also decodes what TensorFlow's ops do not for a
    grayscale teacher (GIF, BMP), and WebP and TIFF.

    Every format is checked against `max_pixels` from its header before any pixel is
    decoded; a truncated image is an error (Pillow's `LOAD_TRUNCATED_IMAGES` is left off).
    Picklable.
    """

    def __init__(self, spec: ImageSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.max_pixels = max_pixels
        self._mode = "L" if spec.channels == 1 else "RGB"
        self._size = (spec.width, spec.height)

    def __call__(self, encoded: bytes) -> np.ndarray:
        if not encoded:
            raise ValueError("empty image bytes")
        try:
            image = _open(encoded)
        except Image.DecompressionBombError as e:
            raise _bomb_error(e) from None
        except UnidentifiedImageError:  # its message names a BytesIO's address: differs per run
            raise ValueError(f"not an image format Pillow knows (bytes start {encoded[:8]!r})"
                             ) from None
        with image:
            _check_size(image.height, image.width, self.max_pixels)
            if image.format == "JPEG":
                image.draft(self._mode, self._size)
            image = self._convert(image)
            if image.size != self._size:
                image = image.resize(self._size, Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
        return pixels.reshape(self.spec.shape)

    def decode_batch(self, encoded: Sequence[bytes]) -> tuple[np.ndarray, dict[int, Exception]]:
        """`decode_each` (Pillow has no batch call to save)."""
        return decode_each(self, encoded)

    def _convert(self, image: Image.Image) -> Image.Image:
        if image.mode in _WIDE_MODES:
            high = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
            image = Image.fromarray(high, "L")
        return image if image.mode == self._mode else image.convert(self._mode)


def decode_each(decoder: Decoder,
                encoded: Sequence[bytes]) -> tuple[np.ndarray, dict[int, Exception]]:
    """Decodes a batch image by image: (uint8 pixels [n, H, W, C] of the images that decode,
    in order; the exception of each image that does not, by its position in `encoded`)."""
    pixels, errors = [], {}
    for i, data in enumerate(encoded):
        try:
            pixels.append(decoder(data))
        except Exception as e:  # noqa: BLE001 - the caller makes each a dead letter
            errors[i] = e
    return (np.stack(pixels) if pixels else np.zeros((0, *decoder.spec.shape), np.uint8)), errors


class Decoder(Protocol):
    """What the job decodes with: one image, or a batch (`decode_each`'s result)."""

    spec: ImageSpec

    def __call__(self, encoded: bytes) -> np.ndarray: ...

    def decode_batch(self, encoded: Sequence[bytes]) -> tuple[np.ndarray, dict[int, Exception]]:
        ...


# The Beam job's --decoder choices.
DECODERS = {"pillow": PillowDecoder, "tf": ImageDecoder}
DEFAULT_DECODER = "pillow"


def make_decoder(name: str, spec: ImageSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoder:
    """The decoder called `name` (a key of `DECODERS`) for images of `spec`."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; expected one of {sorted(DECODERS)}")
    return DECODERS[name](spec, max_pixels)
