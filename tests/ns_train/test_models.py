"""ns_train.models: stochastic depth and dropout are noise in training only."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from ns_data.images import ImageSpec
from ns_train.models import StochasticDepth, small_resnet, survival_probabilities


def test_survival_decays_linearly_from_one_to_final():
    np.testing.assert_allclose(survival_probabilities(5, 0.8), [1.0, 0.95, 0.9, 0.85, 0.8])
    assert survival_probabilities(1, 0.8) == [0.8]
    with pytest.raises(ValueError, match="final_survival"):
        survival_probabilities(3, 0.0)


def test_stochastic_depth_drops_whole_examples_in_training_only():
    keras.utils.set_random_seed(0)
    layer = StochasticDepth(0.5)
    branch = np.ones((2000, 3, 3, 2), np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(branch, training=False)), branch)
    out = keras.ops.convert_to_numpy(layer(branch, training=True))
    per_example = out.reshape(2000, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0}  # kept branches scaled by 1/survival
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # whole example
    assert 0.45 < (per_example[:, 0] == 0).mean() < 0.55
    assert abs(out.mean() - 1.0) < 0.1  # expectation preserved


def test_small_resnet_noise_is_active_in_training_and_off_at_inference():
    keras.utils.set_random_seed(1)
    spec = ImageSpec(16, 16, 1)
    x = np.random.default_rng(0).random((8, 16, 16, 1)).astype(np.float32)
    noisy = small_resnet(spec, 5, widths=(8, 16), dropout=0.5, final_survival=0.5)
    assert noisy.output_shape == (None, 5)
    infer = [keras.ops.convert_to_numpy(noisy(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(infer[0], infer[1])
    train = [keras.ops.convert_to_numpy(noisy(x, training=True)) for _ in range(2)]
    assert not np.allclose(train[0], train[1])
    quiet = small_resnet(spec, 5, widths=(8, 16), dropout=0.0, final_survival=1.0)
    train = [keras.ops.convert_to_numpy(quiet(x, training=True)) for _ in range(2)]
    np.testing.assert_allclose(train[0], train[1], rtol=1e-6)
