"""The teacher's command-line flags, defined once for every command that runs a teacher.

`beam_jobs.label_and_balance` (as Beam options) and `ns_train.evaluate` (plain argparse) add the
same `teacher` and `device` flag groups and build the same `TeacherSpec` and `TeacherRuntime`
from them, so `--input_range`, `--teacher_outputs` or `--temperature` mean the same thing in the
job that labels with a teacher and in the command that measures its accuracy.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from ns_data import devices
from ns_data.teacher import OUTPUT_KINDS, TeacherSpec, inspect_teacher, read_metadata


def pair(kind: type, name: str) -> Callable[[str], tuple]:
    """An argparse type for two values written `A,B` (or `AxB`), e.g. `--image_size=224,224`."""
    def parse(text: str):
        parts = text.replace("x", ",").split(",")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"{name} takes two values like 224,224, got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad {name} {text!r}: {e}") from e
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for an integer >= `low`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = "int"  # argparse's "invalid int value: 'x'"
    return parse


positive_int = int_at_least(1)


def require_flags(**values) -> None:
    """Refuses, in one line naming them all, the required flags given no value (a flag's
    destination as the keyword: `require_flags(input=opts.input, output_dir=...)`).

    Raises:
      ValueError: "missing required flags: --input, --output_dir (see --help)".
    """
    missing = [f"--{name}" for name, value in values.items() if not value]
    if missing:
        raise ValueError(f"missing required flags: {', '.join(missing)} (see --help)")


def add_teacher_args(parser: argparse.ArgumentParser,
                     teacher_flags: Sequence[str] = ("--teacher",)) -> Any:
    """Adds the `teacher` group: which SavedModel, how to feed it and how to read its answer.

    Args:
      parser: an argparse parser (or the one Beam passes to `_add_argparse_args`).
      teacher_flags: the names of the SavedModel flag (`ns_train.evaluate` also takes --model).

    Returns:
      The group, so a caller can add its own teacher flags after these.
    """
    g = parser.add_argument_group("teacher")
    g.add_argument(*teacher_flags, dest="teacher",
                   help="SavedModel directory of the teacher whose signature maps images "
                   "[N,H,W,C] to [N,num_classes] logits or probabilities. Required.")
    g.add_argument("--teacher_signature", default="serving_default",
                   help="Serving signature to call (default: %(default)s).")
    g.add_argument("--teacher_outputs", choices=OUTPUT_KINDS, default=None,
                   help="Whether the teacher returns logits or probabilities (default: the "
                   "teacher's ns_teacher.json, else logits).")
    g.add_argument("--output_key", default=None,
                   help="Signature output to read when it has several.")
    g.add_argument("--image_size", type=pair(int, "--image_size"), default=None,
                   help="Teacher input HEIGHT,WIDTH (default: from the signature or "
                   "metadata). Images are resized to it.")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="Teacher input channels (default: from the signature).")
    g.add_argument("--input_range", type=pair(float, "--input_range"), default=None,
                   help="LOW,HIGH that pixel values 0 and 255 map to for a float input "
                   "(default: the teacher's metadata, else 0,1).")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="Logits are divided by this before the softmax (default: 1).")
    g.add_argument("--batch_size", type=positive_int, default=64,
                   help="Fixed inference batch; the last batch is padded so compiled "
                   "(XLA/TPU) functions never recompile (default: %(default)s).")
    return g


def add_device_args(parser: argparse.ArgumentParser) -> Any:
    """Adds the `device` group: where and how the teacher runs. Returns the group."""
    g = parser.add_argument_group("device")
    g.add_argument("--device", choices=devices.DEVICES, default="auto",
                   help="Where each worker runs the teacher: auto = a TPU if the worker is "
                   "a TPU VM, else a GPU if TensorFlow sees one, else the CPU; gpu/tpu fail "
                   "the job when the worker has none (default: %(default)s).")
    g.add_argument("--jit_compile", action="store_true",
                   help="XLA-compile the teacher's batch function (always compiled on TPU; "
                   "measured 0.6-0.95x as fast on CPU, see bench/teacher.py).")
    g.add_argument("--precision", choices=devices.PRECISIONS, default="float32",
                   help="mixed: TensorFlow's automatic mixed precision rewrite of the "
                   "teacher's graph, float16 on GPU, bfloat16 on CPUs that have it "
                   "(avx512_bf16/AMX); outputs stay float32. Not applied under "
                   "--jit_compile (default: %(default)s).")
    g.add_argument("--gpu_memory_limit_mb", type=positive_int, default=None,
                   help="Memory each process may take on a GPU (default: grow as needed).")
    return g


def check_temperature(temperature: float) -> None:
    """Refuses a --temperature that is not a finite number > 0."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"--temperature must be a finite number > 0, got {temperature}")


def teacher_spec(opts: Any) -> TeacherSpec:
    """The teacher's spec from its SavedModel, its ns_teacher.json and the `teacher` flags.

    Raises:
      ValueError: naming the flag, for a bad --temperature or a model that cannot serve.
    """
    check_temperature(opts.temperature)
    return inspect_teacher(
        opts.teacher,
        signature=opts.teacher_signature,
        image_size=opts.image_size,
        channels=opts.channels,
        input_range=opts.input_range,
        outputs=opts.teacher_outputs,
        output_name=opts.output_key,
        temperature=opts.temperature,
        batch_size=opts.batch_size,
    )


def metadata_overrides(opts: Any) -> list[str]:
    """The `teacher` flags that contradict what the teacher's ns_teacher.json records.

    The flags win (they fix a wrong file), but overriding the model's own record of how it was
    trained is more often a mistake: each contradiction is one sentence, which
    `label_and_balance`'s launch check refuses (unless --skip_teacher_check) and
    `ns_train.evaluate` warns with.
    """
    recorded = read_metadata(opts.teacher)
    pairs = (("--input_range", opts.input_range, recorded.input_range),
             ("--teacher_outputs", opts.teacher_outputs, recorded.outputs),
             ("--image_size", opts.image_size, recorded.image_size),
             ("--channels", opts.channels, recorded.channels))

    def text(value) -> str:
        return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)

    return [f"{flag}={text(given)} overrides {text(saved)}, which the teacher's ns_teacher.json "
            "records for how it was trained"
            for flag, given, saved in pairs
            if given is not None and saved is not None and text(given) != text(saved)]


def teacher_runtime(opts: Any) -> devices.TeacherRuntime:
    """Where and how the teacher runs, from the `device` flags."""
    return devices.TeacherRuntime(device=opts.device, jit_compile=opts.jit_compile,
                                  precision=opts.precision,
                                  gpu_memory_limit_mb=opts.gpu_memory_limit_mb)
