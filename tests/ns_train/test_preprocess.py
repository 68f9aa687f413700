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
    # Reusable (--transform_from) only for the same files, record counts and image shape.
    preprocess.check_reusable(str(tmp_path / "t"), scan.files, toy.IMAGE)
    for files, image, message in (
            ([(labeled, 29)], toy.IMAGE, "read other labeled files"),
            (scan.files, preprocess.ImageSpec(8, 8, 3), r"shape \[8, 8, 1\], this run trains "
                                                         r"on \[8, 8, 3\]")):
        with pytest.raises(ValueError, match=message):
            preprocess.check_reusable(str(tmp_path / "t"), files, image)
    with pytest.raises(ValueError, match="no finished tensorflow-transform analysis"):
        preprocess.check_reusable(str(tmp_path / "nothing"), scan.files, toy.IMAGE)
