"""A fake teacher whose answer is written into the image, and helpers to make such images.

Each fake image is a 4x4 grayscale PNG. Pixel (0, 0) holds the class, pixel (0, 1) the
confidence code, and the remaining pixels make the bytes unique. The fake teacher reads them
back: class `c`, top-1 probability `confidence_of(code)`, the rest spread evenly. Special
codes make it misbehave: CLASS_NAN yields a NaN row, CLASS_RAISE makes the whole batch raise a
data error (ValueError), CLASS_OOM raise the device's out-of-memory error.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from ns_data import schema
from ns_data.images import ImageSpec
from ns_data.teacher import TeacherSpec
from tests.data_files import write_tfrecord

NUM_CLASSES = 4
IMAGE = ImageSpec(4, 4, 1)
CLASS_NAN = 200
CLASS_RAISE = 201
CLASS_OOM = 202


def confidence_of(code: int) -> np.float32:
    """Top-1 probability encoded by a confidence code 0..255 (always > 1 / NUM_CLASSES)."""
    return np.float32(0.26 + 0.74 * code / 255.0)


def probabilities(label: int, code: int) -> np.ndarray:
    top = confidence_of(code)
    probs = np.full(NUM_CLASSES, (1.0 - top) / (NUM_CLASSES - 1), dtype=np.float32)
    probs[label] = top
    return probs


@dataclasses.dataclass(frozen=True)
class FakeImage:
    image_id: bytes
    label: int
    code: int
    encoded: bytes

    @property
    def confidence(self) -> np.float32:
        return confidence_of(self.code)


def fake_image(index: int, label: int, code: int) -> FakeImage:
    pixels = np.zeros((4, 4, 1), dtype=np.uint8)
    pixels[0, 0, 0] = label
    pixels[0, 1, 0] = code
    pixels[1:, :, 0] = np.frombuffer(index.to_bytes(12, "little"), dtype=np.uint8).reshape(3, 4)
    encoded = tf.io.encode_png(pixels).numpy()
    return FakeImage(b"img-%06d" % index, label, code, encoded)


def write_images(path: str, images: Sequence[FakeImage], with_ids: bool = True) -> str:
    return write_tfrecord(path, [
        schema.image_example(im.encoded, im.image_id if with_ids else None) for im in images])


def fake_spec(batch_size: int = 8) -> TeacherSpec:
    return TeacherSpec(path="fake-teacher", image=IMAGE, num_classes=NUM_CLASSES,
                       input_name="images", output_name="probs", outputs="probabilities",
                       batch_size=batch_size)


class _FakeModel:
    """Stands in for a loaded model (Beam keeps a weak reference to it)."""


class FakeTeacherHandler(ModelHandler[np.ndarray, PredictionResult, _FakeModel]):
    """Reads the answer out of the pixels; same output contract as TeacherModelHandler."""

    def __init__(self, batch_size: int = 8):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)

    def load_model(self):
        return _FakeModel()

    def run_inference(self, batch, model, inference_args=None):
        if any(image[0, 0, 0] == CLASS_RAISE for image in batch):
            raise ValueError("fake teacher failed on this batch")
        if any(image[0, 0, 0] == CLASS_OOM for image in batch):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        results = []
        for image in batch:
            if image[0, 0, 0] == CLASS_NAN:
                probs = np.full(NUM_CLASSES, np.nan, dtype=np.float32)
            else:
                probs = probabilities(int(image[0, 0, 0]), int(image[0, 1, 0]))
            results.append(PredictionResult(image, (probs, probs)))
        return results
