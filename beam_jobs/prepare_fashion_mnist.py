"""Fashion-MNIST as TFRecords in our schema: labeled, holdout, unlabeled and test splits.

    python -m beam_jobs.prepare_fashion_mnist --output_dir=data/fashion_mnist

Reads Debian's `dataset-fashion-mnist` (sudo apt-get install dataset-fashion-mnist). Writes
  labeled-*.tfrecord    5,000 train images, 500 per class, with `label`
  holdout-*.tfrecord    5,000 other train images with `label`, for choices (never the test set)
  unlabeled-*.tfrecord  the other 50,000 train images, labels removed
  test-*.tfrecord       the 10,000 test images with `label`
  unlabeled_truth.csv   id,label of the unlabeled images, only for reports on pseudo-label quality
and splits.json with the sizes. 70,000 small local images take seconds in one process, so this
is a plain script, not a Beam job. Ids (`fmnist-train-00042`) keep each image's provenance.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ns_data import fashion_mnist, schema, startup
from ns_data.lazy import tf


def _write_shards(output_dir: str, split: str, images: np.ndarray, labels: np.ndarray | None,
                  ids: list[bytes], num_shards: int) -> None:
    num_shards = max(1, min(num_shards, len(ids)))
    for shard in range(num_shards):
        path = os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as w:
            for i in range(shard, len(ids), num_shards):
                label = None if labels is None else int(labels[i])
                w.write(schema.image_example(fashion_mnist.encode_png(images[i]), ids[i], label))


def prepare(output_dir: str, *, num_labeled: int = 5000, num_holdout: int = 5000, seed: int = 0,
            data_dir: str = fashion_mnist.DEFAULT_DIR, limit: int = 0,
            num_shards: int = 8) -> dict[str, int]:
    """Writes the four splits to `output_dir`; returns their sizes.

    Args:
      limit: use only the first `limit` train and test images (0: all), for quick runs.
    """
    train_images, train_labels = fashion_mnist.load("train", data_dir)
    test_images, test_labels = fashion_mnist.load("test", data_dir)
    if limit:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
        test_images, test_labels = test_images[:limit], test_labels[:limit]
    os.makedirs(output_dir, exist_ok=True)
    splits = fashion_mnist.split_indices(train_labels, num_labeled, num_holdout, seed)
    for split, idx in splits.items():
        ids = [b"fmnist-train-%05d" % i for i in idx]
        labels = None if split == "unlabeled" else train_labels[idx]
        _write_shards(output_dir, split, train_images[idx], labels, ids,
                      num_shards if split == "unlabeled" else 1)
    _write_shards(output_dir, "test", test_images, test_labels,
                  [b"fmnist-test-%05d" % i for i in range(len(test_labels))], 1)
    with open(os.path.join(output_dir, "unlabeled_truth.csv"), "w") as f:
        f.write("id,label\n")
        for i in splits["unlabeled"]:
            f.write(f"fmnist-train-{i:05d},{train_labels[i]}\n")
    sizes = {split: len(idx) for split, idx in splits.items()} | {"test": len(test_labels)}
    with open(os.path.join(output_dir, "splits.json"), "w") as f:
        json.dump({"sizes": sizes, "seed": seed, "class_names": fashion_mnist.CLASS_NAMES}, f,
                  indent=2)
    return sizes


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Where to write the splits.")
    parser.add_argument("--num_labeled", type=int, default=5000,
                        help="Labeled train images, equal per class (default: %(default)s).")
    parser.add_argument("--num_holdout", type=int, default=5000,
                        help="Labeled train images held out for choices (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the split (default: %(default)s).")
    parser.add_argument("--limit", type=int, default=0,
                        help="Use only the first N train and test images (default: all).")
    parser.add_argument("--data_dir", default=fashion_mnist.DEFAULT_DIR,
                        help="Where the IDX files are (default: %(default)s).")
    args = parser.parse_args(argv)
    try:
        sizes = prepare(args.output_dir, num_labeled=args.num_labeled,
                        num_holdout=args.num_holdout, seed=args.seed, data_dir=args.data_dir,
                        limit=args.limit)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(f"Wrote {', '.join(f'{n} {split}' for split, n in sizes.items())} images to "
          f"{args.output_dir}")


if __name__ == "__main__":
    startup.quiet_startup()
    run()
