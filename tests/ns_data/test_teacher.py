"""Tests for the teacher in `ns_data/teacher.py`: output math, signature inspection, inference.

The SavedModel tests use one tiny Keras 3 model exported with `model.export` (the path the
trainer takes), built once per module.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from ns_data import teacher
from ns_data.devices import TeacherRuntime
from ns_data.images import ImageSpec
from ns_data.teacher import TeacherModelHandler, TeacherSpec

HEIGHT, WIDTH, CHANNELS, NUM_CLASSES = 6, 5, 3, 4


def np_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_spec(**overrides) -> TeacherSpec:
    fields = dict(path="unused", image=ImageSpec(2, 2, 3), num_classes=3, input_name="x",
                  output_name="y")
    fields.update(overrides)
    return TeacherSpec(**fields)


# --------------------------------------------------------------------------------------------
# to_probabilities
# --------------------------------------------------------------------------------------------

LOGITS = np.array([[2.0, 1.0, 0.1, -1.5],
                   [0.0, 0.0, 0.0, 0.0],
                   [-3.0, 5.0, 4.5, 0.2]])


def test_logits_softmax():
    probs = teacher.to_probabilities(LOGITS, "logits")
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, np_softmax(LOGITS), atol=1e-7)
    np.testing.assert_allclose(probs[1], [0.25] * 4, atol=1e-7)


@pytest.mark.parametrize("temperature", [0.25, 0.5, 2.0, 10.0])
def test_logits_temperature(temperature):
    probs = teacher.to_probabilities(LOGITS, "logits", temperature)
    np.testing.assert_allclose(probs, np_softmax(LOGITS / temperature), atol=1e-7)


def test_temperature_sharpens_below_one_and_flattens_above():
    base = teacher.to_probabilities(LOGITS, "logits").max(axis=1)
    sharp = teacher.to_probabilities(LOGITS, "logits", 0.5).max(axis=1)
    flat = teacher.to_probabilities(LOGITS, "logits", 2.0).max(axis=1)
    # Row 1 is uniform at any temperature; the others move.
    for row in (0, 2):
        assert sharp[row] > base[row] > flat[row]
    assert sharp[1] == base[1] == flat[1] == pytest.approx(0.25)


def test_huge_logits_do_not_overflow():
    probs = teacher.to_probabilities(np.array([[1000.0, 0.0, -1000.0]]), "logits")
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0]], atol=1e-7)


def test_probabilities_pass_through_at_temperature_one():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(teacher.to_probabilities(p, "probabilities"), p, atol=1e-7)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_probabilities_are_re_tempered(temperature):
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    with np.errstate(divide="ignore"):
        expected = np_softmax(np.log(p) / temperature)
    probs = teacher.to_probabilities(p, "probabilities", temperature)
    np.testing.assert_allclose(probs, expected, atol=1e-7)
    # A zero probability stays zero; the rest still sums to one.
    assert probs[2, 2] == 0.0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_non_finite_rows_stay_non_finite_and_others_are_untouched():
    out = np.array([[1.0, np.nan, 0.0], [1.0, 2.0, 3.0]])
    probs = teacher.to_probabilities(out, "logits")
    assert not np.all(np.isfinite(probs[0]))
    np.testing.assert_allclose(probs[1], np_softmax([1.0, 2.0, 3.0]), atol=1e-7)


# --------------------------------------------------------------------------------------------
# output_error
# --------------------------------------------------------------------------------------------

def row_error(raw, kind, temperature=1.0):
    raw = np.asarray(raw, dtype=np.float64)
    return teacher.output_error(raw, teacher.to_probabilities(raw[None], kind, temperature)[0],
                                kind)


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
@pytest.mark.parametrize("raw", [[0.5, np.nan, 0.5], [np.inf, 0.0, 0.0], [0.2, -np.inf, 0.8]],
                         ids=["nan", "inf", "-inf"])
def test_output_error_non_finite(raw, kind):
    error = row_error(raw, kind)
    assert error is not None and "non-finite" in error


@pytest.mark.parametrize("raw", [[0.3, 0.3, 0.3], [2.0, -1.0, 0.0], [0.6, 0.6, -0.2],
                                 [1.5, -0.25, -0.25]],
                         ids=["sum<1", "logits", "negative", "above-one"])
def test_output_error_not_probabilities_hints_logits(raw):
    error = row_error(raw, "probabilities")
    assert error is not None
    assert "not a probability vector" in error
    assert "--teacher_outputs=logits" in error


@pytest.mark.parametrize("raw, kind", [
    ([2.0, -1.0, 0.0], "logits"),
    ([0.2, 0.3, 0.5], "probabilities"),
    ([0.2, 0.3, 0.5 + 5e-4], "probabilities"),  # float rounding is tolerated
    ([0.0, 1.0, 0.0], "probabilities"),
])
def test_output_error_valid_row(raw, kind):
    assert row_error(raw, kind) is None
    assert row_error(raw, kind, temperature=2.0) is None


@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")
def test_output_error_when_temperature_overflows():
    error = row_error([1e308, 0.0, 0.0], "logits", temperature=0.5)
    assert error == "probabilities are not finite after temperature scaling"


# --------------------------------------------------------------------------------------------
# scale_pixels and TeacherSpec
# --------------------------------------------------------------------------------------------

PIXELS = np.array([[0, 51, 255], [128, 1, 254]], dtype=np.uint8)


@pytest.mark.parametrize("input_range", [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-0.5, 2.5)])
def test_scale_pixels_float_ranges(input_range):
    low, high = input_range
    scaled = teacher.scale_pixels(PIXELS, make_spec(input_range=input_range))
    assert scaled.dtype == np.float32
    expected = low + PIXELS.astype(np.float64) / 255.0 * (high - low)
    np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-6)
    assert scaled[0, 0] == pytest.approx(low) and scaled[0, 2] == pytest.approx(high)


def test_scale_pixels_uint8_passthrough():
    scaled = teacher.scale_pixels(PIXELS, make_spec(input_dtype="uint8", input_range=(-1.0, 1.0)))
    assert scaled.dtype == np.uint8
    np.testing.assert_array_equal(scaled, PIXELS)


@pytest.mark.parametrize("overrides, match", [
    (dict(outputs="softmax"), "outputs must be one of"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(num_classes=1), "at least 2 classes"),
    (dict(input_dtype="float16"), "unsupported teacher input dtype"),
    (dict(input_range=(1.0, 1.0)), "high > low"),
])
def test_teacher_spec_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_spec(**overrides)


# --------------------------------------------------------------------------------------------
# A real SavedModel
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_teacher(tmp_path_factory):
    """A tiny Keras 3 classifier exported as a SavedModel: (model, export path)."""
    import keras

    keras.utils.set_random_seed(1234)
    inputs = keras.Input((HEIGHT, WIDTH, CHANNELS), name="pixels")
    x = keras.layers.Conv2D(3, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    logits = keras.layers.Dense(NUM_CLASSES)(x)
    model = keras.Model(inputs, logits)
    path = str(tmp_path_factory.mktemp("teacher") / "saved_model")
    model.export(path)
    return model, path


@pytest.fixture
def teacher_copy(keras_teacher, tmp_path):
    """A private copy of the export, for tests that add metadata to it."""
    path = str(tmp_path / "teacher")
    shutil.copytree(keras_teacher[1], path)
    return path


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, size=(n, HEIGHT, WIDTH, CHANNELS), dtype=np.uint8))


@pytest.mark.slow
def test_inspect_teacher_reads_the_signature(keras_teacher):
    _, path = keras_teacher
    spec = teacher.inspect_teacher(path, batch_size=4)
    signature = tf.saved_model.load(path).signatures["serving_default"]
    _, input_specs = signature.structured_input_signature
    assert spec.image == ImageSpec(HEIGHT, WIDTH, CHANNELS)
    assert spec.num_classes == NUM_CLASSES
    assert spec.input_name == "pixels"
    assert [spec.input_name] == list(input_specs)
    assert [spec.output_name] == list(signature.structured_outputs)
    assert spec.input_dtype == "float32"
    # Without metadata: the documented defaults.
    assert spec.input_range == (0.0, 1.0)
    assert spec.outputs == "logits"
    assert spec.signature == "serving_default"
    assert spec.batch_size == 4
    assert spec.path == path


@pytest.mark.slow
def test_inspect_teacher_uses_metadata(teacher_copy):
    teacher.write_metadata(teacher_copy, teacher.TeacherMetadata(
        input_range=(-1, 1), outputs="probabilities", image_size=(12, 10)))
    assert teacher.read_metadata(teacher_copy).outputs == "probabilities"
    spec = teacher.inspect_teacher(teacher_copy)
    assert spec.input_range == (-1.0, 1.0)
    assert spec.outputs == "probabilities"
    assert spec.image == ImageSpec(12, 10, CHANNELS)
    assert spec.num_classes == NUM_CLASSES


@pytest.mark.slow
def test_inspect_teacher_arguments_override_metadata(teacher_copy):
    teacher.write_metadata(teacher_copy, teacher.TeacherMetadata(
        input_range=(-1, 1), outputs="probabilities", image_size=(12, 10)))
    spec = teacher.inspect_teacher(teacher_copy, input_range=(0.0, 255.0), outputs="logits",
                                   image_size=(HEIGHT, WIDTH), temperature=2.0)
    assert spec.input_range == (0.0, 255.0)
    assert spec.outputs == "logits"
    assert spec.image == ImageSpec(HEIGHT, WIDTH, CHANNELS)
    assert spec.temperature == 2.0


def test_read_metadata_without_file(tmp_path):
    assert teacher.read_metadata(str(tmp_path)) == teacher.TeacherMetadata()


def test_metadata_round_trips_writes_only_what_is_set_and_refuses_bad_values(tmp_path, caplog):
    metadata = teacher.TeacherMetadata(image_size=(28, 28), input_range=(0.0, 255.0),
                                       outputs="probabilities", class_names=("a", "b"), step=3)
    teacher.write_metadata(str(tmp_path), metadata)
    text = (tmp_path / teacher.METADATA_FILE).read_text()
    assert json.loads(text) == {"image_size": [28, 28], "input_range": [0.0, 255.0],
                                "outputs": "probabilities", "class_names": ["a", "b"], "step": 3}
    assert teacher.read_metadata(str(tmp_path)) == metadata
    (tmp_path / teacher.METADATA_FILE).write_text('{"outputs": "logits", "colour": "blue"}')
    assert teacher.read_metadata(str(tmp_path)) == teacher.TeacherMetadata(outputs="logits")
    assert "ignoring keys ['colour']" in caplog.text
    with pytest.raises(ValueError, match="outputs must be one of .*, got 'softmax'"):
        teacher.TeacherMetadata.from_json('{"outputs": "softmax"}')


def test_inspect_teacher_rejects_non_saved_model(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"not a saved model")
    with pytest.raises(ValueError, match="is not a SavedModel directory"):
        teacher.inspect_teacher(str(tmp_path))


@pytest.mark.slow
def test_inspect_teacher_rejects_missing_signature(keras_teacher):
    with pytest.raises(ValueError, match=r"no signature 'predict'.*'serving_default'"):
        teacher.inspect_teacher(keras_teacher[1], signature="predict")


@pytest.mark.slow
@pytest.mark.parametrize("override, match", [
    (dict(image_size=(12, 10)), r"--image_size=12,10, but teacher input 'pixels' takes 6x5 "
                                r"images \(shape \[-1, 6, 5, 3\]\)"),
    (dict(channels=1), "--channels=1, but teacher input 'pixels' takes 3-channel images"),
])
def test_inspect_teacher_refuses_a_shape_its_signature_cannot_take(keras_teacher, override,
                                                                    match):
    with pytest.raises(ValueError, match=match):
        teacher.inspect_teacher(keras_teacher[1], **override)
    spec = teacher.inspect_teacher(keras_teacher[1], image_size=(HEIGHT, WIDTH),
                                   channels=CHANNELS)
    assert spec.image == ImageSpec(HEIGHT, WIDTH, CHANNELS)


@pytest.mark.slow
def test_inspect_teacher_rejects_bad_output_key(keras_teacher):
    with pytest.raises(ValueError, match=r"no output 'probs'; it has \['output_0'\]"):
        teacher.inspect_teacher(keras_teacher[1], output_name="probs")


class RecordingSignature:
    """Wraps the loaded teacher's function and records the batch shape of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch):
        self.shapes.append(tuple(batch.shape))
        return self.fn(batch)


@pytest.mark.slow
@pytest.mark.parametrize("input_range, temperature", [((0.0, 1.0), 1.0), ((-1.0, 1.0), 0.5)])
def test_handler_matches_keras_and_pads_every_batch(keras_teacher, input_range, temperature):
    model, path = keras_teacher
    spec = teacher.inspect_teacher(path, batch_size=4, input_range=input_range,
                                   temperature=temperature)
    handler = TeacherModelHandler(spec)
    loaded = handler.load_model()
    recorder = RecordingSignature(loaded._fn)
    loaded._fn = recorder
    batch = images(5)

    results = list(handler.run_inference(batch, loaded))

    assert recorder.shapes == [(4, HEIGHT, WIDTH, CHANNELS)] * 2
    scaled = np.stack(batch).astype(np.float64) / 255.0 * (input_range[1] - input_range[0])
    scaled = (scaled + input_range[0]).astype(np.float32)
    logits = np.asarray(model(scaled))
    assert len(results) == 5
    for image, result, want_logits in zip(batch, results, logits):
        np.testing.assert_array_equal(result.example, image)
        raw, probs = result.inference
        np.testing.assert_allclose(raw, want_logits, atol=1e-5)
        np.testing.assert_allclose(probs, np_softmax(want_logits / temperature), atol=1e-5)
        assert probs.dtype == np.float32
    # `scores`, which TeacherOnBatches calls, gives the same rows as two arrays, padded alike.
    recorder.shapes.clear()
    raw, probs = handler.scores(np.stack(batch), loaded)
    assert recorder.shapes == [(4, HEIGHT, WIDTH, CHANNELS)] * 2
    np.testing.assert_allclose(raw, logits, atol=1e-5)
    np.testing.assert_allclose(probs, np_softmax(logits / temperature), atol=1e-5)
    empty = handler.scores(np.zeros((0, HEIGHT, WIDTH, CHANNELS), np.uint8), loaded)
    assert [a.shape for a in empty] == [(0, spec.num_classes)] * 2


@pytest.mark.slow
def test_handler_results_do_not_depend_on_batch_position(keras_teacher):
    # The zero padding must not leak into real rows: one image alone (3 rows of padding)
    # gives the same output as in a full batch.
    _, path = keras_teacher
    handler = TeacherModelHandler(teacher.inspect_teacher(path, batch_size=4))
    loaded = handler.load_model()
    batch = images(4, seed=1)
    full = handler.run_inference(batch, loaded)
    alone = handler.run_inference(batch[2:3], loaded)
    assert len(alone) == 1
    np.testing.assert_allclose(alone[0].inference[0], full[2].inference[0], atol=1e-6)


class _RecordingStrategy:
    """TF's default strategy, recording that the teacher was loaded and run through it: on a TPU
    the same calls go through a TPUStrategy."""

    def __init__(self):
        self._strategy = tf.distribute.get_strategy()
        self.scopes = self.runs = 0

    def scope(self):
        self.scopes += 1
        return self._strategy.scope()

    def run(self, fn, args):
        self.runs += 1
        return self._strategy.run(fn, args=args)

    def experimental_local_results(self, value):
        return self._strategy.experimental_local_results(value)


class _TPUBackend:
    """A TPU VM as `ns_data.devices` sees it, with the default strategy standing in."""

    def __init__(self):
        self.strategy = _RecordingStrategy()

    def tpu_present(self):
        return True

    def initialize_tpu(self):
        return self.strategy


def _outputs(path: str, runtime: TeacherRuntime, backend=None) -> np.ndarray:
    spec = teacher.inspect_teacher(path, batch_size=4)
    loaded = teacher.LoadedTeacher(spec, runtime, backend)
    batch = teacher.scale_pixels(np.stack(images(4, seed=3)), spec)
    return loaded(batch)


@pytest.mark.slow
def test_tpu_placement_loads_and_runs_the_teacher_through_the_strategy(
        keras_teacher, fresh_placements):
    model, path = keras_teacher
    backend = _TPUBackend()
    raw = _outputs(path, TeacherRuntime(), backend)
    assert backend.strategy.scopes == 1  # variables created under the strategy
    assert backend.strategy.runs == 1  # traced once, inside the one compiled function
    want = np.asarray(model(np.stack(images(4, seed=3)).astype(np.float32) / 255.0))
    np.testing.assert_allclose(raw, want, atol=1e-5)


@pytest.mark.slow
def test_jit_compile_and_mixed_precision_match_float32(keras_teacher, fresh_placements):
    _, path = keras_teacher
    plain = _outputs(path, TeacherRuntime())
    np.testing.assert_allclose(_outputs(path, TeacherRuntime(jit_compile=True)), plain,
                               atol=1e-5)
    mixed = _outputs(path, TeacherRuntime(precision="mixed"))
    # bfloat16 keeps 8 bits of mantissa: logits agree to about 1%, argmax on every row here.
    np.testing.assert_allclose(mixed, plain, rtol=0.05, atol=0.05)
    np.testing.assert_array_equal(mixed.argmax(axis=1), plain.argmax(axis=1))


@pytest.mark.slow
def test_handler_rejects_wrong_image_shape(keras_teacher):
    handler = TeacherModelHandler(teacher.inspect_teacher(keras_teacher[1], batch_size=4))
    loaded = handler.load_model()
    wrong = [np.zeros((HEIGHT + 1, WIDTH, CHANNELS), dtype=np.uint8)] * 2
    with pytest.raises(ValueError, match="the teacher expects"):
        handler.run_inference(wrong, loaded)


def test_handler_batching_knobs():
    spec = make_spec(batch_size=7)
    handler = TeacherModelHandler(spec, large_model=True, model_copies=2)
    kwargs = handler.batch_elements_kwargs()
    assert kwargs["min_batch_size"] == kwargs["max_batch_size"] == 7
    assert handler.share_model_across_processes()
    assert handler.model_copies() == 2
    assert handler.get_num_bytes([np.zeros((2, 2, 3), np.uint8)] * 3) == 36
    assert handler.get_metrics_namespace() == "ns_data_teacher"


# --------------------------------------------------------------------------------------------
# sample_problem: the launch check on real input images
# --------------------------------------------------------------------------------------------

def _sample(logits: np.ndarray, **spec):
    spec = make_spec(num_classes=logits.shape[1], **spec)
    return teacher.sample_problem(
        logits, teacher.to_probabilities(logits, spec.outputs, spec.temperature), spec)


def _healthy_logits(n: int = 64, classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), rng.integers(0, classes, n)] += 4.0
    return logits


def test_a_healthy_sample_passes():
    assert _sample(_healthy_logits()) is None
    assert _sample(np_softmax(_healthy_logits()), outputs="probabilities") is None


def test_softmax_outputs_read_as_logits_are_refused():
    problem = _sample(np_softmax(_healthy_logits()))
    assert problem.startswith("every output row on 64 input images is already a probability "
                              "vector, but the teacher is read as returning logits")
    assert problem.endswith("pass --teacher_outputs=probabilities")
    # One row that is not a probability vector: logits after all.
    mixed = np_softmax(_healthy_logits())
    mixed[3] = [5.0] + [0.0] * 9
    assert _sample(mixed) is None


def test_one_class_for_every_image_is_refused_with_the_likely_causes():
    logits = _healthy_logits()
    logits[:, 1] += 50.0
    problem = _sample(logits, input_range=(0.0, 255.0))
    assert problem.startswith("the teacher labels all 64 sampled input images as class 1 "
                              "(--input_range=0,255, --teacher_outputs=logits)")
    # Too few images to tell a bias from a corpus of one class.
    assert _sample(logits[:teacher.MIN_SAMPLE_FOR_CLASS_CHECK - 1]) is None


def test_saturated_logits_are_refused_as_the_wrong_pixel_scale():
    logits = _healthy_logits()
    assert _sample(logits * 20) is None  # a very confident teacher: median gap ~80
    problem = _sample(logits * 255, input_range=(0.0, 255.0))
    assert problem.startswith("the teacher's logits on 64 sampled input images are saturated "
                              "(median gap ")
    assert "(--input_range=0,255, --teacher_outputs=logits)" in problem
    gap = np.median(np.diff(np.sort(logits * 255, axis=1)[:, -2:], axis=1))
    assert f"median gap {gap:.0f} " in problem and gap > teacher.SATURATED_LOGIT_MARGIN
    # Probabilities, and a uint8 input (it has no pixel scale), are not judged by it.
    assert _sample(logits * 255, input_dtype="uint8") is None


def test_near_uniform_probabilities_are_refused():
    logits = _healthy_logits() * 0.01
    problem = _sample(logits)
    assert problem.startswith("the teacher's probabilities on 64 sampled input images are near "
                              "uniform (median top-1 0.10")
    assert _sample(logits, temperature=5.0) is None  # flattened on purpose
