"""A learnable toy set: 8x8 grayscale images whose class is the bright quadrant, as TFRecords,
the ways a TFRecord file gets damaged (cut short, a flipped bit), and a trainer config small
enough to train on it in seconds."""
from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from ns_data import schema
from ns_data.images import ImageSpec
from ns_data.tfrecord import iter_records
from ns_data.write import PSEUDO_LABEL_PREFIX, shard_path
from ns_train.config import TrainConfig
from tests import runs
from tests.data_files import png, write_tfrecord

IMAGE = ImageSpec(8, 8, 1)
NUM_CLASSES = 4
# No noise at all: losses of a few steps are then comparable.
QUIET = dict(randaugment_ops=0, dropout=0.0, stochastic_depth=1.0)


def toy_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images [n, 8, 8, 1] and their classes; class c lights quadrant c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    images = rng.integers(0, 60, size=(n, 8, 8, 1))
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 180
    return images.astype(np.uint8), labels


def write_labeled(path: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images, labels = toy_images(n, seed)
    write_tfrecord(path, (schema.image_example(png(image), b"%d-%d" % (seed, i), label=int(label))
                          for i, (image, label) in enumerate(zip(images, labels))))
    return images, labels


def write_pseudo_labeled(path: str, n: int, label_type: schema.LabelType, seed: int = 1) -> None:
    """Pseudo-labels a teacher would give: 0.7 on the true class, the rest spread unevenly."""
    images, labels = toy_images(n, seed)
    records = []
    for i, (image, label) in enumerate(zip(images, labels)):
        probs = np.roll(np.array([0.05, 0.1, 0.15, 0.0], dtype=np.float32), int(label) + 1)
        probs[label] = 0.7
        records.append(schema.pseudo_label_example(b"u%d" % i, png(image), probs, label_type,
                                                   topk=2))
    write_tfrecord(path, records)


def write_finished_run(directory: str, records: tuple[int, ...]) -> list[str]:
    """A finished label_and_balance run in `directory`: shard i holds `records[i]` hard
    pseudo-labels (its own seed), with the stats.json and _SUCCESS the job writes. Returns the
    shard paths."""
    tf.io.gfile.makedirs(directory)
    paths = [shard_path(directory, PSEUDO_LABEL_PREFIX, shard, len(records))
             for shard in range(len(records))]
    for shard, (path, n) in enumerate(zip(paths, records)):
        write_pseudo_labeled(path, n, schema.LabelType.HARD, seed=shard)
    runs.finish_run(directory, records)
    return paths


def record_offset(path: str, index: int) -> int:
    """Byte offset of record `index` in a TFRecord file (12-byte header, data, 4-byte footer)."""
    return sum(16 + len(record) for record in itertools.islice(iter_records(path), index))


def truncate_in_record(path: str, index: int) -> int:
    """Cuts the file inside record `index` (after its header); returns that record's offset."""
    offset = record_offset(path, index)
    with open(path, "r+b") as f:
        f.truncate(offset + 12 + 3)
    return offset


def flip_bit_in_record(path: str, index: int) -> int:
    """Flips one bit of record `index`'s data (its checksum then fails); returns its offset."""
    offset = record_offset(path, index)
    with open(path, "r+b") as f:
        f.seek(offset + 12 + 5)
        byte = f.read(1)[0]
        f.seek(offset + 12 + 5)
        f.write(bytes([byte ^ 0x10]))
    return offset


def train_config(workdir, labeled: str, **overrides) -> TrainConfig:
    """A tiny ResNet on the toy images: 12 constant-rate AdamW steps of 16, logged every 4."""
    values = dict(workdir=str(workdir), labeled=labeled, num_classes=NUM_CLASSES,
                  image_size=(8, 8), channels=1, resnet_widths=(8, 16), resnet_blocks=1,
                  batch_size=16, steps=12, log_every=4, optimizer="adamw", learning_rate=0.01,
                  weight_decay=0.0, warmup_steps=1, schedule="constant", normalization="none",
                  shuffle_buffer=64)
    values.update(overrides)
    return TrainConfig(**values)
