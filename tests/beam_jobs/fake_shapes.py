"""A dataset the loop has never seen: 12x12 RGB images of three classes (a red square, a green
cross, a blue bar, each at a random place on a noisy grey background), written in our schema as
labeled, holdout and unlabeled TFRecords, with ids unlike Fashion-MNIST's."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from ns_data import schema
from tests.fakes import write_tfrecord

CLASS_NAMES = ("red square", "green cross", "blue bar")
SIZE = 12


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [12, 12, 3] image of class `label`."""
    image = rng.integers(90, 140, (SIZE, SIZE, 3)).astype(np.int32)
    y, x = rng.integers(1, SIZE - 6, 2)
    colour = np.zeros(3, np.int32)
    colour[label] = 230
    mask = np.zeros((SIZE, SIZE), bool)
    if label == 0:
        mask[y:y + 5, x:x + 5] = True
    elif label == 1:
        mask[y + 2, x:x + 5] = mask[y:y + 5, x + 2] = True
    else:
        mask[y + 1:y + 3, 1:SIZE - 1] = True
    image[mask] = colour
    return image.clip(0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def make(directory: str, sizes: dict[str, int], seed: int = 0) -> dict[str, list[int]]:
    """Writes `{split}-00000-of-00002.tfrecord` pairs (the unlabeled split without labels, one
    split of `sizes` each, classes in turn); returns the true labels per split."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for split, n in sizes.items():
        labels = [i % len(CLASS_NAMES) for i in range(n)]
        records = [schema.image_example(_png(draw(label, rng)), f"shape-{split}-{i}".encode(),
                                        None if split == "unlabeled" else label)
                   for i, label in enumerate(labels)]
        for shard in range(2):
            write_tfrecord(os.path.join(directory, f"{split}-{shard:05d}-of-00002.tfrecord"),
                           records[shard::2])
        truth[split] = labels
    return truth
