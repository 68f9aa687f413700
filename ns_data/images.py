"""Image decoding and resizing for the Beam job and the trainer's tf.data pipeline.

The trainer decodes with `decode_and_resize` (TensorFlow ops, in its graph). The Beam job picks a
decoder by name (`make_decoder`, `--decoder`): `ImageDecoder` runs the trainer's very function,
`PillowDecoder` gives the same pixels to within a level or a few (JPEG) at several times the
rate, without a TensorFlow op per image (and decodes plain 8-bit PNGs with OpenCV when it is
installed, to the same pixels: see `PillowDecoder`).
"""
from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from ns_data.lazy import tf

_NOT_IMPORTED = object()
# OpenCV, for PillowDecoder's plain PNGs: imported by `_opencv` on first use (0.2 s, that every
# job start would pay otherwise); None when it is not installed.
cv2: Any = _NOT_IMPORTED


def _opencv() -> Any:
    """OpenCV (`opencv-python-headless`, in requirements.txt), or None when it is not
    installed: PillowDecoder then decodes every PNG with Pillow, to the same pixels."""
    global cv2
    if cv2 is _NOT_IMPORTED:
        try:
            import cv2 as module  # noqa: PLC0415 - see above
        except ImportError:  # pragma: no cover - an install without requirements.txt
            module = None
        cv2 = module
    return cv2


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
_PNG_IHDR = b"\x00\x00\x00\x0dIHDR"  # the first chunk's length (13) and type
_PNG_HEADER_BYTES = 33  # the signature and the IHDR chunk: length, type, 13 bytes, CRC
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk, always these bytes
_JPEG_SOI, _JPEG_EOI, _JPEG_SOS = b"\xff\xd8", b"\xff\xd9", 0xDA
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])  # markers without a segment (TEM, RSTn)


def truncation(encoded: bytes) -> str | None:
    """Why `encoded` is a PNG or JPEG cut short, e.g. "truncated PNG: 20 of the header's 33
    bytes"; None for a whole file, a corrupt one, or another format.

    Read from the file's layout without decoding, so that both decoders name a cut file alike
    (TensorFlow's errors never say "truncated", Pillow's only from some cuts on), before its
    header is trusted for the image's size: a PNG's chunks must reach a whole IEND chunk, a
    JPEG's segments its image data, and that its end marker (EOI). A file that ends as its
    format ends is whole whatever a corrupted length inside says, and a layout that breaks
    before the file ends is corrupt, not cut: the decoder names both. Costs a walk over the
    chunk or segment headers (not the data) and a search for EOI from the file's end.
    """
    if not encoded:
        return None
    if _PNG_SIGNATURE.startswith(encoded[:8]):
        return _png_truncation(encoded)
    if _JPEG_SOI.startswith(encoded[:2]):
        return _jpeg_truncation(encoded)
    return None


def _png_truncation(encoded: bytes) -> str | None:
    size = len(encoded)
    if size < _PNG_HEADER_BYTES:
        if not _PNG_IHDR.startswith(encoded[8:16]):
            return None  # the signature, then no IHDR chunk: corrupt, not cut
        return f"truncated PNG: {size} of the header's {_PNG_HEADER_BYTES} bytes"
    at, kind = len(_PNG_SIGNATURE), b""
    while at + 8 <= size:
        length, kind = struct.unpack_from(">I4s", encoded, at)
        if not kind.isalpha():
            return None  # not a chunk: corrupt, not cut
        start, at = at, at + 12 + length
        if kind == b"IEND" and at <= size:
            return None
        if at > size:
            if encoded.endswith(_PNG_IEND):
                return None  # a corrupted length ran past a whole file
            return (f"truncated PNG: the file ends at byte {size}, inside its {kind.decode()} "
                    f"chunk (bytes {start} to {at - 1})")
    return (f"truncated PNG: the file ends at byte {size}, after its {kind.decode()} chunk, "
            "without the IEND chunk that ends a PNG")


def _jpeg_truncation(encoded: bytes) -> str | None:
    size, at = len(encoded), len(_JPEG_SOI)
    while at < size:
        if encoded[at] != 0xFF:
            return None  # not a marker where one belongs: corrupt, not cut
        while at < size and encoded[at] == 0xFF:  # a marker and its optional fill bytes
            at += 1
        if at == size:
            break
        marker, at = encoded[at], at + 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker == _JPEG_EOI[1]:
            return None  # ends before any image data: the decoder's to name
        if at + 2 > size:
            break
        length = int.from_bytes(encoded[at:at + 2], "big")
        if length < 2:
            return None
        end = at + length
        if end > size:
            break
        if marker == _JPEG_SOS:  # image data follows, up to EOI (0xFF in the data is 0xFF00)
            if encoded.rfind(_JPEG_EOI, end) >= 0:  # from the end: EOI is (nearly) last
                return None
            return (f"truncated JPEG: the file ends at byte {size}, in its image data (from "
                    f"byte {end}), without the end marker")
        at = end
    if encoded.endswith(_JPEG_EOI):
        return None  # a corrupted length ran past a whole file
    return f"truncated JPEG: the file ends at byte {size}, in its headers, before the image data"


def image_dimensions(encoded: bytes) -> tuple[int, int] | None:
    """(height, width) from the image's header, without decoding pixels; None if unknown.

    PNG is read directly from its IHDR chunk; every other format Pillow knows (JPEG, GIF, BMP,
    WebP, TIFF, ...) from the header Pillow parses when it opens the bytes.

    Raises:
      ValueError: when the header declares more pixels than Pillow agrees to open at all
        (twice `PIL.Image.MAX_IMAGE_PIXELS`), or a PNG's IHDR chunk fails its checksum (one
        flipped bit there would declare a huge image; both decoders refuse such a file).
    """
    if encoded.startswith(_PNG_SIGNATURE):
        return _png_dimensions(encoded)
    try:
        with _open(encoded) as image:
            width, height = image.size
    except Image.DecompressionBombError as e:
        raise _bomb_error(e) from None
    except (OSError, SyntaxError, ValueError):  # not an image Pillow knows: let the decoder say
        return None
    return height, width


# PNG colour types (IHDR) by the teacher's channels: grayscale, truecolour (RGB).
_PNG_COLOR_TYPES = {1: 0, 3: 2}
# The chunks a plain PNG may hold, with their length (None: any; a dict: by colour type): the
# ones Pillow and libpng both read, or both skip, alike. Any other chunk (iCCP, zTXt, iTXt, an
# APNG's, ...) and any other length send the PNG the Pillow way: libpng skips a malformed
# ancillary chunk with a warning where Pillow refuses the file.
_PLAIN_PNG_CHUNKS = {
    b"IDAT": None, b"IEND": 0, b"tEXt": None, b"pHYs": 9, b"gAMA": 4, b"sRGB": 1, b"cHRM": 32,
    b"tIME": 7, b"tRNS": {0: 2, 2: 6}, b"bKGD": {0: 2, 2: 6}, b"sBIT": {0: 1, 2: 3},
}
# Pillow and libpng limit text each their own way (Pillow: 1 MB per compressed chunk, 64 MB in
# all): a PNG with more than Pillow's MAX_TEXT_CHUNK of text goes the Pillow way.
_PNG_MAX_TEXT = 1 << 20
_LIBPNG_MAX_SIDE = 1_000_000  # libpng's default limit on width and height


def _plain_png_size(encoded: bytes, color_type: int, max_pixels: int) -> tuple[int, int] | None:
    """(height, width) of a whole, plain 8-bit PNG of `color_type` of at most `max_pixels`
    pixels: a valid header, every chunk's checksum right and only chunks both decoders read
    alike (`_PLAIN_PNG_CHUNKS`), so `_check_layout` has nothing to refuse in it and OpenCV gives
    Pillow's pixels; None for any other bytes, which the Pillow way decodes or names (a damaged
    chunk then never reaches libpng, which would print it). The header is checked before the
    chunks' checksums are computed, so another PNG costs nothing more than it did."""
    if (len(encoded) < _PNG_HEADER_BYTES or not encoded.startswith(_PNG_SIGNATURE)
            or encoded[8:16] != _PNG_IHDR):
        return None
    width, height, depth, color, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", encoded, 16)
    if (depth != 8 or color != color_type or compression or filtering or interlace > 1
            or not (0 < width <= _LIBPNG_MAX_SIDE and 0 < height <= _LIBPNG_MAX_SIDE)
            or height * width > max_pixels):
        return None
    at, size, text, idat = len(_PNG_SIGNATURE), len(encoded), 0, False
    while at + 12 <= size:
        length, = struct.unpack_from(">I", encoded, at)
        end = at + 12 + length
        if end > size or zlib.crc32(encoded[at + 4:end - 4]) != struct.unpack_from(
                ">I", encoded, end - 4)[0]:
            return None
        kind = encoded[at + 4:at + 8]
        if at > len(_PNG_SIGNATURE):  # after IHDR
            expected = _PLAIN_PNG_CHUNKS.get(kind, -1)
            if isinstance(expected, dict):
                expected = expected.get(color, -1)
            if expected is not None and expected != length:
                return None
            text += length if kind == b"tEXt" else 0
            idat = idat or kind == b"IDAT"
            if text > _PNG_MAX_TEXT:
                return None
        if kind == b"IEND":
            return (height, width) if idat else None
        at = end
    return None


def _png_dimensions(encoded: bytes) -> tuple[int, int] | None:
    if len(encoded) < _PNG_HEADER_BYTES or encoded[8:16] != _PNG_IHDR:
        return None  # cut, or not a PNG: `truncation` or the decoder says which
    if zlib.crc32(encoded[12:29]) != struct.unpack_from(">I", encoded, 29)[0]:
        raise ValueError("corrupt PNG: its IHDR chunk (the image size) fails its checksum")
    width, height = struct.unpack_from(">II", encoded, 16)
    return height, width


def _open(encoded: bytes) -> Image.Image:
    with warnings.catch_warnings():  # a large image is refused by our own limit, not a warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(encoded))


def _bomb_error(error: Exception) -> ValueError:
    return ValueError("image is over Pillow's decompression-bomb limit, which --max_image_pixels "
                      f"cannot raise: {error}")


def _check_layout(encoded: bytes) -> None:
    """Refuses empty bytes, a PNG or JPEG cut short (`truncation`) and a PNG whose size fails
    its checksum, before any header is trusted for the image's size; both decoders alike."""
    if not encoded:
        raise ValueError("empty image bytes")
    cut = truncation(encoded)
    if cut:
        raise ValueError(cut)
    if encoded.startswith(_PNG_SIGNATURE):
        _png_dimensions(encoded)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ValueError(f"image is {width}x{height}, over the limit of {max_pixels} pixels "
                         "(--max_image_pixels)")


class ImageDecoder:
    """Decodes one image's bytes with TensorFlow ops (`decode_and_resize`) to uint8 [H, W, C].

    Exactly the pixels the trainer's tf.data pipeline sees. Images whose header declares more
    than `max_pixels` pixels are refused before decoding, so one decompression bomb costs a
    dead letter, not a worker's memory, and a PNG or JPEG cut short is refused as truncated
    (`truncation`) before its header is trusted. `decode_batch` decodes a batch in one
    TensorFlow call (the same ops mapped over it, in parallel and outside the GIL, as tf.data's
    map does): a call per image costs more than decoding a small image. Picklable (the compiled
    functions are created on first use), so it can live in a DoFn.
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
        _check_layout(encoded)
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
    decoded; a truncated image is an error (`truncation` names a cut PNG or JPEG as the `tf`
    decoder does; Pillow's `LOAD_TRUNCATED_IMAGES` is left off).

    A plain PNG already in the teacher's layout (8-bit grayscale for a 1-channel teacher, 8-bit
    RGB for a 3-channel one; every chunk's checksum right and only chunks both libraries read
    alike, `_plain_png_size`) is decoded by OpenCV's libpng instead, when OpenCV is
    installed: PNG is lossless, so the pixels are the very ones Pillow decodes, at about 3-4x
    the rate on small images, where Pillow's own Python per image costs more than the decoding
    (`bench/decode.py`), and outside the GIL. Anything else, and a PNG OpenCV cannot decode,
    goes the Pillow way, which also names what is wrong with it (libpng then prints a line to
    stderr first: only for image data that is corrupt under a right checksum).
    Picklable.
    """

    def __init__(self, spec: ImageSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.max_pixels = max_pixels
        self._mode = "L" if spec.channels == 1 else "RGB"
        self._size = (spec.width, spec.height)

    def __call__(self, encoded: bytes) -> np.ndarray:
        pixels = self._plain_png(encoded)  # a whole PNG, every checksum right: nothing to refuse
        if pixels is not None:
            return pixels
        _check_layout(encoded)
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

    def _plain_png(self, encoded: bytes) -> np.ndarray | None:
        """The pixels of a PNG in the teacher's layout, decoded by OpenCV (resized by Pillow, as
        the Pillow way resizes); None for every other image, which the Pillow way decodes or
        refuses: this way never raises, so every error is the Pillow way's."""
        opencv = _opencv()
        # Over either pixel limit, the Pillow way refuses it, with its message.
        limit = min(self.max_pixels, Image.MAX_IMAGE_PIXELS or self.max_pixels)
        size = (_plain_png_size(encoded, _PNG_COLOR_TYPES[self.spec.channels], limit)
                if opencv is not None else None)
        if size is None:
            return None
        height, width = size
        flags = (opencv.IMREAD_GRAYSCALE if self.spec.channels == 1
                 else opencv.IMREAD_COLOR) | opencv.IMREAD_IGNORE_ORIENTATION
        try:
            pixels = opencv.imdecode(np.frombuffer(encoded, np.uint8), flags)
        except opencv.error:
            pixels = None
        if pixels is None or pixels.shape[:2] != (height, width):
            return None  # OpenCV could not decode it: the Pillow way says why
        if self.spec.channels == 3:
            pixels = opencv.cvtColor(pixels, opencv.COLOR_BGR2RGB)
        if (width, height) != self._size:
            pixels = np.asarray(Image.fromarray(pixels, self._mode).resize(
                self._size, Image.Resampling.BILINEAR))
        return pixels.reshape(self.spec.shape)

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
