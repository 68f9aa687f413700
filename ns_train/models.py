"""Student and teacher models with the model noise of Noisy Student: dropout and stochastic depth.

`small_resnet` is a compact residual network for small images and tests. Every residual branch
goes through `StochasticDepth`, whose survival probability decays linearly from 1.0 at the
first block to `final_survival` (paper: 0.8) at the last; the head applies dropout. Both are
active only in training, so an exported model is the un-noised teacher.
"""
from __future__ import annotations

import keras

from ns_data.images import ImageSpec


def survival_probabilities(num_blocks: int, final_survival: float = 0.8) -> list[float]:
    """Per-block survival: 1.0 at the first block, linearly down to `final_survival` at the last."""
    if not 0.0 < final_survival <= 1.0:
        raise ValueError(f"final_survival must be in (0, 1], got {final_survival}")
    if num_blocks == 1:
        return [final_survival]
    return [1.0 - (1.0 - final_survival) * i / (num_blocks - 1) for i in range(num_blocks)]


@keras.saving.register_keras_serializable(package="ns_train")
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch per example with probability 1 - survival, in training only.

    Kept branches are scaled by 1 / survival so the expected output equals the inference output.
    """

    def __init__(self, survival: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival must be in (0, 1], got {survival}")
        self.survival = survival
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, branch, training=None):
        if not training or self.survival == 1.0:
            return branch
        shape = (keras.ops.shape(branch)[0],) + (1,) * (len(branch.shape) - 1)
        keep = keras.random.uniform(shape, seed=self.seed_generator) < self.survival
        return branch * keras.ops.cast(keep, branch.dtype) / self.survival

    def get_config(self):
        return {**super().get_config(), "survival": self.survival}


def _residual_block(x, filters: int, stride: int, survival: float, name: str):
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False,
                            name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, stride, use_bias=False,
                                       name=f"{name}_proj")(shortcut)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = StochasticDepth(survival, name=f"{name}_sd")(y)
    return keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))


def small_resnet(image: ImageSpec, num_classes: int, widths: tuple[int, ...] = (32, 64, 128),
                 blocks_per_stage: int = 2, dropout: float = 0.2,
                 final_survival: float = 0.8) -> keras.Model:
    """A residual network taking float images in [0, 1] and returning logits.

    Args:
      image: input geometry.
      num_classes: logits width.
      widths: filters per stage; every stage after the first halves the resolution.
      blocks_per_stage: residual blocks per stage.
      dropout: dropout rate before the classifier (0 turns it off).
      final_survival: stochastic-depth survival of the last block (1 turns it off).
    """
    survivals = survival_probabilities(len(widths) * blocks_per_stage, final_survival)
    inputs = keras.Input(image.shape, name="images")
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(x))
    block = 0
    for stage, filters in enumerate(widths):
        for i in range(blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            x = _residual_block(x, filters, stride, survivals[block], f"s{stage}b{i}")
            block += 1
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_resnet")
