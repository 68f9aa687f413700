"""EfficientNet B0..B7 (Tan & Le, 2019), built from scratch with Noisy Student's model noise.

The architecture and compound scaling follow the paper (and match `keras.applications`
parameter for parameter) but every residual MBConv branch goes through
`ns_train.models.StochasticDepth`, whose survival decays linearly from 1.0 at the first block to
`final_survival` at the last, and the head applies dropout. There are no pretrained weights:
Noisy Student trains its teachers and students from scratch. The model takes normalised float
images and returns logits; any input size works (the variant's native resolution is in
`VARIANTS` for reference).
"""
from __future__ import annotations

import dataclasses
import math

import keras

from ns_data.images import ImageSpec
from ns_train.models import StochasticDepth, survival_probabilities


@dataclasses.dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS = {
    "efficientnet-b0": Variant(1.0, 1.0, 224, 0.2),
    "efficientnet-b1": Variant(1.0, 1.1, 240, 0.2),
    "efficientnet-b2": Variant(1.1, 1.2, 260, 0.3),
    "efficientnet-b3": Variant(1.2, 1.4, 300, 0.3),
    "efficientnet-b4": Variant(1.4, 1.8, 380, 0.4),
    "efficientnet-b5": Variant(1.6, 2.2, 456, 0.4),
    "efficientnet-b6": Variant(1.8, 2.6, 528, 0.5),
    "efficientnet-b7": Variant(2.0, 3.1, 600, 0.5),
}

# B0 stages: (kernel, repeats, filters_in, filters_out, expand_ratio, stride).
_STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2),
           (3, 3, 40, 80, 6, 2), (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2),
           (3, 1, 192, 320, 6, 1))
_SE_RATIO = 0.25


# An initializer per layer, made when the model is built: an unseeded Keras 3 initializer draws
# its seed from Python's RNG when constructed, so one made at import would consume that RNG
# before or after `keras.utils.set_random_seed` depending on import order (the same --seed
# would give different models), and one instance shared by all layers gives every kernel of a
# shape the same values.
def _conv_init() -> keras.initializers.Initializer:
    return keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")


def _dense_init() -> keras.initializers.Initializer:
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of `divisor`, never down by >10%."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def _conv_bn(x, filters: int, kernel: int, name: str, strides: int = 1, activation: bool = True):
    x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                            kernel_initializer=_conv_init(), name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.Activation("swish", name=f"{name}_act")(x) if activation else x


def _mbconv(x, filters_in: int, filters_out: int, kernel: int, stride: int, expand: int,
            survival: float, name: str):
    inputs = x
    filters = filters_in * expand
    if expand != 1:
        x = _conv_bn(x, filters, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                     depthwise_initializer=_conv_init(), name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = keras.layers.Activation("swish", name=f"{name}_dw_act")(x)
    squeezed = max(1, int(filters_in * _SE_RATIO))
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    se = keras.layers.Conv2D(squeezed, 1, activation="swish", kernel_initializer=_conv_init(),
                             name=f"{name}_se_reduce")(se)
    se = keras.layers.Conv2D(filters, 1, activation="sigmoid", kernel_initializer=_conv_init(),
                             name=f"{name}_se_expand")(se)
    x = keras.layers.Multiply(name=f"{name}_se")([x, se])
    x = _conv_bn(x, filters_out, 1, f"{name}_project", activation=False)
    if stride == 1 and filters_in == filters_out:
        x = StochasticDepth(survival, name=f"{name}_sd")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet(variant: str, image: ImageSpec, num_classes: int, dropout: float | None = None,
                 final_survival: float = 0.8) -> keras.Model:
    """An EfficientNet taking normalised float images and returning logits.

    Args:
      variant: "efficientnet-b0" .. "efficientnet-b7".
      image: input geometry.
      num_classes: logits width.
      dropout: head dropout; None uses the variant's (0.2 for B0 .. 0.5 for B7), 0 turns it off.
      final_survival: stochastic-depth survival of the last block (1 turns it off).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; choose from {list(VARIANTS)}")
    v = VARIANTS[variant]
    num_blocks = sum(round_repeats(stage[1], v.depth) for stage in _STAGES)
    survivals = iter(survival_probabilities(num_blocks, final_survival))
    inputs = keras.Input(image.shape, name="images")
    x = _conv_bn(inputs, round_filters(32, v.width), 3, "stem", strides=2)
    for s, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(_STAGES):
        f_in, f_out = round_filters(f_in, v.width), round_filters(f_out, v.width)
        for i in range(round_repeats(repeats, v.depth)):
            x = _mbconv(x, f_in if i == 0 else f_out, f_out, kernel, stride if i == 0 else 1,
                        expand, next(survivals), f"block{s + 1}{chr(ord('a') + i)}")
    x = _conv_bn(x, round_filters(1280, v.width), 1, "top")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(v.dropout if dropout is None else dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=_dense_init(), name="logits")(x)
    return keras.Model(inputs, outputs, name=variant.replace("-", "_"))
