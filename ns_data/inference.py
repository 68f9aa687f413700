"""TeacherInference: decode, batch, run the un-noised teacher, keep each image's probabilities."""
from __future__ import annotations

import logging
import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from ns_data.images import DEFAULT_MAX_PIXELS, ImageDecoder, ImageSpec
from ns_data.records import (STAGE_DECODE, STAGE_INFERENCE, STAGE_OUTPUT, DeadLetter, RawImage,
                             ScoredImage)
from ns_data.teacher import output_error

SCORED = "scored"
DEAD_LETTERS = "dead_letters"
_PROGRESS_EVERY_SECS = 30.0


class _Decode(beam.DoFn):
    """RawImage → ((id, encoded), uint8 pixels) for the keyed handler, or a dead letter."""

    def __init__(self, spec: ImageSpec, max_pixels: int):
        self._decoder = ImageDecoder(spec, max_pixels)
        self._failed = beam.metrics.Metrics.counter("ns_data", "failed_decode")

    def process(self, image: RawImage):
        try:
            pixels = self._decoder(image.encoded)
        except Exception as e:  # noqa: BLE001 - any undecodable image becomes a dead letter
            self._failed.inc()
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter(
                STAGE_DECODE, image.image_id, image.encoded, f"{type(e).__name__}: {message}"))
            return
        yield (image.image_id, image.encoded), pixels


class _ToScored(beam.DoFn):
    """(key, PredictionResult) → ScoredImage; invalid teacher outputs become dead letters.

    Also logs progress (images scored and rate) from each worker every 30 seconds.
    """

    def __init__(self, outputs: str):
        self._outputs = outputs
        self._scored = beam.metrics.Metrics.counter("ns_data", "images_scored")
        self._invalid = beam.metrics.Metrics.counter("ns_data", "invalid_teacher_output")
        self._confidence = beam.metrics.Metrics.distribution("ns_data", "confidence_permille")

    def setup(self):
        self._start = self._last_log = time.monotonic()
        self._count = 0

    def process(self, element):
        (image_id, encoded), result = element
        raw, probabilities = result.inference
        error = output_error(raw, probabilities, self._outputs)
        if error:
            self._invalid.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(STAGE_OUTPUT, image_id, encoded, error))
            return
        self._scored.inc()
        self._confidence.update(int(np.max(probabilities) * 1000))
        self._count += 1
        now = time.monotonic()
        if now - self._last_log >= _PROGRESS_EVERY_SECS:
            self._last_log = now
            logging.info("Teacher scored %d images on this worker (%.1f images/s)",
                         self._count, self._count / (now - self._start))
        yield ScoredImage(image_id, encoded, np.asarray(probabilities, dtype=np.float32))


def _failed_batch_to_dead_letters(failure):
    """A batch the teacher raised on → one dead letter per image in it."""
    batch, error = failure
    # Beam hands over (exception type, repr, formatted traceback) for a failed batch.
    message = error[1] if isinstance(error, tuple) and len(error) > 1 else repr(error)
    for (image_id, encoded), _ in batch:
        yield DeadLetter(STAGE_INFERENCE, image_id, encoded, message)


class TeacherInference(beam.PTransform):
    """RawImage → {"scored": ScoredImage, "dead_letters": DeadLetter}.

    Decodes and resizes each image to the teacher's input, runs the model handler through Beam's
    `RunInference` (fixed-size batches, model loaded once per worker or shared when the handler
    is a large model), and keeps the probabilities. An undecodable image, a batch on which the
    teacher raises, and an image whose output is NaN or not a probability vector each become
    dead letters instead of failing the job.
    """

    def __init__(self, model_handler: ModelHandler, image_spec: ImageSpec, outputs: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        self._handler = model_handler
        self._image_spec = image_spec
        self._outputs = outputs
        self._max_pixels = max_pixels

    def expand(self, images):
        decode = _Decode(self._image_spec, self._max_pixels)
        decoded = images | "Decode" >> beam.ParDo(decode).with_outputs(
            DEAD_LETTERS, main="decoded")
        predictions, failed = (
            decoded["decoded"]
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler))
            .with_exception_handling())
        scored = predictions | "ToScored" >> beam.ParDo(_ToScored(self._outputs)).with_outputs(
            DEAD_LETTERS, main=SCORED)
        failed_batches = (failed.failed_inferences
                          | "FailedBatches" >> beam.FlatMap(_failed_batch_to_dead_letters))
        dead = ((decoded[DEAD_LETTERS], failed_batches, scored[DEAD_LETTERS])
                | "MergeDeadLetters" >> beam.Flatten())
        return {SCORED: scored[SCORED], DEAD_LETTERS: dead}
