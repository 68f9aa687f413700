"""ns_train.preprocess: tensorflow-transform statistics, label checks and bad-record reports."""
from __future__ import annotations

import glob

import numpy as np
import pytest
import tensorflow as tf

from ns_data import schema
from ns_train import preprocess
from tests.ns_train import toy


@pytest.mark.slow
def test_analysis_counts_classes_and_standardises_per_channel(tmp_path):
    labeled = str(tmp_path / "labeled.tfrecord")
    images, labels = toy.write_labeled(labeled, 30)
    stats = preprocess.analyze_labeled(labeled, toy.IMAGE, 4, str(tmp_path / "t"))
    assert stats.class_counts == tuple(np.bincount(labels, minlength=4))
    assert preprocess.has_analysis(str(tmp_path / "t"))
    out = preprocess.Preprocessor(str(tmp_path / "t"))(tf.constant(images)).numpy()
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(), 1.0, atol=1e-4)
    np.testing.assert_allclose(preprocess.Preprocessor()(tf.constant(images)).numpy(),
                               images / 255.0, rtol=1e-6)


@pytest.mark.slow
def test_bad_labeled_records_are_listed_not_silently_skipped(tmp_path):
    labeled = str(tmp_path / "labeled.tfrecord")
    images, _ = toy.toy_images(6)
    with tf.io.TFRecordWriter(labeled) as w:
        for i in range(4):
            w.write(schema.image_example(toy.png(images[i]), b"ok%d" % i, label=i))
        w.write(schema.image_example(b"\x89PNG broken", b"corrupt", label=1))
        w.write(schema.image_example(toy.png(images[5]), b"label9", label=9))
        w.write(schema.image_example(toy.png(images[5]), b"unlabeled"))
    with pytest.raises(ValueError, match="3 labeled records cannot be used"):
        preprocess.analyze_labeled(labeled, toy.IMAGE, 4, str(tmp_path / "t"))
    lines = sorted(line for path in glob.glob(str(tmp_path / "t" / "bad_records*"))
                   for line in open(path).read().splitlines())
    assert [line.split("\t")[0] for line in lines] == ["corrupt", "label9", "unlabeled"]
    assert not preprocess.has_analysis(str(tmp_path / "t"))  # a rerun checks the records again
    assert "Unknown image file format" in lines[0]
    assert "outside 0..3" in lines[1] and "has no 'label'" in lines[2]
