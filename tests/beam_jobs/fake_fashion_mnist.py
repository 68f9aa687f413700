"""A stand-in for Debian's Fashion-MNIST directory, built from the embedded sample's 1,000 real
labeled images (the first 800 as "train", the rest as "test"), so CI needs no apt package."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import tensorflow as tf

from ns_data import schema

# The Fashion-MNIST loop's smoke-test variant, as `beam_jobs.iterate` takes it.
RUNLOCAL = "--config=ns_train/configs/fashion_mnist_loop.py:runlocal"
SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "ns_data", "sample",
                      "labeled.tfrecord")


def write_idx(path: str, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                   *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make(directory: str, num_train: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """Writes the four IDX files; returns all (images [N, 28, 28], labels [N])."""
    images, labels = [], []
    for serialized in tf.data.TFRecordDataset(SAMPLE).as_numpy_iterator():
        features = schema.parse_example(serialized)
        images.append(tf.io.decode_png(features[schema.IMAGE_ENCODED][0]).numpy()[..., 0])
        labels.append(features[schema.LABEL][0])
    images, labels = np.stack(images), np.asarray(labels)
    os.makedirs(directory, exist_ok=True)
    for prefix, part in (("train", slice(0, num_train)), ("t10k", slice(num_train, None))):
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images[part])
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels[part])
    return images, labels
