"""Test data on disk, written the one way every test writes it: TFRecord files of given records,
read back whole, and PNG bytes of a pixel array."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tensorflow as tf


def write_tfrecord(path, records: Iterable[bytes],
                   options: str | tf.io.TFRecordOptions | None = None) -> str:
    """Writes `records` in order to the TFRecord file `path` (compressed per `options`)."""
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def read_tfrecords(*paths: str) -> list[bytes]:
    """Every record of `paths`, file after file."""
    return [r.numpy() for r in tf.data.TFRecordDataset([str(p) for p in paths])] if paths else []


def png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of uint8 pixels [H, W, C]."""
    return tf.io.encode_png(tf.constant(pixels, dtype=tf.uint8)).numpy()
