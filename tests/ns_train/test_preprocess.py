"""ns_train.preprocess: tensorflow-transform statistics over the readable labeled records."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ns_train import checks, preprocess
from tests.ns_train import toy


@pytest.mark.slow
def test_analysis_counts_classes_and_standardises_per_channel(tmp_path):
    labeled = str(tmp_path / "labeled.tfrecord")
    images, labels = toy.write_labeled(labeled, 32)
    toy.truncate_in_record(labeled, 30)  # the analysis reads the 30 records before the damage
    images, labels = images[:30], labels[:30]
    scan = checks.scan_stream("--labeled", labeled, checks.RecordParser(toy.IMAGE, 4))
    stats = preprocess.analyze_labeled(scan.files, toy.IMAGE, 4, str(tmp_path / "t"))
    assert stats.class_counts == tuple(np.bincount(labels, minlength=4))
    assert preprocess.has_analysis(str(tmp_path / "t"))
    out = preprocess.Preprocessor(str(tmp_path / "t"))(tf.constant(images)).numpy()
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(), 1.0, atol=1e-4)
    np.testing.assert_allclose(preprocess.Preprocessor()(tf.constant(images)).numpy(),
                               images / 255.0, rtol=1e-6)
