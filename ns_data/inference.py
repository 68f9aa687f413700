"""TeacherInference: decode, run the un-noised teacher, keep what it said about each image.

Elements are batches, not images: a list of `RawImage` read together (consecutive records of one
file) goes in, an Arrow table of predictions rows (`ns_data.predictions.SCHEMA`) — one per
image: its location, id and top-k classes and probabilities, or the stage and reason it failed —
comes out. Beam's per-element cost (and its coder's) is paid once per few hundred images, and
the top-k and output checks run on numpy arrays. No image bytes
leave this step: the predictions table is written from these rows, and the writing pass reads
the images again by their location.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.utils.windowed_value import WindowedValue

from ns_data import devices, predictions
from ns_data.images import (DECODERS, DEFAULT_DECODER, DEFAULT_MAX_PIXELS, ImageSpec,
                            make_decoder)
from ns_data.lazy import tf
from ns_data.predictions import topk
from ns_data.records import STAGE_DECODE, STAGE_INFERENCE, STAGE_OUTPUT, Prediction, RawImage
from ns_data.teacher import PROBABILITY_TOLERANCE, output_error

_PROGRESS_EVERY_SECS = 30.0
_FAILED = "failed"
_TF_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")

Key = tuple[str, int, bytes, int]  # (source, index, image id, content hash of the image bytes)


def teacher_data_errors() -> tuple[type[Exception], ...]:
    """What a teacher raises on the data of one batch (a shape it cannot take, a numeric check
    on an input): its images become dead letters. Anything else — out of memory, a lost or
    failing device, an unknown error — fails the bundle, so the runner retries it and a
    persistent failure stops the job instead of quietly turning every image into a dead letter.
    (A function: TensorFlow's class is read when a batch fails, not when this module is
    imported; see `ns_data.lazy`.)"""
    return (ValueError, tf.errors.InvalidArgumentError)


def _first_line(error: Exception) -> str:
    """An error's first line, without the `{{function_node __inference_..._123}}` that TF puts
    in front: its counter differs between runs, and dead letters must not."""
    text = _TF_FUNCTION_NODE.sub("", str(error)).strip()
    return text.splitlines()[0] if text else ""


def _failure(key: Key, stage: str, message: str) -> Prediction:
    source, index, image_id, image_hash = key
    return Prediction(source, index, image_id, stage=stage, message=message,
                      image_hash=image_hash)


class _InOrder:
    """Work running on a helper thread, handed back in the order it was started.

    Each future comes with a context: at least the timestamp and window of the element that
    started it, since its outputs may be emitted while a later element (or, in
    `finish_bundle`, none) is processed, and so are emitted as WindowedValues in their own
    window (`_in_window`). When a result raises, the work still in flight is cancelled and the
    error fails the bundle.
    """

    def __init__(self, ahead: int):
        self._ahead = ahead
        self._pending: collections.deque = collections.deque()

    def add(self, future: concurrent.futures.Future, context: tuple) -> None:
        self._pending.append((future, context))

    def ready(self):
        """(result, context) of the oldest work while more than `ahead` are in flight, or while
        the oldest is already done."""
        while self._pending and (len(self._pending) > self._ahead or self._pending[0][0].done()):
            yield self._next()

    def drain(self):
        while self._pending:
            yield self._next()

    def _next(self):
        future, context = self._pending.popleft()
        try:
            return future.result(), context
        except BaseException:
            for later, _ in self._pending:
                later.cancel()
            self._pending.clear()
            raise


def _in_window(outputs, timestamp, window):
    """Outputs (TaggedOutput or not) as WindowedValues in `window` at `timestamp`."""
    for output in outputs:
        if isinstance(output, beam.pvalue.TaggedOutput):
            yield beam.pvalue.TaggedOutput(
                output.tag, WindowedValue(output.value, timestamp, [window]))
        else:
            yield WindowedValue(output, timestamp, [window])


class _Decode(beam.DoFn):
    """[RawImage] → (keys, uint8 pixels [n, H, W, C]); the images that fail → a table of failed
    predictions rows. A key carries the hash of the image's bytes (`predictions.content_hash`),
    which the table keeps so a later writing pass can tell a replaced image from this one.

    With `ahead` > 0, batches are decoded on a thread of their own, up to `ahead` batches ahead
    of the one the teacher is running on: the teacher and the TensorFlow or Pillow decoders
    release the GIL, so decoding overlaps inference (and the reading of the next batch) instead
    of alternating with it, as `tf.data`'s parallel map does in a hand-written loop. Outputs keep
    the input order; a batch still in flight at the end of a bundle is emitted by
    `finish_bundle`.

    With the `tf` decoder, TensorFlow ops decode on the CPU, and the process first sets the
    GPU memory policy of `runtime` (growth or a limit), so a decoding process never takes a
    GPU's memory from the teacher.
    """

    def __init__(self, spec: ImageSpec, max_pixels: int, decoder: str,
                 runtime: devices.TeacherRuntime | None, ahead: int = 0):
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self._spec = spec
        self._max_pixels = max_pixels
        self._decoder_name = decoder
        self._runtime = runtime
        self._ahead = ahead
        self._failed = beam.metrics.Metrics.counter("ns_data", "failed_decode")

    def setup(self):
        self._decoder = make_decoder(self._decoder_name, self._spec, self._max_pixels)
        self._device = contextlib.nullcontext
        if self._decoder_name == "tf":
            devices.configure_gpus(self._runtime or devices.TeacherRuntime())
            self._device = devices.on_cpu
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ns-decode")
                      if self._ahead else None)

    def teardown(self):
        if getattr(self, "_pool", None):
            self._pool.shutdown(wait=False, cancel_futures=True)

    def start_bundle(self):
        self._pending = _InOrder(self._ahead)

    def process(self, images: Sequence[RawImage], timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        if self._pool is None:
            yield from self._outputs(self._decode(images))
            return
        self._pending.add(self._pool.submit(self._decode, images), (timestamp, window))
        for decoded, (timestamp, window) in self._pending.ready():
            yield from _in_window(self._outputs(decoded), timestamp, window)

    def finish_bundle(self):
        for decoded, (timestamp, window) in self._pending.drain():
            yield from _in_window(self._outputs(decoded), timestamp, window)

    def _decode(self, images: Sequence[RawImage]):
        """(keys, pixels, failed rows) of a batch; runs on the decoding thread, so it touches no
        Beam metric (those count on the bundle's thread, in `_outputs`)."""
        with self._device():
            pixels, errors = self._decoder.decode_batch([image.encoded for image in images])
        keys = [(image.source, image.index, image.image_id,
                 predictions.content_hash(image.encoded)) for image in images]
        failed = [_failure(keys[i], STAGE_DECODE, f"{type(e).__name__}: {_first_line(e)}")
                  for i, e in errors.items()]
        return [key for i, key in enumerate(keys) if i not in errors], pixels, failed

    def _outputs(self, decoded):
        keys, pixels, failed = decoded
        if failed:
            self._failed.inc(len(failed))
            yield beam.pvalue.TaggedOutput(_FAILED, predictions.to_table(failed))
        if keys:
            yield keys, pixels


class Scores(NamedTuple):
    """The teacher's inference of one element: the raw outputs and probabilities [n, classes]
    of the images it scored (None when it scored none), in order; per image None or why it
    failed; how many teacher batches were split to find the images that fail on their own, and
    the seconds the teacher took."""

    raw: np.ndarray | None
    probabilities: np.ndarray | None
    errors: list[str | None]
    splits: int = 0
    seconds: float = 0.0


def _joined(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The rows of `parts` (None: no rows) one after the other; None if there are none."""
    parts = [part for part in parts if part is not None]
    return None if not parts else parts[0] if len(parts) == 1 else np.concatenate(parts)


def _unpickled_in_flight():
    raise RuntimeError("a teacher batch still running was serialized: RunInference and "
                       "ToPredictions must run fused in one stage")


class _InFlight:
    """`Scores` the teacher is still computing on a thread of its own (`TeacherOnBatches` with
    `threads`); `_ToPredictions`, fused after RunInference, waits for them in order.

    Beam samples element sizes by pickling elements, so this pickles without waiting for the
    teacher, to a marker that fails if it were ever unpickled: it is never meant to leave the
    stage it was made in.
    """

    def __init__(self, future: concurrent.futures.Future):
        self.future = future

    def __reduce__(self):
        return _unpickled_in_flight, ()


class TeacherOnBatches(ModelHandler):
    """The teacher's handler, fed pre-batched elements: (keys, pixels [n, H, W, C]).

    RunInference does no batching of its own (`should_skip_batching`); each element is cut into
    the teacher's batches (the wrapped handler's `max_batch_size`, so a fixed-shape function sees
    the shape it was built for). A teacher batch that raises a data error
    (`teacher_data_errors`) is retried in halves, down to single images, so only the images
    that fail on their own become dead letters, each with its error's first line (a batch with
    one bad image costs about 2·log2(batch) extra calls). Any other error fails the bundle.
    Loading and sharing (`large_model`, `model_copies`) are the wrapped handler's. A handler
    with a `scores(images, model)` method (`TeacherModelHandler`) gives each batch's outputs as
    two arrays; any other is called through `run_inference`, one `PredictionResult` per image.

    The inference of each element is its `Scores`. With `threads` > 0, the teacher runs on
    threads of its own, up to `threads` elements at once, and the inference is an `_InFlight`
    that `_ToPredictions` resolves in order: the bundle's thread reads, hands out decoding and
    writes predictions tables while the teacher runs, as the teacher would be fed by `tf.data`
    in a hand-written loop. Two calls at once keep a CPU's cores busy where one call alone
    leaves some idle in its serial parts, and on an accelerator overlap one call's host work
    (padding, copies, softmax) with the other's device time. An error then reaches the bundle
    from `_ToPredictions`; Beam's RunInference latency metric measures only the hand-off
    (`ns_data/teacher_batch_ms` measures the teacher).
    """

    def __init__(self, handler: ModelHandler, threads: int = 0):
        super().__init__()
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self._handler = handler
        self._batch_size = handler.batch_elements_kwargs().get("max_batch_size") or 64
        self._threads = threads
        self._pool = None

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}  # a thread pool is made where it runs

    def load_model(self) -> Any:
        return self._handler.load_model()

    def should_skip_batching(self) -> bool:
        return True

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()

    def model_copies(self) -> int:
        return self._handler.model_copies()

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def get_num_bytes(self, batch) -> int:
        return batch[1].nbytes

    def run_inference(self, batch, model, inference_args=None) -> list[PredictionResult]:
        keys, pixels = batch
        if not self._threads:
            return [PredictionResult(keys, self._scores(pixels, model, inference_args))]
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._threads,
                                                               thread_name_prefix="ns-teacher")
        return [PredictionResult(keys, _InFlight(self._pool.submit(self._scores, pixels, model,
                                                                   inference_args)))]

    def _scores(self, pixels: np.ndarray, model, inference_args) -> Scores:
        """Every image's scores, in teacher batches; touches no Beam metric (it may run on a
        teacher thread; `_ToPredictions` counts)."""
        start = time.perf_counter()
        parts = [self._score(pixels[first:first + self._batch_size], model, inference_args)
                 for first in range(0, len(pixels), self._batch_size)]
        return self._join(parts, sum(part.splits for part in parts),
                          time.perf_counter() - start)

    def _score(self, images: np.ndarray, model, inference_args) -> Scores:
        try:
            raw, probabilities = self._arrays(images, model, inference_args)
        except teacher_data_errors() as e:
            if len(images) == 1:
                return Scores(None, None, [f"{type(e).__name__}: {_first_line(e)}"])
            half = len(images) // 2
            first = self._score(images[:half], model, inference_args)
            second = self._score(images[half:], model, inference_args)
            return self._join([first, second], 1 + first.splits + second.splits)
        return Scores(raw, probabilities, [None] * len(images))

    def _arrays(self, images: np.ndarray, model, inference_args):
        """(raw outputs, probabilities) of `images`, one row each; a handler that returns
        another number of rows fails the bundle (its images would be lost or misattributed)."""
        scores = getattr(self._handler, "scores", None)
        if scores is not None:
            raw, probabilities = scores(images, model)
        else:
            results = [result.inference for result in
                       self._handler.run_inference(list(images), model, inference_args)]
            raw = np.stack([r for r, _ in results]) if results else None
            probabilities = np.stack([p for _, p in results]) if results else None
        rows = {0 if a is None else len(a) for a in (raw, probabilities)}
        if rows != {len(images)}:
            raise RuntimeError(f"the teacher's handler returned {sorted(rows)} rows of outputs "
                               f"for a batch of {len(images)} images")
        return raw, probabilities

    @staticmethod
    def _join(parts: Sequence[Scores], splits: int, seconds: float = 0.0) -> Scores:
        return Scores(_joined([part.raw for part in parts]),
                      _joined([part.probabilities for part in parts]),
                      [error for part in parts for error in part.errors], splits, seconds)


def _invalid_rows(raw: np.ndarray, probabilities: np.ndarray, outputs: str) -> np.ndarray:
    """Rows `output_error` would refuse, found with array math (it then writes the reason)."""
    bad = ~(np.isfinite(raw).all(axis=1) & np.isfinite(probabilities).all(axis=1))
    if outputs == "probabilities":
        with np.errstate(invalid="ignore"):
            bad |= ((raw < 0).any(axis=1) | (raw > 1).any(axis=1)
                    | (np.abs(raw.sum(axis=1, dtype=np.float64) - 1.0) > PROBABILITY_TOLERANCE))
    return bad


class _ToPredictions(beam.DoFn):
    """A batch's teacher outputs → a table of its predictions rows (top-k, `predictions.SCHEMA`);
    invalid outputs and failed teacher batches become failed rows.

    A batch still on a teacher thread (`_InFlight`) is waited for in order once `in_flight`
    later elements are queued behind it (so the teacher's threads have that many to work on),
    and the rest in `finish_bundle`; its table keeps the element's window.
    Counts the teacher's metrics here, on the bundle's thread, whichever thread it ran on.
    Also logs progress (images scored and rate) from each worker every 30 seconds.
    """

    def __init__(self, outputs: str, topk: int, in_flight: int = 1):
        self._outputs = outputs
        self._topk = topk
        self._in_flight = in_flight
        self._scored = beam.metrics.Metrics.counter("ns_data", "images_scored")
        self._invalid = beam.metrics.Metrics.counter("ns_data", "invalid_teacher_output")
        self._failed = beam.metrics.Metrics.counter("ns_data", "failed_inference")
        self._confidence = beam.metrics.Metrics.distribution("ns_data", "confidence_permille")
        self._splits = beam.metrics.Metrics.counter("ns_data", "teacher_batches_split")
        self._teacher_ms = beam.metrics.Metrics.distribution("ns_data", "teacher_batch_ms")

    def setup(self):
        self._start = self._last_log = time.monotonic()
        self._count = 0

    def start_bundle(self):
        self._pending = _InOrder(self._in_flight)

    def process(self, result: PredictionResult, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        if not isinstance(result.inference, _InFlight):
            yield from self._table(result.example, result.inference)
            return
        self._pending.add(result.inference.future, (result.example, timestamp, window))
        for scores, (keys, timestamp, window) in self._pending.ready():
            yield from _in_window(self._table(keys, scores), timestamp, window)

    def finish_bundle(self):
        for scores, (keys, timestamp, window) in self._pending.drain():
            yield from _in_window(self._table(keys, scores), timestamp, window)

    def _table(self, keys: Sequence[Key], scores: Scores):
        errors = scores.errors
        self._splits.inc(scores.splits)
        self._teacher_ms.update(int(scores.seconds * 1000))
        failed = [_failure(keys[i], STAGE_INFERENCE, error)
                  for i, error in enumerate(errors) if error is not None]
        self._failed.inc(len(failed))
        ok = [i for i, error in enumerate(errors) if error is None]
        scored = []
        if ok:
            raw, probabilities = scores.raw, scores.probabilities
            invalid = _invalid_rows(raw, probabilities, self._outputs)
            for j in np.flatnonzero(invalid):
                error = output_error(raw[j], probabilities[j], self._outputs)
                if error:
                    self._invalid.inc()
                    failed.append(_failure(keys[ok[j]], STAGE_OUTPUT, error))
                else:
                    invalid[j] = False
            scored = [ok[j] for j in np.flatnonzero(~invalid)]
            classes, probs = topk(probabilities[~invalid], self._topk)
            for confidence in (probs[:, 0] * 1000).astype(int):
                self._confidence.update(int(confidence))
            self._scored.inc(len(scored))
            self._log_progress(len(scored))
        tables = [predictions.to_table(failed)] if failed else []
        if scored:
            sources, indexes, image_ids, hashes = zip(*(keys[i] for i in scored))
            tables.append(predictions.scored_table(image_ids, sources, indexes, classes, probs,
                                                   hashes))
        if tables:
            yield pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _log_progress(self, scored: int) -> None:
        self._count += scored
        now = time.monotonic()
        if now - self._last_log >= _PROGRESS_EVERY_SECS:
            self._last_log = now
            logging.info("Teacher scored %d images on this worker (%.1f images/s)",
                         self._count, self._count / (now - self._start))


class TeacherInference(beam.PTransform):
    """[RawImage] batches → tables of predictions rows: one row per image, scored or failed; as
    two PCollections, (the images that do not decode, the teacher's rows), which
    `predictions.WritePredictions` takes as they are (a Flatten of them would copy every table
    once more on DirectRunner, which materializes a Flatten of several inputs).

    Decodes and resizes each image to the teacher's input (`decoder`, a name of
    `ns_data.images.DECODERS`; `runtime` is the teacher's device settings, which a `tf` decoder
    respects on GPU workers), runs the model handler through Beam's
    `RunInference` on the batches as read (see `TeacherOnBatches`; the model is loaded once per
    worker process, or once per machine when the handler shares it), and keeps the `topk` most
    probable classes. An undecodable image, an image on which the teacher raises a data error
    (found by retrying a failed batch in halves) and an image whose output is NaN or not a
    probability vector each become a failed row (a
    dead letter later) instead of failing the job; a batch that fails for another reason than
    its data (`teacher_data_errors`), e.g. the device running out of memory, fails the bundle.
    With `decode_ahead` > 0, that many batches are decoded on a thread of their own (see
    `_Decode`), and the teacher runs on `teacher_threads` others, that many batches at once
    (`TeacherOnBatches` with `threads`), while the bundle's thread reads the next batch and
    writes the tables of those done; 0 does every step of a batch in turn, on the bundle's
    thread.
    """

    def __init__(self, model_handler: ModelHandler, image_spec: ImageSpec, outputs: str,
                 topk: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                 decoder: str = DEFAULT_DECODER, runtime: devices.TeacherRuntime | None = None,
                 decode_ahead: int = 0, teacher_threads: int = 1):
        super().__init__()
        if teacher_threads < 1:
            raise ValueError(f"teacher_threads must be >= 1, got {teacher_threads}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; expected one of {sorted(DECODERS)}")
        self._handler = model_handler
        self._image_spec = image_spec
        self._outputs = outputs
        self._topk = topk
        self._max_pixels = max_pixels
        self._decoder = decoder
        self._runtime = runtime
        self._decode_ahead = decode_ahead
        self._teacher_threads = teacher_threads

    def expand(self, images):
        decode = _Decode(self._image_spec, self._max_pixels, self._decoder, self._runtime,
                         self._decode_ahead)
        threads = self._teacher_threads if self._decode_ahead else 0
        decoded = images | "Decode" >> beam.ParDo(decode).with_outputs(_FAILED, main="decoded")
        scored = (decoded["decoded"]
                  | "RunInference" >> RunInference(TeacherOnBatches(self._handler, threads))
                  | "ToPredictions" >> beam.ParDo(
                      _ToPredictions(self._outputs, self._topk, max(threads, 1))))
        return decoded[_FAILED], scored
