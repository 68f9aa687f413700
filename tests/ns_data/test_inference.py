"""Tests for `ns_data/inference.py`: decoding batches and retrying failed teacher batches."""
from __future__ import annotations

import concurrent.futures
import io
import itertools
import pickle
import threading

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from ns_data import devices, inference
from ns_data.images import ImageSpec, decode_and_resize
from ns_data.predictions import ERROR_MESSAGE, ERROR_STAGE, IMAGE_HASH, INDEX, LABEL, content_hash
from ns_data.records import STAGE_DECODE, RawImage
from tests import fakes

SPEC = ImageSpec(12, 10, 1)


def encoded(fmt: str, seed: int, shape=(12, 10, 3)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    if fmt == "GIF":
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def raw_images(*contents: bytes) -> list[RawImage]:
    return [RawImage(source="in.tfrecord", index=i, image_id=b"id%d" % i, encoded=data)
            for i, data in enumerate(contents)]


def run_decode(fn: inference._Decode, batches: list[list[RawImage]]) -> list:
    """The DoFn's outputs over one bundle of `batches`, in order, out of their windows."""
    fn.setup()
    fn.start_bundle()
    outputs = [out for batch in batches
               for out in fn.process(batch, timestamp=MIN_TIMESTAMP, window=GlobalWindow())]
    outputs += list(fn.finish_bundle() or ())
    fn.teardown()
    return [TaggedOutput(out.tag, getattr(out.value, "value", out.value))
            if isinstance(out, TaggedOutput) else getattr(out, "value", out) for out in outputs]


def decode(decoder: str, images: list[RawImage], runtime=None):
    fn = inference._Decode(SPEC, max_pixels=10_000, decoder=decoder, runtime=runtime)
    decoded, failed = None, []
    for out in run_decode(fn, [images]):
        if isinstance(out, TaggedOutput):
            failed.extend(out.value.to_pylist())  # rows of the predictions table
        else:
            decoded = out
    return decoded, failed


@pytest.fixture
def gpu_settings(monkeypatch):
    """Records the runtime each decoding process sets the GPUs up with."""
    calls = []
    monkeypatch.setattr(devices, "configure_gpus", calls.append)
    return calls


@pytest.mark.parametrize("decoder", ["pillow", "tf"])
def test_decode_batches_good_images_and_fails_bad_ones_per_image(decoder, gpu_settings):
    images = raw_images(encoded("PNG", 0), b"not an image", encoded("JPEG", 1), b"",
                        encoded("PNG", 2, shape=(200, 100, 3)))
    (keys, pixels), failed = decode(decoder, images)
    # Each key carries its image's hash, for the table's image_hash column.
    assert keys == [("in.tfrecord", 0, b"id0", content_hash(images[0].encoded)),
                    ("in.tfrecord", 2, b"id2", content_hash(images[2].encoded))]
    assert pixels.shape == (2, *SPEC.shape) and pixels.dtype == np.uint8
    want = decode_and_resize(images[0].encoded, SPEC).numpy()
    if decoder == "tf":  # the trainer's own pixels
        np.testing.assert_array_equal(pixels[0], want)
    assert np.abs(pixels[0].astype(int) - want.astype(int)).max() <= 1
    assert [(f[INDEX], f[ERROR_STAGE], f[LABEL]) for f in failed] == [
        (1, STAGE_DECODE, None), (3, STAGE_DECODE, None), (4, STAGE_DECODE, None)]
    assert failed[1][ERROR_MESSAGE] == "ValueError: empty image bytes"
    assert [f[IMAGE_HASH] for f in failed] == [content_hash(images[i].encoded) for i in (1, 3, 4)]
    assert ("100x200, over the limit of 10000 pixels (--max_image_pixels)"
            in failed[2][ERROR_MESSAGE])


@pytest.mark.parametrize("ahead", [1, 2, 5])
def test_decoding_ahead_emits_every_batch_in_order_and_in_its_window(ahead, gpu_settings):
    # 7 batches with a bad image in every third: what a bundle emits with batches decoded on
    # another thread, up to `ahead` in flight, is what decoding each in turn emits, in order.
    batches = [[RawImage(b"id", b"bad" if (b + i) % 3 == 0 else encoded("PNG", 10 * b + i),
                         "in.tfrecord", 4 * b + i) for i in range(4)] for b in range(7)]

    def emitted(n_ahead):
        fn = inference._Decode(SPEC, 10_000, "pillow", None, ahead=n_ahead)
        return [(out.tag, out.value.column(INDEX).to_pylist()) if isinstance(out, TaggedOutput)
                else ("decoded", [key[1] for key in out[0]], out[1].tobytes())
                for out in run_decode(fn, batches)]

    serial = emitted(0)
    assert emitted(ahead) == serial
    # Every image once, failed or decoded, and the batches in input order.
    assert sorted(i for out in serial for i in out[1]) == list(range(28))
    batch_of = [index // 4 for out in serial for index in out[1]]
    assert batch_of == sorted(batch_of)
    assert sum(len(out[1]) for out in serial if out[0] == "failed") == 10


def test_batches_still_decoding_at_the_end_of_a_bundle_are_emitted_by_finish_bundle(
        gpu_settings):
    fn = inference._Decode(SPEC, 10_000, "pillow", None, ahead=3)
    fn.setup()
    fn.start_bundle()
    window = GlobalWindow()
    during = [out for b in range(2) for out in fn.process(
        raw_images(encoded("PNG", b)), timestamp=MIN_TIMESTAMP, window=window)]
    after = list(fn.finish_bundle())
    fn.teardown()
    assert len(during) + len(after) == 2
    assert all(isinstance(out, WindowedValue) and list(out.windows) == [window]
               and out.timestamp == MIN_TIMESTAMP for out in during + after)


def test_ahead_must_not_be_negative():
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        inference._Decode(SPEC, 10_000, "pillow", None, ahead=-1)


def test_pillow_decodes_gif_for_a_grayscale_teacher_where_tf_fails(gpu_settings):
    images = raw_images(encoded("GIF", 3))
    (keys, _), failed = decode("pillow", images)
    assert len(keys) == 1 and not failed
    decoded, failed = decode("tf", images)
    assert decoded is None
    assert failed[0][ERROR_MESSAGE].startswith(
        "InvalidArgumentError: channels must be 0 or 3 for GIF")


def test_only_the_tf_decoder_sets_the_gpu_memory_policy(gpu_settings):
    runtime = devices.TeacherRuntime(gpu_memory_limit_mb=2048)
    decode("pillow", raw_images(encoded("PNG", 4)), runtime)
    assert gpu_settings == []
    decode("tf", raw_images(encoded("PNG", 4)), runtime)
    assert gpu_settings == [runtime]
    decode("tf", raw_images(encoded("PNG", 4)))
    assert gpu_settings == [runtime, devices.TeacherRuntime()]


def test_unknown_decoder_is_refused_when_the_step_is_built():
    with pytest.raises(ValueError, match="unknown decoder 'cv2'"):
        inference.TeacherInference(model_handler=None, image_spec=SPEC, outputs="logits", topk=1,
                                   decoder="cv2")


class _CountingTeacher(ModelHandler):
    """Raises a data error on any batch holding an image whose first pixel is 255."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.calls: list[int] = []
        self._batch_size = batch_size

    def batch_elements_kwargs(self):
        return {"max_batch_size": self._batch_size}

    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        self.calls.append(len(batch))
        if any(image.flat[0] == 255 for image in batch):
            raise ValueError(f"bad pixel in a batch of {len(batch)}\nsecond line")
        return [PredictionResult(image, (image.reshape(-1)[:2], image.reshape(-1)[:2]))
                for image in batch]


@pytest.mark.parametrize("bad", [[], [5], [0, 13], list(range(16))])
def test_a_failing_teacher_batch_is_retried_in_halves_down_to_the_bad_images(bad):
    pixels = np.arange(16, dtype=np.uint8).reshape(16, 1, 1, 1).repeat(2, axis=1)
    pixels[bad, 0, 0, 0] = 255
    keys = [("f", i, b"%d" % i) for i in range(16)]
    teacher = _CountingTeacher(batch_size=8)
    [result] = inference.TeacherOnBatches(teacher).run_inference((keys, pixels), None)
    errors = result.inference.errors
    assert result.example == keys
    assert [i for i, e in enumerate(errors) if e] == bad
    assert all(e == "ValueError: bad pixel in a batch of 1" for e in errors if e)
    scored = [[i, i] for i in range(16) if i not in bad]  # the fake's output: 2 pixels
    if scored:
        np.testing.assert_array_equal(result.inference.raw, scored)
        np.testing.assert_array_equal(result.inference.probabilities, scored)
    else:
        assert result.inference.raw is None and result.inference.probabilities is None
    # Two teacher batches of 8; each failing batch of n is split into n/2 + n/2, recursively.
    if not bad:
        assert teacher.calls == [8, 8]
    if bad == [5]:  # 8 fails -> 4 ok, 4 fails -> 2 fails -> 1 ok, 1 fails; 2 ok; then 8 ok
        assert teacher.calls == [8, 4, 4, 2, 1, 1, 2, 8]
    if len(bad) == 16:
        assert len(teacher.calls) == 2 * (2 * 8 - 1)


def test_a_device_error_is_not_retried_and_fails_the_bundle():
    class OutOfMemory(_CountingTeacher):
        def run_inference(self, batch, model, inference_args=None):
            self.calls.append(len(batch))
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    teacher = OutOfMemory(batch_size=4)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        inference.TeacherOnBatches(teacher).run_inference(
            ([("f", i, b"") for i in range(8)], np.zeros((8, 1, 1, 1), np.uint8)), None)
    assert teacher.calls == [4]


class _ThreadRecordingTeacher(_CountingTeacher):
    """A `_CountingTeacher` that notes the thread of each call, and raises the device's
    out-of-memory error on a batch whose first image's first pixel is 254."""

    def __init__(self, batch_size: int):
        super().__init__(batch_size)
        self.threads: set[int] = set()
        self.device_errors = 0

    def run_inference(self, batch, model, inference_args=None):
        self.threads.add(threading.get_ident())
        if batch[0].flat[0] == 254:
            self.device_errors += 1
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return super().run_inference(batch, model, inference_args)


def run_teacher(threads: int, elements, teacher: ModelHandler) -> list:
    """RunInference's handler then `_ToPredictions` over one bundle of (keys, pixels)
    elements, as the fused stage runs them; the tables' rows in emitted order, and whether each
    output was emitted as a WindowedValue in `window`."""
    handler = inference.TeacherOnBatches(teacher, threads=threads)
    to_predictions = inference._ToPredictions("probabilities", topk=2, in_flight=max(threads, 1))
    to_predictions.setup()
    to_predictions.start_bundle()
    window, outputs = GlobalWindow(), []
    for element in elements:
        [result] = handler.run_inference(element, None)
        outputs += to_predictions.process(result, timestamp=MIN_TIMESTAMP, window=window)
    outputs += list(to_predictions.finish_bundle() or ())
    return [(getattr(out, "value", out).to_pylist(),
             isinstance(out, WindowedValue) and list(out.windows) == [window]) for out in outputs]


def teacher_elements(n: int, bad: dict[int, int]):
    """n elements of 5 images each, on which the fake teacher outputs [1, 0]; `bad` {e: v}
    sets the first pixel of element e's first image to v."""
    elements = []
    for e in range(n):
        pixels = np.zeros((5, 1, 1, 2), np.uint8)
        pixels[:, 0, 0, 0], pixels[:, 0, 0, 1] = 1, 0  # the fake's output: [1, 0]
        if e in bad:
            pixels[0, 0, 0, 0] = bad[e]
        elements.append(([("in.tfrecord", 5 * e + i, b"id%d" % (5 * e + i), 7) for i in range(5)],
                         pixels))
    return elements


def test_a_threaded_teacher_runs_off_the_bundle_thread_and_emits_what_the_serial_one_does():
    # 6 elements; element 2 holds an image the teacher fails on (a dead letter after splits).
    elements = teacher_elements(6, bad={2: 255})
    serial_teacher, threaded_teacher = _ThreadRecordingTeacher(4), _ThreadRecordingTeacher(4)
    serial = run_teacher(0, elements, serial_teacher)
    threaded = run_teacher(1, elements, threaded_teacher)
    assert [rows for rows, _ in threaded] == [rows for rows, _ in serial]
    assert all(in_window for _, in_window in threaded)
    rows = [row for table, _ in serial for row in table]
    assert [row[INDEX] for row in rows] == list(range(30))
    assert [row[INDEX] for row in rows if row[ERROR_STAGE]] == [10]
    assert serial_teacher.threads == {threading.get_ident()}
    assert len(threaded_teacher.threads) == 1
    assert threaded_teacher.threads != {threading.get_ident()}
    assert threaded_teacher.calls == serial_teacher.calls


class _OverlapTeacher(_ThreadRecordingTeacher):
    """Its first two calls return only once both are running: two calls at once, or a
    BrokenBarrierError after 10 s."""

    def __init__(self, batch_size: int):
        super().__init__(batch_size)
        self._barrier = threading.Barrier(2, timeout=10)
        self._first_calls = itertools.count()

    def run_inference(self, batch, model, inference_args=None):
        if next(self._first_calls) < 2:
            self._barrier.wait()
        return super().run_inference(batch, model, inference_args)


def test_two_teacher_threads_run_two_batches_at_once_and_emit_in_order():
    elements = teacher_elements(7, bad={3: 255})
    serial = run_teacher(0, elements, _ThreadRecordingTeacher(5))
    teacher = _OverlapTeacher(5)
    overlapped = run_teacher(2, elements, teacher)
    assert [rows for rows, _ in overlapped] == [rows for rows, _ in serial]
    assert [row[INDEX] for table, _ in overlapped for row in table] == list(range(35))
    assert all(in_window for _, in_window in overlapped)
    assert len(teacher.threads) == 2 and threading.get_ident() not in teacher.threads


def test_a_device_error_with_two_teacher_threads_fails_the_bundle():
    teacher = _ThreadRecordingTeacher(5)
    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM when allocating"):
        run_teacher(2, teacher_elements(6, bad={2: 254}), teacher)
    assert teacher.device_errors == 1


class _ShortTeacher(_CountingTeacher):
    """Returns one result fewer than the images it is given."""

    def run_inference(self, batch, model, inference_args=None):
        return super().run_inference(batch, model, inference_args)[:-1]


def test_a_handler_returning_too_few_rows_fails_the_bundle():
    # Its images would otherwise be lost, or take their neighbours' scores.
    pixels = np.zeros((4, 1, 1, 2), np.uint8)
    with pytest.raises(RuntimeError, match=r"returned \[3\] rows of outputs for a batch of 4"):
        inference.TeacherOnBatches(_ShortTeacher(4)).run_inference(
            ([("f", i, b"") for i in range(4)], pixels), None)


def test_teacher_threads_are_checked():
    with pytest.raises(ValueError, match="threads must be >= 0, got -1"):
        inference.TeacherOnBatches(_CountingTeacher(4), threads=-1)
    with pytest.raises(ValueError, match="teacher_threads must be >= 1, got 0"):
        inference.TeacherInference(model_handler=None, image_spec=SPEC, outputs="logits", topk=1,
                                   teacher_threads=0)


def test_a_device_error_on_the_teachers_thread_fails_the_bundle():
    teacher = _ThreadRecordingTeacher(4)
    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM when allocating"):
        run_teacher(1, teacher_elements(5, bad={1: 254}), teacher)
    # Not retried in halves: a device error is not the data's.
    assert teacher.device_errors == 1


def test_a_batch_in_flight_pickles_without_waiting_and_cannot_be_unpickled():
    # Beam samples element sizes by pickling; that must not wait for the teacher, and the
    # batch must never be rebuilt elsewhere without its result.
    pending = inference._InFlight(concurrent.futures.Future())  # never completes
    pickled = []
    dumping = threading.Thread(target=lambda: pickled.append(pickle.dumps(
        PredictionResult([("f", 0, b"x", 1)], pending))), daemon=True)
    dumping.start()
    dumping.join(timeout=10)
    assert pickled, "pickling waited for the teacher"
    data = pickled[0]
    with pytest.raises(RuntimeError, match="a teacher batch still running was serialized"):
        pickle.loads(data)


@pytest.mark.parametrize("ahead", [0, 2])
def test_the_teachers_metrics_are_counted_whichever_thread_it_runs_on(ahead):
    # 3 read batches of 8 images, one of which makes its teacher batch of 8 raise: that batch
    # is split 3 times (8 -> 4 + 4, 4 -> 2 + 2, 2 -> 1 + 1) to find it.
    images = [fakes.fake_image(i, i % fakes.NUM_CLASSES, 100) for i in range(23)]
    images.insert(13, fakes.fake_image(99, fakes.CLASS_RAISE, 100))
    batches = [[RawImage(im.image_id, im.encoded, "in.tfrecord", 8 * b + i)
                for i, im in enumerate(images[8 * b:8 * b + 8])] for b in range(3)]
    spec = fakes.fake_spec(8)
    pipeline = TestPipeline(runner="DirectRunner")
    _ = (pipeline | beam.Create(batches, reshuffle=False)
         | inference.TeacherInference(fakes.FakeTeacherHandler(8), spec.image, spec.outputs,
                                      topk=2, decoder="pillow", decode_ahead=ahead))
    result = pipeline.run()
    result.wait_until_finish()

    def metric(name, kind):
        [found] = result.metrics().query(MetricsFilter().with_namespace("ns_data")
                                         .with_name(name))[kind]
        return found.committed

    assert metric("teacher_batches_split", "counters") == 3
    assert metric("images_scored", "counters") == 23
    assert metric("failed_inference", "counters") == 1
    assert metric("teacher_batch_ms", "distributions").count == 3  # one per read batch
