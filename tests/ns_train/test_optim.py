"""ns_train.optim: run length, learning-rate schedule and optimisers."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ns_train import optim
from tests.ns_train import toy


def test_schedule_warmup_cosine_and_exponential():
    cosine = optim.WarmupDecay(1.0, 10, 110, "cosine")
    assert float(cosine(0)) == 0.0
    assert float(cosine(5)) == pytest.approx(0.5)
    assert float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(60)) == pytest.approx(0.5)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
    exponential = optim.WarmupDecay(1.0, 0, 100, "exponential", decay_rate=0.5, decay_steps=10)
    assert [float(exponential(s)) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.5, 0.25])
    assert float(optim.WarmupDecay(0.3, 0, 100, "constant")(77)) == pytest.approx(0.3)


def test_schedule_round_trips_through_keras_serialization():
    schedule = optim.WarmupDecay(0.2, 3, 50, "exponential", decay_rate=0.9, decay_steps=4)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, optim.WarmupDecay)
    assert restored.get_config() == schedule.get_config()


def test_the_configured_schedule_warms_up_5_percent_by_default(tmp_path):
    config = toy.train_config(tmp_path, "x", learning_rate=0.4, warmup_steps=-1,
                              schedule="exponential", decay_rate=0.5, decay_epochs=2.5)
    schedule = optim.make_schedule(config, total=200, epoch_steps=4.0)
    assert (schedule.peak, schedule.warmup_steps, schedule.total_steps) == (0.4, 10, 200)
    assert (schedule.kind, schedule.decay_rate, schedule.decay_steps) == ("exponential", 0.5, 10)
    explicit = toy.train_config(tmp_path, "x", warmup_steps=0)
    assert optim.make_schedule(explicit, total=200, epoch_steps=4.0).warmup_steps == 0


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adamw"])
def test_optimizers_decay_weights_but_not_biases_or_norms(tmp_path, name):
    config = toy.train_config(tmp_path, "x", optimizer=name, weight_decay=0.1)
    optimizer = optim.make_optimizer(config, optim.WarmupDecay(0.1, 0, 10, "constant"))
    kernel = keras.Variable(np.ones(3, np.float32), name="kernel")
    bias = keras.Variable(np.ones(3, np.float32), name="bias")
    optimizer.build([kernel, bias])
    optimizer.apply_gradients([(tf.zeros(3), kernel), (tf.zeros(3), bias)])
    assert float(kernel.numpy()[0]) < 1.0
    assert float(bias.numpy()[0]) == 1.0


def test_steps_from_epochs_follow_the_longer_stream(tmp_path):
    teacher = toy.train_config(tmp_path, "x", steps=0, epochs=2, batch_size=10)
    assert optim.total_steps(teacher, optim.steps_per_epoch(teacher, 95, 0)) == 19
    student = toy.train_config(tmp_path, "x", steps=0, epochs=2, batch_size=10, unlabeled="u",
                               unlabeled_ratio=3)
    assert optim.total_steps(student, optim.steps_per_epoch(student, 95, 600)) == 40
    assert optim.total_steps(toy.train_config(tmp_path, "x", steps=7), 1000.0) == 7
