"""The trainer's optimisation: how many steps, the learning-rate schedule and the optimiser.

A run's length is `--steps`, or `--epochs` over whichever stream (labeled, or in student mode
pseudo-labeled) takes longer to go through once. The learning rate warms up linearly over
`--warmup_steps` (default 5% of the run), then follows `--schedule`; weight decay is decoupled
and skips biases and normalisation parameters.
"""
from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from ns_train.config import TrainConfig


def steps_per_epoch(config: TrainConfig, num_labeled: int, num_unlabeled: int) -> float:
    """Steps for one pass over whichever stream takes longer to go through once."""
    per_epoch = num_labeled / config.batch_size
    if config.student:
        per_epoch = max(per_epoch, num_unlabeled / config.unlabeled_batch_size)
    return max(per_epoch, 1.0)


def total_steps(config: TrainConfig, epoch_steps: float) -> int:
    """--steps, or --epochs of `epoch_steps` each."""
    return config.steps or max(1, math.ceil(config.epochs * epoch_steps))


@keras.saving.register_keras_serializable(package="ns_train")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then cosine to 0, staircase exponential, or constant."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str = "cosine",
                 decay_rate: float = 0.97, decay_steps: int = 1):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.kind = kind
        self.decay_rate = decay_rate
        self.decay_steps = max(1, decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(self.warmup_steps)
        after = tf.maximum(step - warmup, 0.0)
        if self.kind == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            decayed = 0.5 * self.peak * (1.0 + tf.cos(math.pi * tf.minimum(after, span) / span))
        elif self.kind == "exponential":
            decayed = self.peak * self.decay_rate ** tf.floor(after / self.decay_steps)
        else:
            decayed = tf.constant(self.peak, tf.float32)
        warm = self.peak * step / max(1.0, warmup)
        return tf.where(step < warmup, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "kind": self.kind,
                "decay_rate": self.decay_rate, "decay_steps": self.decay_steps}


def make_schedule(config: TrainConfig, total: int, epoch_steps: float) -> WarmupDecay:
    """The configured schedule for a run of `total` steps, epochs of `epoch_steps` steps.

    A negative --warmup_steps warms up over 5% of the run; --decay_epochs becomes steps.
    """
    warmup = int(0.05 * total) if config.warmup_steps < 0 else config.warmup_steps
    return WarmupDecay(config.learning_rate, warmup, total, config.schedule, config.decay_rate,
                       round(config.decay_epochs * epoch_steps))


def make_optimizer(config: TrainConfig, schedule: WarmupDecay) -> keras.optimizers.Optimizer:
    """SGD, RMSProp (EfficientNet's settings) or AdamW; decoupled decay skips biases and norms."""
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=decay)
    elif config.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(schedule, rho=0.9, momentum=config.momentum,
                                             epsilon=1e-3, weight_decay=decay)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer
