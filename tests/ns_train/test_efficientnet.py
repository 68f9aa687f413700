"""ns_train.efficientnet: the B0..B7 scaling matches keras.applications; noise only in training."""
from __future__ import annotations

import importlib
import random

import keras
import numpy as np
import pytest

from ns_data.images import ImageSpec
from ns_train import efficientnet as eff
from ns_train.models import StochasticDepth, survival_probabilities


@pytest.mark.parametrize("variant", [0, 2])
def test_parameter_count_equals_keras_applications(variant):
    ours = eff.efficientnet(f"efficientnet-b{variant}", ImageSpec(64, 64, 3), 1000)
    reference = getattr(keras.applications, f"EfficientNetB{variant}")(
        weights=None, input_shape=(64, 64, 3))
    # keras.applications adds an input Normalization layer (mean, variance, count) we don't have.
    normalization = sum(int(np.prod(w.shape)) for layer in reference.layers
                        if isinstance(layer, keras.layers.Normalization) for w in layer.weights)
    assert ours.count_params() == reference.count_params() - normalization


def test_scaling_rules():
    assert [eff.round_filters(32, w) for w in (1.0, 1.1, 1.4, 2.0)] == [32, 32, 48, 64]
    assert [eff.round_repeats(4, d) for d in (1.0, 1.1, 3.1)] == [4, 5, 13]


def test_stochastic_depth_decays_linearly_to_the_final_survival():
    model = eff.efficientnet("efficientnet-b0", ImageSpec(32, 32, 3), 10, final_survival=0.8)
    survivals = [layer.survival for layer in model.layers if isinstance(layer, StochasticDepth)]
    # B0 has 16 blocks (survival 1.0 .. 0.8 by block index); the 9 with a residual connection
    # (not the first of a stage) carry stochastic depth.
    by_block = survival_probabilities(16, 0.8)
    assert by_block[-1] == pytest.approx(0.8)
    assert survivals == pytest.approx([by_block[i] for i in (2, 4, 6, 7, 9, 10, 12, 13, 14)])
    assert model.get_layer("head_dropout").rate == 0.2
    assert eff.efficientnet("efficientnet-b0", ImageSpec(32, 32, 3), 10,
                            dropout=0.0).get_layer("head_dropout").rate == 0.0


def test_noise_is_active_in_training_and_off_at_inference():
    keras.utils.set_random_seed(0)
    model = eff.efficientnet("efficientnet-b0", ImageSpec(32, 32, 3), 5, final_survival=0.5)
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=True))


def test_unknown_variant():
    with pytest.raises(ValueError, match="efficientnet-b9"):
        eff.efficientnet("efficientnet-b9", ImageSpec(32, 32, 3), 10)


def test_each_kernel_has_its_own_draw_and_the_seed_alone_sets_them():
    keras.utils.set_random_seed(3)
    model = eff.efficientnet("efficientnet-b0", ImageSpec(32, 32, 3), 10)
    # Blocks 2b, 3b, ... repeat a layer shape; each must start from its own random values.
    kernels = [w.numpy() for w in model.weights if w.path.endswith("_conv/kernel")]
    by_shape = {}
    for kernel in kernels:
        by_shape.setdefault(kernel.shape, []).append(kernel)
    repeated = [group for group in by_shape.values() if len(group) > 1]
    assert repeated and all(not np.array_equal(group[0], group[1]) for group in repeated)
    # Importing the module draws nothing from Python's RNG, so what was imported before
    # set_random_seed cannot change the model a seed gives.
    state = random.getstate()
    importlib.reload(eff)
    assert random.getstate() == state
    keras.utils.set_random_seed(3)
    again = eff.efficientnet("efficientnet-b0", ImageSpec(32, 32, 3), 10)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, again.weights))
