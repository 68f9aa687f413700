"""ns_train.augment: RandAugment ops do what they say, stateless and shape-preserving."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ns_train import augment
from ns_train.augment import OPS, RandAugmentConfig

SEED = tf.constant([1, 2], tf.int32)


def random_images(n, h=20, w=24, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def op(name, image, magnitude=30.0, seed=SEED):
    return augment.apply_op(tf.constant(image), tf.constant(OPS.index(name)), magnitude,
                            seed).numpy()


@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_and_dtype(channels):
    image = random_images(1, c=channels)[0]
    for name in OPS:
        out = op(name, image, magnitude=15.0)
        assert out.shape == image.shape and out.dtype == np.uint8, name


def test_pixel_ops_match_their_definitions():
    image = random_images(1)[0]
    np.testing.assert_array_equal(op("identity", image), image)
    np.testing.assert_array_equal(op("solarize", image), 255 - image)  # threshold 0 at m=30
    np.testing.assert_array_equal(op("posterize", image), image & 0xF0)  # 4 bits at m=30
    narrow = (50 + image.astype(np.int32) * 50 // 255).astype(np.uint8)
    stretched = op("autocontrast", narrow)
    assert stretched.min() == 0 and stretched.max() == 255
    flat = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(op("equalize", flat), flat)
    equalized = op("equalize", narrow)
    assert equalized.max() > 240 and equalized.min() < 15


def test_translate_moves_content_by_the_magnitude():
    image = random_images(1, h=20, w=20)[0]
    out = op("translate_x", image)  # 0.45 * 20 = 9 pixels, either way
    left, right = image[:, 9:], image[:, :-9]
    assert np.array_equal(out[:, :11], left) or np.array_equal(out[:, 9:], right)
    assert np.all((out[:, :9] == 128) | (out[:, 11:] == 128))  # the uncovered part is filled


def test_rand_augment_is_stateless_and_changes_images():
    images = tf.constant(random_images(6))
    config = RandAugmentConfig(num_ops=2, magnitude=27.0)
    a = augment.augment_batch(images, config, SEED).numpy()
    b = augment.augment_batch(images, config, SEED).numpy()
    c = augment.augment_batch(images, config, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sum(not np.array_equal(x, y) for x, y in zip(a, images.numpy())) >= 4
    none = augment.augment_batch(images, RandAugmentConfig(num_ops=0), SEED).numpy()
    np.testing.assert_array_equal(none, images.numpy())


def test_config_validation():
    with pytest.raises(ValueError, match="num_ops"):
        RandAugmentConfig(num_ops=-1)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugmentConfig(magnitude=31)
