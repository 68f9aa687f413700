"""Teacher inference on this CPU: batch 64 vs 256, jit_compile off vs on, float32 vs mixed.

    python -m bench.teacher [--work_dir /tmp/ns-bench-e2e] [--teachers light,heavy] [--rounds 3]

Every timed call is the project's own `ns_data.teacher.LoadedTeacher` (the SavedModel's serving
signature in one fixed-shape `tf.function`, placed on the CPU by `ns_data.devices`), from a
batch already through `teacher.scale_pixels` to the numpy result: the copy in, the model, the
copy out. One batch per batch size is fed again and again, so no decoding or scaling is timed.

Teachers:
- **light**: the tiny CNN of `bench.end_to_end.prepare` (`ns_train.tiny_teacher` trained 5
  epochs on the 5,000 labeled Fashion-MNIST train images; 28x28x1, logits), fed test images.
- **heavy**: `keras.applications.ResNet50(weights=None)` (random weights, seed 0; 224x224x3,
  1,000-way softmax, no preprocessing layer), exported once to `<work_dir>/resnet50-random` as
  `ns_train.tiny_teacher` exports (`model.export` + `ns_teacher.json`), fed random pixels.

Throughput (float32): per teacher, every batch size with jit_compile off and on. Each config is
loaded ("load s"), called once ("first call s": tracing, grappler or XLA compilation and one
batch; "compile s" is that minus one steady batch), called `--warmup` more times untimed, then
timed over `--rounds` rounds, each running every config on the same number of images, in
forward order on even rounds and reverse order on odd ones. Printed: the median images/s over
rounds and jit/no-jit as the median of the per-round ratios.

Precision: `--precision=mixed` turns on TensorFlow's oneDNN bfloat16 graph rewrite for the whole
process; it converts nothing on CPUs without bfloat16 instructions (avx512_bf16 or AMX). On the
light teacher and the Fashion-MNIST test images with their labels, through
`TeacherModelHandler.run_inference` (padding included), against float32: top-1 agreement, max
|probability difference| and accuracy, with the kernels that really ran in reduced precision
(read back from the graphs TensorFlow optimized), for
- `--precision=mixed` with jit_compile off and on (XLA compiles the function without that
  grappler rewrite);
- float16, emulated: grappler's `auto_mixed_precision_cpu` on the frozen serving signature in a
  `tf.compat.v1.Session`. Every input of a converted op is rounded to float16 and back while the
  arithmetic stays float32: a float16 device's rounding at op boundaries, not its float16
  accumulation.
Then float32 vs mixed images/s for each teacher (largest batch, jit off, interleaved rounds).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import platform
import shutil
import statistics
import time
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
from tensorflow.python.util import _pywrap_util_port

from bench.end_to_end import prepare
from ns_data import devices, fashion_mnist, teacher
from ns_data.devices import TeacherRuntime

TEACHERS = ("light", "heavy")
HEAVY_IMAGE = (224, 224, 3)
HEAVY_CLASSES = 1000
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")
_REDUCED = {tf.bfloat16.as_datatype_enum: "bfloat16", tf.float16.as_datatype_enum: "float16"}


@dataclasses.dataclass
class Run:
    """One loaded teacher configuration, its input batch and its start-up times."""

    spec: teacher.TeacherSpec
    model: teacher.LoadedTeacher
    pixels: np.ndarray
    mixed: bool
    load_s: float
    first_call_s: float
    first_output: np.ndarray
    kernels: collections.Counter


class RecordingBackend(devices.TensorFlowBackend):
    """The real TensorFlow calls, remembering the graph options a placement turned on.

    `--precision=mixed` sets process-wide optimizer options; the bench switches exactly those off
    for float32 configs and on for mixed ones, so the two can alternate in one process.
    """

    def __init__(self):
        self.graph_options: dict[str, bool] = {}

    def set_graph_options(self, options: dict[str, bool]) -> None:
        self.graph_options.update(options)
        super().set_graph_options(options)

    def use_mixed(self, on: bool) -> None:
        if self.graph_options:
            tf.config.optimizer.set_experimental_options(
                {name: on and value for name, value in self.graph_options.items()})


def heavy_teacher(work_dir: str) -> str:
    """ResNet50 with random weights as a teacher SavedModel, exported once under `work_dir`."""
    path = os.path.join(work_dir, "resnet50-random")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=HEAVY_IMAGE,
                                        classes=HEAVY_CLASSES)
    partial = path + ".partial"  # renamed when complete, so a killed export is never reused
    shutil.rmtree(partial, ignore_errors=True)
    model.export(partial, verbose=False)
    teacher.write_metadata(partial, teacher.TeacherMetadata(
        image_size=HEAVY_IMAGE[:2], channels=HEAVY_IMAGE[2], input_range=(0.0, 1.0),
        outputs="probabilities", num_classes=HEAVY_CLASSES))
    shutil.rmtree(path, ignore_errors=True)
    os.rename(partial, path)
    return path


def _op_name(op: str) -> str:
    """`_MklNativeFusedConv2D` → `FusedConv2D`: the op, not oneDNN's kernel prefix."""
    for prefix in ("_MklNative", "_Mkl", "_"):
        if op.startswith(prefix):
            return op[len(prefix):]
    return op


def _describe(kernels: collections.Counter, kinds: int = 6) -> str:
    """`12 (4 Conv2D, ...)`: the total and the most frequent kinds."""
    if not kernels:
        return "none"
    listed = ", ".join(f"{n} {name}" for name, n in kernels.most_common(kinds))
    more = f", +{len(kernels) - kinds} kinds" if len(kernels) > kinds else ""
    return f"{sum(kernels.values())} ({listed}{more})"


def call_recording_kernels(model: teacher.LoadedTeacher,
                           pixels: np.ndarray) -> tuple[np.ndarray, collections.Counter]:
    """Calls `model`; returns its output and the reduced-precision kernels of the graphs
    TensorFlow optimized during the call (a first call optimizes; later ones reuse them)."""
    ctx = context.context()
    ctx.export_run_metadata()  # drops graphs of calls made before, which it may still hold
    ctx.enable_run_metadata()
    try:
        output = model(pixels)
        metadata = ctx.export_run_metadata()
    finally:
        ctx.disable_run_metadata()
    kernels = collections.Counter()
    for graph in metadata.function_graphs:
        for node in graph.post_optimization_graph.node:
            if "T" in node.attr and node.attr["T"].type in _REDUCED:
                kernels[f"{_op_name(node.op)}:{_REDUCED[node.attr['T'].type]}"] += 1
    return output, kernels


def load(spec: teacher.TeacherSpec, runtime: TeacherRuntime, pixels: np.ndarray,
         warmup: int, backend: RecordingBackend) -> Run:
    """Loads and first-calls one configuration, then warms it up."""
    start = time.perf_counter()
    model = teacher.LoadedTeacher(spec, runtime, backend)
    load_s = time.perf_counter() - start
    mixed = runtime.precision == "mixed"
    # A cached placement does not set its options again, and a float32 config needs them off.
    backend.use_mixed(mixed)
    start = time.perf_counter()
    if mixed:
        output, kernels = call_recording_kernels(model, pixels)
    else:
        output, kernels = model(pixels), collections.Counter()
    first_call_s = time.perf_counter() - start
    for _ in range(warmup):
        model(pixels)
    return Run(spec, model, pixels, mixed, load_s, first_call_s, output, kernels)


def time_rounds(runs: list[Run], images: int, rounds: int,
                backend: RecordingBackend) -> list[list[float]]:
    """Images/s of every run in every round, each run on `images` images per round."""
    rates: list[list[float]] = [[] for _ in runs]
    for round_index in range(rounds):
        order = list(range(len(runs)))
        for i in order if round_index % 2 == 0 else reversed(order):
            run = runs[i]
            backend.use_mixed(run.mixed)
            calls = images // len(run.pixels)
            start = time.perf_counter()
            for _ in range(calls):
                run.model(run.pixels)
            rates[i].append(calls * len(run.pixels) / (time.perf_counter() - start))
    return rates


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of a ratio within each round (drift between rounds cancels)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def throughput(name: str, path: str, images: np.ndarray, batch_sizes: list[int],
               per_round: int, rounds: int, warmup: int,
               backend: RecordingBackend) -> dict[tuple[int, bool], Run]:
    """Prints the batch x jit_compile table of one teacher; returns its runs by (batch, jit)."""
    runs = {}
    for batch in batch_sizes:
        spec = teacher.inspect_teacher(path, batch_size=batch)
        pixels = teacher.scale_pixels(images[:batch], spec)
        for jit in (False, True):
            runs[batch, jit] = load(spec, TeacherRuntime(device="cpu", jit_compile=jit), pixels,
                                    warmup, backend)
    keys = list(runs)
    rates = dict(zip(keys, time_rounds([runs[k] for k in keys], per_round, rounds, backend)))
    print(f"\n{name}: {path}\n{per_round:,} images per config per round, {rounds} rounds, "
          f"float32, batch fed from teacher.scale_pixels")
    print(f"{'batch':>6}{'jit':>5}{'load s':>8}{'first call s':>14}{'compile s':>11}"
          f"{'images/s':>10}{'min..max':>16}{'jit/no-jit':>12}")
    for (batch, jit), run in runs.items():
        median = statistics.median(rates[batch, jit])
        ratio = f"{paired_ratio(rates[batch, True], rates[batch, False]):.2f}x" if jit else ""
        spread = f"{min(rates[batch, jit]):,.0f}..{max(rates[batch, jit]):,.0f}"
        print(f"{batch:>6}{'on' if jit else 'off':>5}{run.load_s:>8.2f}{run.first_call_s:>14.2f}"
              f"{run.first_call_s - batch / median:>11.2f}{median:>10,.0f}{spread:>16}"
              f"{ratio:>12}")
    return runs


def frozen_signature(spec: teacher.TeacherSpec) -> tuple[tf.Graph, str, str]:
    """The serving signature with its variables as constants: (graph, input, output tensor)."""
    module = tf.saved_model.load(spec.path)  # holds the variables while they are read
    signature = module.signatures[spec.signature]
    frozen = convert_variables_to_constants_v2(signature)
    # The frozen function returns the signature's outputs flat, in tf.nest order.
    output_names = tf.nest.flatten({name: name for name in signature.structured_outputs})
    output = frozen.outputs[output_names.index(spec.output_name)]
    graph_def = frozen.graph.as_graph_def()
    # The control edges only ordered variable reads, which are constants now; with them, TF
    # 2.21's auto_mixed_precision_cpu session run crashes the process (segfault).
    for node in graph_def.node:
        data_inputs = [name for name in node.input if not name.startswith("^")]
        del node.input[:]
        node.input.extend(data_inputs)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph, frozen.inputs[0].name, output.name


def rounded_to_float16(partition_graphs: Iterable[graph_pb2.GraphDef]) -> collections.Counter:
    """Ops whose inputs come through a float16 → float32 cast, by op type."""
    half, single = tf.float16.as_datatype_enum, tf.float32.as_datatype_enum
    nodes = [node for graph in partition_graphs for node in graph.node]
    casts = {node.name for node in nodes if node.op == "Cast"
             and node.attr["SrcT"].type == half and node.attr["DstT"].type == single}
    return collections.Counter(
        _op_name(node.op) for node in nodes if node.op != "Cast"
        and any(name.lstrip("^").split(":")[0] in casts for name in node.input))


def session_predict(frozen: tuple[tf.Graph, str, str], spec: teacher.TeacherSpec,
                    images: np.ndarray, rewrite: str | None
                    ) -> tuple[np.ndarray, collections.Counter]:
    """Probabilities of the frozen teacher in a v1 Session with grappler's `rewrite` on, and the
    ops whose inputs that rewrite rounded to float16."""
    graph, input_name, output_name = frozen
    config = config_pb2.ConfigProto()
    if rewrite:
        setattr(config.graph_options.rewrite_options, rewrite,
                rewriter_config_pb2.RewriterConfig.ON)
    outputs, metadata = [], config_pb2.RunMetadata()
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        for start in range(0, len(images), spec.batch_size):
            first = start == 0
            outputs.append(session.run(
                output_name, {input_name: teacher.scale_pixels(
                    images[start:start + spec.batch_size], spec)},
                options=config_pb2.RunOptions(output_partition_graphs=first) if first else None,
                run_metadata=metadata if first else None))
    probabilities = teacher.to_probabilities(np.concatenate(outputs), spec.outputs,
                                             spec.temperature)
    return probabilities, rounded_to_float16(metadata.partition_graphs)


def predict(run: Run, images: np.ndarray, backend: RecordingBackend) -> np.ndarray:
    """Probabilities from the job's handler code (fixed batches, last one padded)."""
    backend.use_mixed(run.mixed)
    results = teacher.TeacherModelHandler(run.spec).run_inference(list(images), run.model)
    return np.stack([result.inference[1] for result in results])


def compare(reference: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> str:
    """Top-1 agreement and max |difference| with `reference`, and accuracy, as table cells."""
    agree = np.mean(reference.argmax(1) == probabilities.argmax(1))
    diff = np.max(np.abs(reference - probabilities))
    accuracy = np.mean(probabilities.argmax(1) == labels)
    return f"{agree:>10.4f}{diff:>11.2e}{accuracy:>10.4f}"


def precision_accuracy(runs: dict[tuple[int, bool], Run], images: np.ndarray,
                       labels: np.ndarray, warmup: int, backend: RecordingBackend) -> Run:
    """Prints reduced vs full precision on labeled images; returns the mixed, jit-off run."""
    batch = max(batch for batch, _ in runs)
    f32, f32_jit = runs[batch, False], runs[batch, True]
    reference, reference_jit = (predict(run, images, backend) for run in (f32, f32_jit))
    mixed = load(f32.spec, TeacherRuntime(device="cpu", precision="mixed"), f32.pixels,
                 warmup, backend)
    # What a float32 teacher computes once a mixed one was placed in the process, as is.
    backend.use_mixed(True)
    leaked = np.max(np.abs(f32.model(f32.pixels) - f32.first_output))
    mixed_jit = load(f32.spec, TeacherRuntime(device="cpu", jit_compile=True, precision="mixed"),
                     f32.pixels, warmup, backend)
    frozen = frozen_signature(f32.spec)
    session_f32, _ = session_predict(frozen, f32.spec, images, None)
    session_f16, rounded = session_predict(frozen, f32.spec, images, "auto_mixed_precision_cpu")

    print(f"\nprecision: light teacher, {len(images):,} Fashion-MNIST test images with labels, "
          f"batch {batch}")
    print(f"--precision=mixed sets, process-wide: {backend.graph_options or 'nothing on a CPU'}")
    print(f"{'':<56}{'top-1 agree':>11}{'max |dp|':>11}{'accuracy':>10}  reduced-precision kernels")
    print(f"{'float32, jit off (reference)':<56}{'-':>11}{'-':>11}"
          f"{np.mean(reference.argmax(1) == labels):>10.4f}  none")
    rows = [("float32, jit on (vs float32 jit off)", reference, reference_jit, "none"),
            ("--precision=mixed, jit off", reference, predict(mixed, images, backend),
             _describe(mixed.kernels)),
            ("--precision=mixed, jit on (vs float32 jit on)", reference_jit,
             predict(mixed_jit, images, backend), _describe(mixed_jit.kernels)),
            ("float32 frozen graph in a Session (vs LoadedTeacher)", reference, session_f32,
             "none"),
            ("float16 emulated, auto_mixed_precision_cpu (vs Session)", session_f32, session_f16,
             f"inputs rounded to float16: {_describe(rounded)}")]
    for label, base, probabilities, kernels in rows:
        print(f"{label:<56}{compare(base, probabilities, labels)}  {kernels}")
    backend.use_mixed(False)
    active = bool(mixed.kernels)
    print(f"--precision=mixed on this CPU: {'active' if active else 'does nothing'}: "
          f"{sum(mixed.kernels.values())} kernels ran in bfloat16, max |logit diff| "
          f"{np.max(np.abs(mixed.first_output - f32.first_output)):.2e} on one batch.\n"
          f"A float32 LoadedTeacher called after a mixed one was placed in the same process: "
          f"max |logit diff| {leaked:.2e} (the option is process-wide; the bench switches it).")
    return mixed


def precision_throughput(name: str, f32: Run, mixed: Run, per_round: int, rounds: int,
                         backend: RecordingBackend) -> None:
    """Prints one row: float32 vs mixed images/s, interleaved, and the mixed/float32 ratio."""
    f32_rates, mixed_rates = time_rounds([f32, mixed], per_round, rounds, backend)
    print(f"{name:<8}{len(f32.pixels):>6}{statistics.median(f32_rates):>16,.0f}"
          f"{statistics.median(mixed_rates):>14,.0f}{paired_ratio(mixed_rates, f32_rates):>16.2f}x"
          f"  {_describe(mixed.kernels)}")


def machine() -> str:
    """The header: CPU model, cores, reduced-precision CPU flags, TF version, oneDNN, XLA."""
    flags: set[str] = set()
    model_name = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model_name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    present = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS)
    probe = tf.function(lambda x: x * 2, jit_compile=True)
    xla = "yes" if probe.experimental_get_compiler_ir(tf.ones(2))(stage="hlo") else "no"
    auto_jit = tf.config.optimizer.get_jit() or "off"
    return (f"CPU: {model_name}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable); "
            f"{present}\nTensorFlow {tf.__version__}, Keras {keras.__version__}, oneDNN "
            f"{'on' if _pywrap_util_port.IsMklEnabled() else 'off'}; XLA CPU compiles: {xla}, "
            f"used only where jit_compile is on (auto-clustering {auto_jit})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="/tmp/ns-bench-e2e",
                        help="Where the light teacher and its data (shared with bench.end_to_end) "
                        "and the heavy teacher are made once and reused.")
    parser.add_argument("--limit", type=int, default=0,
                        help="bench.end_to_end's --limit for the light teacher's data (0: all).")
    parser.add_argument("--teachers", default="light,heavy",
                        help="Comma-separated teachers to measure: light, heavy.")
    parser.add_argument("--batch_sizes", default="64,256", help="Comma-separated batch sizes.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds per table.")
    parser.add_argument("--warmup", type=int, default=1,
                        help="Untimed calls per config after the first call.")
    parser.add_argument("--light_images", type=int, default=16384,
                        help="Images per config per round, light teacher.")
    parser.add_argument("--heavy_images", type=int, default=256,
                        help="Images per config per round, heavy teacher.")
    parser.add_argument("--precision_images", type=int, default=0,
                        help="Labeled test images for the precision comparison (0: all 10,000).")
    args = parser.parse_args()
    names = args.teachers.split(",")
    batch_sizes = sorted(int(size) for size in args.batch_sizes.split(","))
    if not set(names) <= set(TEACHERS):
        parser.error(f"--teachers must name some of {TEACHERS}, got {args.teachers}")
    if args.rounds < 1 or args.warmup < 0 or min(batch_sizes) < 1:
        parser.error("--rounds and batch sizes must be >= 1, --warmup >= 0")
    for flag in ("light_images", "heavy_images"):
        if any(getattr(args, flag) % size for size in batch_sizes):
            parser.error(f"--{flag} must be a multiple of every batch size")

    print(machine())
    os.makedirs(args.work_dir, exist_ok=True)
    backend = RecordingBackend()
    test_images, test_labels = fashion_mnist.load("test")
    test_images = test_images[..., np.newaxis]
    runs = {}
    if "light" in names:
        _, path = prepare(args.work_dir, args.limit)
        runs["light"] = throughput(
            "light: tiny CNN, 28x28x1 (bench.end_to_end.prepare)", path, test_images, batch_sizes,
            args.light_images, args.rounds, args.warmup, backend)
    if "heavy" in names:
        pixels = np.random.default_rng(0).integers(0, 256, (batch_sizes[-1], *HEAVY_IMAGE),
                                                   dtype=np.uint8)
        runs["heavy"] = throughput(
            "heavy: ResNet50, random weights, 224x224x3", heavy_teacher(args.work_dir), pixels,
            batch_sizes, args.heavy_images, args.rounds, args.warmup, backend)

    mixed = {}
    if "light" in runs:
        count = args.precision_images or len(test_images)
        mixed["light"] = precision_accuracy(runs["light"], test_images[:count],
                                            test_labels[:count], args.warmup, backend)
    if "heavy" in runs:
        f32 = runs["heavy"][batch_sizes[-1], False]
        mixed["heavy"] = load(f32.spec, TeacherRuntime(device="cpu", precision="mixed"),
                              f32.pixels, args.warmup, backend)
    print(f"\nfloat32 vs --precision=mixed, jit off, {args.rounds} interleaved rounds")
    print(f"{'teacher':<8}{'batch':>6}{'float32 img/s':>16}{'mixed img/s':>14}"
          f"{'mixed/float32':>17}  bfloat16 kernels")
    for name, per_round in (("light", args.light_images), ("heavy", args.heavy_images)):
        if name in runs:
            precision_throughput(name, runs[name][batch_sizes[-1], False], mixed[name],
                                 per_round, args.rounds, backend)


if __name__ == "__main__":
    main()
