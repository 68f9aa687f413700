"""ns_train.data: one reader for labeled and hard/soft/soft_topk pseudo-labeled records."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ns_data import schema
from ns_data.images import ImageSpec
from ns_train import data
from tests.data_files import write_tfrecord

SPEC = ImageSpec(6, 6, 1)
C = 4


def png(value: int) -> bytes:
    return tf.io.encode_png(np.full((6, 6, 1), value, dtype=np.uint8)).numpy()


def probs_for(i: int) -> np.ndarray:
    p = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    return np.roll(p, i)


@pytest.fixture
def files(tmp_path):
    labeled = str(tmp_path / "labeled.tfrecord")
    write_tfrecord(labeled, (schema.image_example(png(i), b"l%d" % i, label=i % C)
                             for i in range(12)))
    pseudo = {}
    for label_type in schema.LabelType:
        path = str(tmp_path / f"pseudo-{label_type.value}.tfrecord")
        write_tfrecord(path, (schema.pseudo_label_example(b"u%d" % i, png(100 + i), probs_for(i),
                                                          label_type, topk=2) for i in range(10)))
        pseudo[label_type] = path
    return labeled, pseudo


def one_pass(pattern, **kwargs):
    spec = data.InputSpec(pattern, SPEC, C, batch_size=4, training=False, **kwargs)
    batches = list(data.dataset(spec))
    return (np.concatenate([b[0].numpy() for b in batches]),
            np.concatenate([b[1].numpy() for b in batches]))


def test_labeled_records_give_one_hot_targets_and_decoded_pixels(files):
    images, targets = one_pass(files[0])
    assert images.shape == (12, 6, 6, 1) and images.dtype == np.uint8
    assert [int(im[0, 0, 0]) for im in images] == list(range(12))  # order kept in eval
    np.testing.assert_array_equal(targets, np.eye(C)[np.arange(12) % C])


@pytest.mark.parametrize("label_type", list(schema.LabelType))
def test_pseudo_label_targets_per_label_type(files, label_type):
    _, targets = one_pass(files[1][label_type])
    for i, row in enumerate(targets):
        p = probs_for(i)
        if label_type is schema.LabelType.HARD:
            want = np.eye(C)[np.argmax(p)]
        elif label_type is schema.LabelType.SOFT:
            want = p
        else:
            top = np.argsort(-p)[:2]
            want = np.zeros(C)
            want[top] = p[top] / p[top].sum()
        np.testing.assert_allclose(row, want, atol=1e-6)


def test_target_temperature_sharpens_soft_targets_and_keeps_one_hot(files):
    _, soft = one_pass(files[1][schema.LabelType.SOFT], target_temperature=0.5)
    p = probs_for(0) ** 2
    np.testing.assert_allclose(soft[0], p / p.sum(), atol=1e-6)
    _, hard = one_pass(files[0], target_temperature=0.5)
    np.testing.assert_array_equal(hard, np.eye(C)[np.arange(12) % C])


def test_training_stream_mixes_batches_at_the_unlabeled_ratio_deterministically(files):
    labeled = data.InputSpec(files[0], SPEC, C, batch_size=2, seed=3, shuffle_buffer=100)
    unlabeled = data.InputSpec(files[1][schema.LabelType.SOFT], SPEC, C, batch_size=6, seed=3,
                               shuffle_buffer=100)
    steps = list(data.mixed_dataset(labeled, unlabeled).take(5))
    assert all(l[0].shape == (2, 6, 6, 1) and u[0].shape == (6, 6, 6, 1) for l, u in steps)
    again = list(data.mixed_dataset(labeled, unlabeled).take(5))
    for (l1, u1), (l2, u2) in zip(steps, again):
        np.testing.assert_array_equal(l1[0], l2[0])
        np.testing.assert_array_equal(u1[1], u2[1])
    seen = {int(x[0, 0, 0]) for l, _ in steps for x in l[0].numpy()}
    assert len(seen) > 2  # repeated and shuffled, not one fixed batch


def test_bad_input_specs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        data.dataset(data.InputSpec(str(tmp_path / "none-*"), SPEC, C, batch_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        data.InputSpec("x", SPEC, C, batch_size=0)
    with pytest.raises(ValueError, match="target_temperature"):
        data.InputSpec("x", SPEC, C, batch_size=2, target_temperature=0)
