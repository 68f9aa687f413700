"""TeacherInference: decode, batch, run the un-noised teacher, keep what it said about each image.

The output is one `Prediction` per image: its location, id and top-k classes and probabilities,
or the stage and reason it failed. No image bytes leave this step: the predictions table is
written from these rows, and the writing pass reads the images again by their location.
"""
from __future__ import annotations

import logging
import re
import time

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from ns_data.images import DEFAULT_MAX_PIXELS, ImageDecoder, ImageSpec
from ns_data.predictions import topk
from ns_data.records import STAGE_DECODE, STAGE_INFERENCE, STAGE_OUTPUT, Prediction, RawImage
from ns_data.teacher import output_error

_PROGRESS_EVERY_SECS = 30.0
# What a teacher raises on the data of one batch (a shape it cannot take, a numeric check on an
# input): its images become dead letters. Anything else — out of memory, a lost or failing
# device, an unknown error — fails the bundle, so the runner retries it and a persistent failure
# stops the job instead of quietly turning every image into a dead letter.
TEACHER_DATA_ERRORS = (ValueError, tf.errors.InvalidArgumentError)
_FAILED = "failed"
_TF_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def _first_line(error: Exception) -> str:
    """An error's first line, without the `{{function_node __inference_..._123}}` that TF puts
    in front: its counter differs between runs, and dead letters must not."""
    text = _TF_FUNCTION_NODE.sub("", str(error)).strip()
    return text.splitlines()[0] if text else ""


def _failure(image: RawImage | tuple, stage: str, message: str) -> Prediction:
    source, index, image_id = ((image.source, image.index, image.image_id)
                               if isinstance(image, RawImage) else image)
    return Prediction(source, index, image_id, stage=stage, message=message)


class _Decode(beam.DoFn):
    """RawImage → ((source, index, id), uint8 pixels) for the keyed handler, or a failure."""

    def __init__(self, spec: ImageSpec, max_pixels: int):
        self._decoder = ImageDecoder(spec, max_pixels)
        self._failed = beam.metrics.Metrics.counter("ns_data", "failed_decode")

    def process(self, image: RawImage):
        try:
            pixels = self._decoder(image.encoded)
        except Exception as e:  # noqa: BLE001 - any undecodable image becomes a dead letter
            self._failed.inc()
            message = _first_line(e)
            yield beam.pvalue.TaggedOutput(_FAILED, _failure(
                image, STAGE_DECODE, f"{type(e).__name__}: {message}"))
            return
        yield (image.source, image.index, image.image_id), pixels


class _ToPrediction(beam.DoFn):
    """(key, PredictionResult) → Prediction (top-k); invalid teacher outputs become failures.

    Also logs progress (images scored and rate) from each worker every 30 seconds.
    """

    def __init__(self, outputs: str, topk: int):
        self._outputs = outputs
        self._topk = topk
        self._scored = beam.metrics.Metrics.counter("ns_data", "images_scored")
        self._invalid = beam.metrics.Metrics.counter("ns_data", "invalid_teacher_output")
        self._confidence = beam.metrics.Metrics.distribution("ns_data", "confidence_permille")

    def setup(self):
        self._start = self._last_log = time.monotonic()
        self._count = 0

    def process(self, element):
        key, result = element
        raw, probabilities = result.inference
        error = output_error(raw, probabilities, self._outputs)
        if error:
            self._invalid.inc()
            yield _failure(key, STAGE_OUTPUT, error)
            return
        self._scored.inc()
        self._confidence.update(int(np.max(probabilities) * 1000))
        self._count += 1
        now = time.monotonic()
        if now - self._last_log >= _PROGRESS_EVERY_SECS:
            self._last_log = now
            logging.info("Teacher scored %d images on this worker (%.1f images/s)",
                         self._count, self._count / (now - self._start))
        source, index, image_id = key
        classes, probs = topk(probabilities, self._topk)
        yield Prediction(source, index, image_id, classes, probs)


def _failed_batch(failure):
    """A batch the teacher raised on → one failed Prediction per image in it."""
    batch, error = failure
    # Beam hands over (exception type, repr, formatted traceback) for a failed batch.
    message = error[1] if isinstance(error, tuple) and len(error) > 1 else repr(error)
    for key, _ in batch:
        yield _failure(key, STAGE_INFERENCE, message)


class TeacherInference(beam.PTransform):
    """RawImage → Prediction: one per image, scored or failed.

    Decodes and resizes each image to the teacher's input, runs the model handler through Beam's
    `RunInference` (fixed-size batches, model loaded once per worker or shared when the handler
    is a large model), and keeps the `topk` most probable classes. An undecodable image, a batch
    on which the teacher raises, and an image whose output is NaN or not a probability vector
    each become a failed Prediction (a dead letter later) instead of failing the job; a batch
    that fails for another reason than its data (`TEACHER_DATA_ERRORS`), e.g. the device running
    out of memory, fails the bundle.
    """

    def __init__(self, model_handler: ModelHandler, image_spec: ImageSpec, outputs: str,
                 topk: int, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self._handler = model_handler
        self._image_spec = image_spec
        self._outputs = outputs
        self._topk = topk
        self._max_pixels = max_pixels

    def expand(self, images):
        decode = _Decode(self._image_spec, self._max_pixels)
        decoded = images | "Decode" >> beam.ParDo(decode).with_outputs(_FAILED, main="decoded")
        results, failed = (
            decoded["decoded"]
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler))
            .with_exception_handling(exc_class=TEACHER_DATA_ERRORS))
        predictions = results | "ToPredictions" >> beam.ParDo(
            _ToPrediction(self._outputs, self._topk))
        failed_batches = (failed.failed_inferences
                          | "FailedBatches" >> beam.FlatMap(_failed_batch))
        return ((decoded[_FAILED], failed_batches, predictions)
                | "AllPredictions" >> beam.Flatten())
