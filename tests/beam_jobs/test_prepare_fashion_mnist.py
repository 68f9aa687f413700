"""beam_jobs.prepare_fashion_mnist: class-balanced, disjoint splits that keep every pixel."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import prepare_fashion_mnist
from ns_data import fashion_mnist, schema
from tests.beam_jobs import fake_fashion_mnist


def read_split(directory, split):
    records = [schema.parse_example(s) for path in sorted(glob.glob(f"{directory}/{split}-*"))
               for s in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    ids = [r[schema.IMAGE_ID][0].decode() for r in records]
    labels = [r[schema.LABEL][0] if schema.LABEL in r else None for r in records]
    pixels = [tf.io.decode_png(r[schema.IMAGE_ENCODED][0]).numpy()[..., 0] for r in records]
    return ids, labels, pixels


def test_splits_are_balanced_disjoint_and_lossless(tmp_path):
    images, labels = fake_fashion_mnist.make(str(tmp_path / "idx"))
    out = str(tmp_path / "out")
    sizes = prepare_fashion_mnist.prepare(out, num_labeled=200, num_holdout=100,
                                          data_dir=str(tmp_path / "idx"), num_shards=3)
    assert sizes == {"labeled": 200, "holdout": 100, "unlabeled": 500, "test": 200}
    assert len(glob.glob(f"{out}/unlabeled-*-of-00003.tfrecord")) == 3
    splits = {split: read_split(out, split) for split in ("labeled", "holdout", "unlabeled",
                                                          "test")}
    assert np.bincount(splits["labeled"][1]).tolist() == [20] * 10
    train_ids = [set(splits[s][0]) for s in ("labeled", "holdout", "unlabeled")]
    assert sum(map(len, train_ids)) == len(set.union(*train_ids)) == 800
    assert all(label is None for label in splits["unlabeled"][1])
    for split in ("labeled", "unlabeled", "test"):
        for image_id, label, pixels in zip(*splits[split]):
            index = int(image_id.rsplit("-", 1)[1]) + (800 if "test" in image_id else 0)
            np.testing.assert_array_equal(pixels, images[index])
            assert label is None or label == labels[index]
    truth = dict(line.split(",") for line in open(f"{out}/unlabeled_truth.csv").read().split()[1:])
    assert {k: int(v) for k, v in truth.items()} == {
        i: int(labels[int(i.rsplit("-", 1)[1])]) for i in splits["unlabeled"][0]}
    assert json.load(open(f"{out}/splits.json"))["sizes"] == sizes


def test_impossible_sizes_and_missing_data_are_clear(tmp_path):
    fake_fashion_mnist.make(str(tmp_path / "idx"))
    with pytest.raises(ValueError, match="multiple of 10"):
        prepare_fashion_mnist.prepare(str(tmp_path / "o"), num_labeled=205,
                                      data_dir=str(tmp_path / "idx"))
    with pytest.raises(ValueError, match="do not fit"):
        prepare_fashion_mnist.prepare(str(tmp_path / "o"), num_labeled=500, num_holdout=400,
                                      data_dir=str(tmp_path / "idx"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load("train", str(tmp_path / "nowhere"))
    os.remove(tmp_path / "idx" / "train-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError,
                       match=r"missing .*train-labels-idx1-ubyte\.gz\)\. Install"):
        fashion_mnist.load("train", str(tmp_path / "idx"))
