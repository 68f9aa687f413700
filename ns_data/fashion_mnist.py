"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX gzip files), read offline."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(split: str, data_dir: str = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels uint8 [N] of the "train" or "test" split."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    images_file, labels_file = (os.path.join(data_dir, name) for name in _FILES[split])
    missing = [path for path in (images_file, labels_file) if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {data_dir} (missing {', '.join(missing)}). "
            "Install it with: sudo apt-get install dataset-fashion-mnist")
    return _read_idx(images_file), _read_idx(labels_file)


def split_indices(labels: np.ndarray, num_labeled: int, num_holdout: int,
                  seed: int) -> dict[str, np.ndarray]:
    """Train indices → class-balanced `labeled`, a `holdout` for choices, the rest `unlabeled`.

    The labeled split takes num_labeled / num_classes images of every class; the holdout is a
    random draw from the remainder, kept out of the unlabeled split so choices made on it are
    not made on images the student trained on.

    Raises:
      ValueError: when the sizes do not fit the train split.
    """
    num_classes = int(labels.max()) + 1
    if num_labeled % num_classes or num_labeled <= 0:
        raise ValueError(f"--num_labeled must be a positive multiple of {num_classes} "
                         f"(class-balanced), got {num_labeled}")
    per_class = num_labeled // num_classes
    if per_class > np.bincount(labels).min() or num_labeled + num_holdout >= len(labels):
        raise ValueError(f"{num_labeled} labeled + {num_holdout} holdout images do not fit "
                         f"the {len(labels)} training images")
    order = np.random.default_rng(seed).permutation(len(labels))
    labeled = np.sort(np.concatenate([order[labels[order] == c][:per_class]
                                      for c in range(num_classes)]))
    rest = order[~np.isin(order, labeled)]
    return {"labeled": labeled, "holdout": np.sort(rest[:num_holdout]),
            "unlabeled": np.sort(rest[num_holdout:])}


def encode_png(image: np.ndarray) -> bytes:
    """A 28x28 grayscale image → PNG bytes (lossless, so decoding gives the pixels back)."""
    import tensorflow as tf  # noqa: PLC0415 - keep `load` usable without TensorFlow

    return tf.io.encode_png(image[..., np.newaxis]).numpy()
