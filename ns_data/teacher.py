"""The teacher: what a SavedModel expects and returns, and a Beam ModelHandler that runs it.

A teacher is any TensorFlow SavedModel whose serving signature takes one batch of images
[N, H, W, C] and returns [N, num_classes] logits or probabilities. `inspect_teacher` reads the
signature from `saved_model.pb` without loading variables, plus the optional metadata file
`assets.extra/ns_teacher.json` that `ns_train` writes (input range, output kind, class names).
Command-line flags override both.

Beam's stock TF handler loads through tf_keras + tensorflow_hub and fails on Keras 3 exports, so
`TeacherModelHandler` loads with `tf.saved_model.load` instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from ns_data import devices
from ns_data.devices import TeacherRuntime
from ns_data.images import ImageSpec
from ns_data.lazy import tf

METADATA_FILE = "assets.extra/ns_teacher.json"
OUTPUT_KINDS = ("logits", "probabilities")
# Probabilities may be off by float rounding; anything further is a wrong --teacher_outputs.
PROBABILITY_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """Everything needed to feed a teacher and read its answer.

    Attributes:
      path: SavedModel directory (local or any Beam filesystem, e.g. gs://).
      image: decoded image geometry the signature expects.
      num_classes: width of the output.
      input_name: the signature's single input.
      output_name: the signature output holding logits or probabilities.
      input_dtype: "float32" (pixels scaled to `input_range`) or "uint8" (raw pixels).
      input_range: (low, high) that pixel values 0 and 255 map to.
      outputs: "logits" or "probabilities".
      temperature: logits are divided by it before the softmax (probabilities are re-tempered).
      signature: the serving signature name.
      batch_size: fixed batch the model always sees; the last batch is padded.
      class_names: the classes' names in output order, from `ns_teacher.json` (empty when it
        names none, or not one per output).
    """

    path: str
    image: ImageSpec
    num_classes: int
    input_name: str
    output_name: str
    input_dtype: str = "float32"
    input_range: tuple[float, float] = (0.0, 1.0)
    outputs: str = "logits"
    temperature: float = 1.0
    signature: str = "serving_default"
    batch_size: int = 64
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.outputs not in OUTPUT_KINDS:
            raise ValueError(f"teacher outputs must be one of {OUTPUT_KINDS}, got {self.outputs!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_classes < 2:
            raise ValueError(f"a teacher needs at least 2 classes, got {self.num_classes}")
        if self.input_dtype not in ("float32", "uint8"):
            raise ValueError(f"unsupported teacher input dtype {self.input_dtype}")
        low, high = self.input_range
        if not high > low:
            raise ValueError(f"input range must have high > low, got {self.input_range}")


@dataclasses.dataclass(frozen=True)
class TeacherMetadata:
    """What a teacher export's `assets.extra/ns_teacher.json` says (docs/teacher.md): the one
    place its keys are spelled. Every field is optional; flags override them all.

    Attributes:
      image_size: [height, width] images are resized to.
      channels: 1 or 3.
      input_range: what pixel values 0 and 255 map to for a float input.
      outputs: "logits" or "probabilities".
      num_classes: the output width.
      class_names: the classes' names, in output order.
      input_dtype, model, normalization, step, eval_top1: where the export came from (written
        by `ns_train`, read by nothing).
    """

    image_size: tuple[int, int] | None = None
    channels: int | None = None
    input_range: tuple[float, float] | None = None
    outputs: str | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    input_dtype: str | None = None
    model: str | None = None
    normalization: str | None = None
    step: int | None = None
    eval_top1: float | None = None

    def __post_init__(self):
        if self.outputs is not None and self.outputs not in OUTPUT_KINDS:
            raise ValueError(f"ns_teacher.json: outputs must be one of {OUTPUT_KINDS}, got "
                             f"{self.outputs!r}")

    def to_json(self) -> str:
        """The file's text: the fields that are set, keys sorted."""
        fields = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(self).items() if v not in (None, ())}
        return json.dumps(fields, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "ns_teacher.json") -> TeacherMetadata:
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            logging.warning("%s: ignoring keys %s (known: %s)", where, unknown, sorted(known))
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
                  if k in known}
        return cls(**fields)


def read_metadata(path: str) -> TeacherMetadata:
    """The teacher's `assets.extra/ns_teacher.json` (all fields unset when it has none)."""
    metadata_path = posixpath.join(path, METADATA_FILE)
    if not tf.io.gfile.exists(metadata_path):
        return TeacherMetadata()
    with tf.io.gfile.GFile(metadata_path) as f:
        return TeacherMetadata.from_json(f.read(), metadata_path)


def write_metadata(path: str, metadata: TeacherMetadata) -> None:
    """Records input range, output kind and the like next to an exported SavedModel."""
    metadata_path = posixpath.join(path, METADATA_FILE)
    tf.io.gfile.makedirs(posixpath.dirname(metadata_path))
    with tf.io.gfile.GFile(metadata_path, "w") as f:
        f.write(metadata.to_json())


def inspect_teacher(
    path: str,
    *,
    signature: str = "serving_default",
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    input_range: tuple[float, float] | None = None,
    outputs: str | None = None,
    output_name: str | None = None,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> TeacherSpec:
    """Builds a `TeacherSpec` from the SavedModel's signature, its metadata and overrides.

    Precedence for each field: explicit argument, then `ns_teacher.json`, then the signature's
    static shape, then a default (`input_range` 0..1, `outputs` logits).

    Raises:
      ValueError: with an actionable message when the model cannot serve as a teacher, or an
        `image_size` or `channels` argument contradicts the signature's fixed input shape.
    """
    pb_path = posixpath.join(path, "saved_model.pb")
    if not tf.io.gfile.exists(pb_path):
        raise ValueError(f"--teacher={path} is not a SavedModel directory (no saved_model.pb)")
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415 - see ns_data.lazy
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    signatures = saved_model.meta_graphs[0].signature_def
    if signature not in signatures:
        raise ValueError(
            f"teacher {path} has no signature {signature!r}; it has {sorted(signatures)}")
    sig = signatures[signature]
    if len(sig.inputs) != 1:
        raise ValueError(
            f"teacher signature {signature!r} must take one image batch, "
            f"takes {sorted(sig.inputs)}")
    (input_name, input_info), = sig.inputs.items()
    dims = [d.size for d in input_info.tensor_shape.dim]
    if len(dims) != 4:
        raise ValueError(f"teacher input {input_name!r} must be [N, H, W, C], has shape {dims}")
    if output_name is None:
        if len(sig.outputs) != 1:
            raise ValueError(
                f"teacher signature has outputs {sorted(sig.outputs)}; pick one with --output_key")
        output_name = next(iter(sig.outputs))
    elif output_name not in sig.outputs:
        raise ValueError(f"teacher has no output {output_name!r}; it has {sorted(sig.outputs)}")
    out_dims = [d.size for d in sig.outputs[output_name].tensor_shape.dim]
    if len(out_dims) != 2:
        raise ValueError(f"teacher output {output_name!r} must be [N, num_classes], is {out_dims}")

    metadata = read_metadata(path)
    height, width, in_channels = dims[1:]
    # A fixed input shape cannot take other images: the first call would fail deep in TF.
    if image_size and height > 0 and width > 0 and tuple(image_size) != (height, width):
        raise ValueError(f"--image_size={image_size[0]},{image_size[1]}, but teacher input "
                         f"{input_name!r} takes {height}x{width} images (shape {dims}); drop "
                         "the flag")
    if channels and in_channels > 0 and channels != in_channels:
        raise ValueError(f"--channels={channels}, but teacher input {input_name!r} takes "
                         f"{in_channels}-channel images (shape {dims}); drop the flag")
    image_size = image_size or metadata.image_size
    if image_size is None:
        if height <= 0 or width <= 0:
            raise ValueError("teacher input has no static height/width; pass --image_size")
        image_size = (height, width)
    if channels is None:
        channels = in_channels if in_channels > 0 else metadata.channels or 3
    if input_range is None:
        input_range = metadata.input_range or (0.0, 1.0)
        if metadata.input_range is None:
            logging.warning("Teacher %s records no input range; feeding pixels scaled to %s "
                            "(set --input_range to change).", path, input_range)
    num_classes = out_dims[1] if out_dims[1] > 0 else metadata.num_classes or 0
    if num_classes <= 0:
        raise ValueError("teacher output has no static class count and its metadata none")
    input_dtype = tf.dtypes.as_dtype(input_info.dtype).name
    return TeacherSpec(
        path=path,
        image=ImageSpec(image_size[0], image_size[1], channels),
        num_classes=num_classes,
        input_name=input_name,
        output_name=output_name,
        input_dtype=input_dtype,
        input_range=(float(input_range[0]), float(input_range[1])),
        outputs=outputs or metadata.outputs or "logits",
        temperature=temperature,
        signature=signature,
        batch_size=batch_size,
        class_names=(metadata.class_names if len(metadata.class_names) == num_classes else ()),
    )


def to_probabilities(outputs: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """Teacher outputs [N, C] → probabilities [N, C] (float32), tempered by `temperature`.

    Rows with non-finite values stay non-finite so `output_error` can report them.
    """
    x = np.asarray(outputs, dtype=np.float64)
    if kind == "probabilities":
        if temperature == 1.0:
            return x.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log(x)
    x = x / temperature
    with np.errstate(invalid="ignore", over="ignore"):
        x = x - np.max(x, axis=-1, keepdims=True)
        e = np.exp(x)
        return (e / np.sum(e, axis=-1, keepdims=True)).astype(np.float32)


def output_error(raw: np.ndarray, probabilities: np.ndarray, kind: str) -> str | None:
    """Why one row of teacher output cannot be a pseudo-label, or None when it can."""
    if not np.all(np.isfinite(raw)):
        return f"teacher output has non-finite values (NaN/inf): {np.asarray(raw)[:8].tolist()}"
    if kind == "probabilities":
        total = float(np.sum(raw))
        if np.any(raw < 0) or np.any(raw > 1) or abs(total - 1.0) > PROBABILITY_TOLERANCE:
            return (f"teacher output is not a probability vector (sum {total:.4f}, "
                    f"min {float(np.min(raw)):.4f}); did you mean --teacher_outputs=logits?")
    if not np.all(np.isfinite(probabilities)):
        return "probabilities are not finite after temperature scaling"
    return None


# The launch check's sample: enough images that one class for all of them is not chance.
MIN_SAMPLE_FOR_CLASS_CHECK = 32
# A median gap between the two largest logits above this on real images is a teacher fed pixels
# on far too large a scale (e.g. 0..255 to a 0..1 model): trained models give single digits
# (the tiny teacher: median 2.4, 90th percentile 6.1), and 255x its input gave a median of 600.
SATURATED_LOGIT_MARGIN = 100.0


def sample_problem(raw: np.ndarray, probabilities: np.ndarray, spec: TeacherSpec) -> str | None:
    """What is wrong with the teacher's outputs on a sample of real input images, or None.

    Catches the set-ups that give garbage without any per-image error: a softmax teacher read as
    logits (every row already a probability vector), a teacher that sees nothing in these
    images (all one class, or near-uniform probabilities), and logits saturated by pixels on
    far too large a scale; the last three most often come from the wrong pixel range.

    Args:
      raw: the teacher's outputs [n, C].
      probabilities: after `to_probabilities` [n, C].
      spec: the teacher's settings, for the message.
    """
    n, classes = probabilities.shape
    if n == 0:
        return None
    settings = (f"(--input_range={spec.input_range[0]:g},{spec.input_range[1]:g}, "
                f"--teacher_outputs={spec.outputs})")
    with np.errstate(invalid="ignore"):
        as_probabilities = ((raw >= 0).all(axis=1) & (raw <= 1).all(axis=1)
                            & (np.abs(raw.sum(axis=1) - 1.0) <= PROBABILITY_TOLERANCE))
    if spec.outputs == "logits" and n >= 2 and as_probabilities.all():
        return (f"every output row on {n} input images is already a probability vector, but "
                "the teacher is read as returning logits, which would flatten every label; pass "
                "--teacher_outputs=probabilities")
    if n < MIN_SAMPLE_FOR_CLASS_CHECK or classes < 3:
        return None
    labels = probabilities.argmax(axis=1)
    if (labels == labels[0]).all():
        return (f"the teacher labels all {n} sampled input images as class {labels[0]} "
                f"{settings}: check --input_range and --teacher_outputs against how it was "
                "trained, and that it was trained on images like these")
    if spec.outputs == "logits" and spec.input_dtype == "float32":
        top_two = np.sort(raw, axis=1)[:, -2:]
        margin = float(np.median(top_two[:, 1] - top_two[:, 0]))
        if margin > SATURATED_LOGIT_MARGIN:
            return (f"the teacher's logits on {n} sampled input images are saturated (median gap "
                    f"{margin:.0f} between the top two classes, every label at confidence 1.0) "
                    f"{settings}: the pixels are most likely on the wrong scale; check "
                    "--input_range against how it was trained")
    median_top = float(np.median(probabilities.max(axis=1)))
    # Within 10% of uniform: a weak but working teacher (a quick one in tests gives 1.28 / C)
    # is not refused, a blind one is.
    if median_top < 1.1 / classes and spec.temperature <= 1:
        return (f"the teacher's probabilities on {n} sampled input images are near uniform "
                f"(median top-1 {median_top:.3f} for {classes} classes) {settings}: check "
                "--input_range and --teacher_outputs against how it was trained")
    return None


def scale_pixels(images: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    """uint8 pixels → what the teacher's input expects (dtype and value range)."""
    if spec.input_dtype == "uint8":
        return images.astype(np.uint8, copy=False)
    low, high = spec.input_range
    return images.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)


class LoadedTeacher:
    """A loaded SavedModel signature, placed by a `TeacherRuntime`, called on fixed-size batches.

    The signature is wrapped in one `tf.function` with a fully static input signature, so it is
    traced (and with `jit_compile` or on a TPU, compiled) once per process and never again.
    """

    def __init__(self, spec: TeacherSpec, runtime: TeacherRuntime = TeacherRuntime(),
                 backend: devices.Backend | None = None):
        self.spec = spec
        self.placement = devices.place(runtime, backend)
        with self.placement.scope():
            self._module = tf.saved_model.load(spec.path)  # keeps variables alive
        signature = self._module.signatures[spec.signature]

        def call(batch):
            return signature(**{spec.input_name: batch})[spec.output_name]

        strategy = self.placement.strategy
        if strategy is not None:
            def run(batch):
                return strategy.experimental_local_results(strategy.run(call, args=(batch,)))[0]
        else:
            device = self.placement.device

            def run(batch):
                with tf.device(device):
                    return call(batch)

        self._fn = tf.function(
            run, jit_compile=runtime.jit_compile or None, input_signature=[tf.TensorSpec(
                (spec.batch_size, *spec.image.shape), tf.as_dtype(spec.input_dtype))])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(tf.constant(batch)).numpy()


class TeacherModelHandler(ModelHandler[np.ndarray, PredictionResult, LoadedTeacher]):
    """Runs the teacher, un-noised, on uint8 images; yields raw outputs and probabilities.

    Every call sees exactly `spec.batch_size` images: a short batch is padded with zeros and the
    padding's outputs are dropped, so an XLA/TPU-compiled signature never recompiles. Each
    `PredictionResult.inference` is a (raw_output, probabilities) pair of float arrays.
    """

    def __init__(self, spec: TeacherSpec, *, runtime: TeacherRuntime = TeacherRuntime(),
                 large_model: bool = False, model_copies: int | None = None):
        super().__init__(
            min_batch_size=spec.batch_size,
            max_batch_size=spec.batch_size,
            large_model=large_model,
            model_copies=model_copies,
        )
        self.spec = spec
        self.runtime = runtime

    def load_model(self) -> LoadedTeacher:
        logging.info("Loading teacher %s", self.spec.path)
        return LoadedTeacher(self.spec, self.runtime)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: LoadedTeacher,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        images = np.stack(batch)
        raw, probabilities = self.scores(images, model)
        return [PredictionResult(example, (r, p))
                for example, r, p in zip(images, raw, probabilities)]

    def scores(self, images: np.ndarray, model: LoadedTeacher) -> tuple[np.ndarray, np.ndarray]:
        """(raw outputs, probabilities) [n, classes] of uint8 images [n, H, W, C], as two arrays
        (`run_inference` without a `PredictionResult` per image)."""
        if images.shape[1:] != self.spec.image.shape:
            raise ValueError(f"images have shape {images.shape[1:]}, "
                             f"the teacher expects {self.spec.image.shape}")
        n, size = len(images), self.spec.batch_size
        raws, probabilities = [], []
        for start in range(0, n, size):
            chunk = images[start:start + size]
            padded = np.zeros((size, *self.spec.image.shape), dtype=np.uint8)
            padded[:len(chunk)] = chunk
            raw = model(scale_pixels(padded, self.spec))
            if raw.shape != (size, self.spec.num_classes):
                raise ValueError(f"teacher returned shape {raw.shape}, "
                                 f"expected {(size, self.spec.num_classes)}")
            raws.append(raw[:len(chunk)])
            probabilities.append(to_probabilities(raws[-1], self.spec.outputs,
                                                  self.spec.temperature))
        if not raws:
            empty = np.zeros((0, self.spec.num_classes), np.float32)
            return empty, empty
        if len(raws) == 1:  # the usual call, one teacher batch: no copy
            return raws[0], probabilities[0]
        return np.concatenate(raws), np.concatenate(probabilities)

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "ns_data_teacher"
