"""Rebuilds the embedded sample in ns_data/sample/ from Debian's Fashion-MNIST.

    PYTHONPATH=. python tools/make_sample.py

labeled.tfrecord: 100 images per class from the train split, with `label`.
unlabeled.tfrecord: 2,000 other train images, no labels (ids keep their provenance).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from ns_data import fashion_mnist, schema

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ns_data",
                   "sample")


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image[..., np.newaxis], compression=9).numpy()


def main():
    images, labels = fashion_mnist.load("train")
    rng = np.random.default_rng(2020)
    order = rng.permutation(len(images))
    labeled = np.concatenate([order[labels[order] == c][:100] for c in range(10)])
    labeled = labeled[rng.permutation(len(labeled))]
    unlabeled = np.setdiff1d(order, labeled, assume_unique=True)[:2000]
    unlabeled = unlabeled[rng.permutation(len(unlabeled))]
    with tf.io.TFRecordWriter(os.path.join(OUT, "labeled.tfrecord")) as w:
        for i in labeled:
            w.write(schema.image_example(_png(images[i]), b"fmnist-train-%05d" % i,
                                         int(labels[i])))
    with tf.io.TFRecordWriter(os.path.join(OUT, "unlabeled.tfrecord")) as w:
        for i in unlabeled:
            w.write(schema.image_example(_png(images[i]), b"fmnist-train-%05d" % i))
    print(f"wrote {len(labeled)} labeled and {len(unlabeled)} unlabeled images to {OUT}")


if __name__ == "__main__":
    main()
