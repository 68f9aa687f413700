"""RandAugment (Cubuk et al., 2020) in TensorFlow ops, the input noise of a Noisy Student.

Each image gets `num_ops` operations drawn uniformly from `OPS`, every one at the same
`magnitude` on the paper's 0..30 scale (Noisy Student uses 2 ops at magnitude up to 27). Runs
in-graph on uint8 images [H, W, C], per image inside `tf.data` or a batch via `augment_batch`,
with stateless randomness: the same seed gives the same augmentation.
"""
from __future__ import annotations

import dataclasses

from ns_data.lazy import tf

MAX_MAGNITUDE = 30.0


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """num_ops operations per image, each at `magnitude` (0..30)."""

    num_ops: int = 2
    magnitude: float = 27.0

    def __post_init__(self):
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")
        if not 0 <= self.magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"magnitude must be in [0, {MAX_MAGNITUDE}], got {self.magnitude}")


def _blend(a: tf.Tensor, b: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """a + factor * (b - a) in float, clipped back to uint8 (factor 0 → a, 1 → b)."""
    a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    return tf.cast(tf.clip_by_value(tf.round(a + factor * (b - a)), 0, 255), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    if image.shape[-1] == 1:
        return image
    gray = tf.image.rgb_to_grayscale(image)
    return tf.image.grayscale_to_rgb(gray)


def _transform(image: tf.Tensor, matrix: list) -> tf.Tensor:
    """Projective transform (output → input mapping, 8 params), nearest, filling with 128."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    transforms = tf.cast(tf.stack(matrix)[tf.newaxis], tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transforms, output_shape=tf.stack([h, w]),
        fill_value=128.0, interpolation="NEAREST", fill_mode="CONSTANT")
    return out[0]


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalization per channel, as PIL.ImageOps.equalize."""
    def channel(c):
        hist = tf.histogram_fixed_width(tf.cast(c, tf.int32), [0, 255], nbins=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

        def equalized():
            lut = (tf.cumsum(hist) + step // 2) // step
            lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
            return tf.cast(tf.gather(lut, tf.cast(c, tf.int32)), tf.uint8)

        return tf.cond(step > 0, equalized, lambda: c)

    channels = tf.unstack(image, axis=-1)
    return tf.stack([channel(c) for c in channels], axis=-1)


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel to the full 0..255 range."""
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    scaled = (x - lo) * 255.0 / tf.maximum(hi - lo, 1.0)
    return tf.cast(tf.where(hi > lo, scaled, x), tf.uint8)


def _sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blends with a 3x3 smoothed copy (borders kept), as PIL.ImageEnhance.Sharpness."""
    x = tf.cast(image, tf.float32)[tf.newaxis]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    channels = image.shape[-1]
    kernel = tf.tile(kernel[:, :, tf.newaxis, tf.newaxis], [1, 1, channels, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID")
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    mask = tf.pad(tf.ones_like(smooth[:, 1:-1, 1:-1]), [[0, 0], [1, 1], [1, 1], [0, 0]])
    degenerate = tf.cast(tf.round(mask * smooth + (1 - mask) * x), tf.uint8)[0]
    return _blend(degenerate, image, factor)


def _signed(level: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Negates `level` with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.where(flip, -level, level)


def apply_op(image: tf.Tensor, op: tf.Tensor, magnitude: float, seed: tf.Tensor) -> tf.Tensor:
    """Applies operation number `op` of `OPS` to one uint8 image at `magnitude`."""
    m = tf.constant(magnitude / MAX_MAGNITUDE, tf.float32)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    enhance = 1.0 + _signed(0.9 * m, seed)  # PIL enhance factor in [0.1, 1.9]

    def rotate():
        angle = _signed(30.0 * m, seed) * (3.141592653589793 / 180.0)
        cos, sin = tf.cos(angle), tf.sin(angle)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        return _transform(image, [cos, -sin, cx - cos * cx + sin * cy,
                                  sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])

    def shear_x():
        s = _signed(0.3 * m, seed)
        return _transform(image, [1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])

    def shear_y():
        s = _signed(0.3 * m, seed)
        return _transform(image, [1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0])

    def translate_x():
        dx = tf.round(_signed(0.45 * m, seed) * w)
        return _transform(image, [1.0, 0.0, dx, 0.0, 1.0, 0.0, 0.0, 0.0])

    def translate_y():
        dy = tf.round(_signed(0.45 * m, seed) * h)
        return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, dy, 0.0, 0.0])

    def solarize():
        threshold = tf.cast(256.0 - 256.0 * m, tf.int32)
        return tf.where(tf.cast(image, tf.int32) >= threshold, 255 - image, image)

    def posterize():
        bits = tf.cast(8 - tf.cast(tf.round(4.0 * m), tf.int32), tf.uint8)
        shift = tf.cast(8, tf.uint8) - bits
        return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)

    branches = [
        lambda: image,  # identity
        lambda: _autocontrast(image),
        lambda: _equalize(image),
        rotate,
        solarize,
        lambda: _blend(_grayscale(image), image, enhance),  # color
        posterize,
        lambda: _blend(tf.fill(tf.shape(image), tf.cast(tf.reduce_mean(
            tf.cast(_grayscale(image), tf.float32)), tf.uint8)), image, enhance),  # contrast
        lambda: _blend(tf.zeros_like(image), image, enhance),  # brightness
        lambda: _sharpness(image, enhance),
        shear_x,
        shear_y,
        translate_x,
        translate_y,
    ]
    return tf.ensure_shape(tf.switch_case(op, branches), image.shape)


OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")


def rand_augment(image: tf.Tensor, config: RandAugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Applies `config.num_ops` random operations to one uint8 image [H, W, C].

    Args:
      image: uint8 image with a static channel count.
      config: number of operations and magnitude.
      seed: int32 [2] stateless seed; the same seed gives the same result.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2 * config.num_ops)
    for i in range(config.num_ops):
        op = tf.random.stateless_uniform([], seeds[2 * i], maxval=len(OPS), dtype=tf.int32)
        image = apply_op(image, op, config.magnitude, seeds[2 * i + 1])
    return image


def augment_batch(images: tf.Tensor, config: RandAugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """RandAugment on each image of a uint8 batch [N, H, W, C], one derived seed per image."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n)
    return tf.map_fn(lambda args: rand_augment(args[0], config, args[1]), (images, seeds),
                     fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8))
