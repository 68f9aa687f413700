"""Top-1 of a teacher SavedModel on labeled TFRecords, served as label_and_balance serves it.

    python -m ns_train.evaluate --teacher=out/student/export --data='data/test-*.tfrecord'
    python -m ns_train.evaluate --teacher=models/other --data='data/test-*.tfrecord' \\
        --input_range=-1,1 --teacher_outputs=probabilities

Takes the job's teacher and device flags (`ns_data.teacher_flags`: --input_range,
--teacher_outputs, --temperature, --image_size, ...; --model is another name for --teacher),
which override the model's `assets.extra/ns_teacher.json` (docs/teacher.md), and runs the model
through the job's own `TeacherModelHandler`, so the accuracy printed is that of the pseudo-labels
`label_and_balance` would produce with the same flags. Images are decoded with the trainer's ops
(the job's --decoder=tf). An image whose output the job would turn into a dead letter (NaN, or
logits read as probabilities) counts as wrong.

The symptoms the job's launch check refuses (`ns_data.teacher.sample_problem`: one class for every
image, near-uniform probabilities, a softmax teacher read as logits) are checked on 64 images
spread over the true classes and printed as WARNING lines naming the likely flag, and listed under
"warnings" in the JSON. The accuracy is still printed (a softmax read as logits keeps its top-1;
a badly trained model's accuracy is the answer) and the exit status is 0; so are flags that
contradict the teacher's ns_teacher.json, a damaged --data file (its readable records are
evaluated) and pseudo-labels given as --data. A record the trainer could not use as eval data
(no label, a label out of range, an image that does not decode) and bad flags exit with status 2
and one line.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence

import numpy as np

from ns_data import schema, startup, teacher_flags
from ns_data.devices import TeacherRuntime
from ns_data.teacher import (TeacherModelHandler, TeacherSpec, inspect_teacher, output_error,
                             sample_problem)
from ns_data.tfrecord import iter_records

PROG = "python -m ns_train.evaluate"
# As many images as the job's launch check runs the teacher on.
SAMPLE_IMAGES = 64

logger = logging.getLogger(__name__)


def evaluate_export(model_dir: str, pattern: str, batch_size: int = 256) -> dict:
    """`evaluate_teacher` of an export whose ns_teacher.json says everything (no flags)."""
    return evaluate_teacher(inspect_teacher(model_dir, batch_size=batch_size), pattern)


def evaluate_teacher(spec: TeacherSpec, pattern: str,
                     runtime: TeacherRuntime = TeacherRuntime(),
                     flag_warnings: Sequence[str] = ()) -> dict:
    """Accuracy of the teacher's labels on the labeled records matching `pattern`.

    The records are first checked as the trainer checks its eval data (`checks.scan_stream`):
    a record the trainer could not use is refused, a damaged file costs its unreadable rest
    and is warned about, and a file of pseudo-labels (whose labels are a teacher's) is warned
    about.

    Args:
      spec: the teacher and how to serve it (`teacher_flags.teacher_spec` of the flags).
      pattern: glob of labeled TFRecords.
      runtime: where and how the teacher runs.
      flag_warnings: warnings about the flags, listed first (`teacher_flags.metadata_overrides`).

    Returns:
      {"top1", "count", "per_class_top1", "invalid" (images the job would dead-letter),
      "warnings" (what the job's checks would say, each naming the likely flag), and the
      settings used: "teacher", "teacher_outputs", "input_range", "temperature",
      "image_shape"}. Each warning is also logged.

    Raises:
      ValueError: naming --data when it matches no files, holds no readable record or a record
        that cannot be evaluated.
    """
    from ns_train import checks, data  # noqa: PLC0415 - Keras at import; --help needs none

    classes = spec.num_classes
    scan = checks.scan_stream("--data", pattern, checks.RecordParser(spec.image, classes))
    if scan.bad:
        raise ValueError(f"--data: {len(scan.bad)} record{'s' if len(scan.bad) > 1 else ''} "
                         f"cannot be evaluated, e.g. {scan.bad[0].describe()}")
    warnings = list(flag_warnings) + [
        f"damaged file {d.path}: record {d.records_kept} at byte {d.offset} {d.problem}; "
        f"evaluated its first {d.records_kept} records"
        for d in scan.damaged]
    warnings += [f"{path} holds pseudo-labels (records with {schema.CONFIDENCE!r}, written by "
                 "label_and_balance): top-1 against them measures agreement with that run's "
                 "teacher, not accuracy" for path in _pseudo_labeled(scan.files)]
    handler = TeacherModelHandler(spec, runtime=runtime)
    model = handler.load_model()
    correct, total = np.zeros(classes), np.zeros(classes)
    # Rows kept per true class for the launch check's test: a file sorted by class must not
    # look like a teacher that answers one class.
    per_class = math.ceil(SAMPLE_IMAGES / classes)
    sample: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(classes)]
    invalid, first_error = 0, None
    batches = data.dataset(data.InputSpec(pattern, spec.image, classes, spec.batch_size,
                                          training=False, files=scan.files))
    for images, targets in batches:
        outputs = [r.inference for r in handler.run_inference(images.numpy(), model)]
        errors = [output_error(raw, probs, spec.outputs) for raw, probs in outputs]
        valid = np.array([e is None for e in errors])
        predicted = np.array([probs.argmax() for _, probs in outputs])
        truth = targets.numpy().argmax(-1)
        np.add.at(total, truth, 1)
        np.add.at(correct, truth, valid & (predicted == truth))
        invalid += int((~valid).sum())
        first_error = first_error or next((e for e in errors if e), None)
        for label, row in zip(truth, outputs):
            if len(sample[label]) < per_class:
                sample[label].append(row)
    count = int(total.sum())
    if invalid:
        warnings.append(f"{invalid} of {count} images get no label (the job would dead-letter "
                        f"them), counted as wrong; the first: {first_error}")
    rows = [row for rows in sample for row in rows]
    problem = sample_problem(np.stack([raw for raw, _ in rows]),
                             np.stack([probs for _, probs in rows]), spec)
    if problem:
        warnings.append(f"label_and_balance would refuse this teacher: {problem}")
    for warning in warnings:
        logger.warning("%s: %s", spec.path, warning)
    return {"top1": float(correct.sum() / count), "count": count,
            "per_class_top1": [float(c / t) if t else None for c, t in zip(correct, total)],
            "invalid": invalid, "warnings": warnings, "teacher": spec.path,
            "teacher_outputs": spec.outputs, "input_range": list(spec.input_range),
            "temperature": spec.temperature, "image_shape": list(spec.image.shape)}


def _pseudo_labeled(files: Sequence[tuple[str, int]]) -> list[str]:
    """The files whose first record is a pseudo-label (label_and_balance's output)."""
    return [path for path, count in files
            if count and schema.CONFIDENCE in schema.parse_example(next(iter_records(path)))]


class _Parser(argparse.ArgumentParser):
    """Raises its errors as ValueError, so `main` prints every bad flag the same way."""

    def error(self, message: str):
        raise ValueError(message)


def parser() -> argparse.ArgumentParser:
    """The command's flags: --data, and the job's teacher and device flags."""
    p = _Parser(prog=PROG, description=__doc__, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Glob of labeled TFRecords. Required.")
    teacher_flags.add_teacher_args(p, ("--teacher", "--model"))
    teacher_flags.add_device_args(p)
    p.set_defaults(batch_size=256)
    return p


def run(argv: list[str] | None = None) -> dict:
    """Evaluates the teacher the flags name; returns `evaluate_teacher`'s result.

    Raises:
      ValueError: one line naming the flag, for a missing or bad flag.
    """
    args = parser().parse_args(argv)
    teacher_flags.require_flags(teacher=args.teacher, data=args.data)
    return evaluate_teacher(teacher_flags.teacher_spec(args), args.data,
                            teacher_flags.teacher_runtime(args),
                            teacher_flags.metadata_overrides(args))


def main(argv: list[str] | None = None) -> int:
    """Prints the result as JSON; returns the exit status (2 and one line for a bad flag)."""
    try:
        result = run(argv)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    startup.quiet_startup()
    logging.basicConfig(format="%(levelname)s: %(message)s")
    sys.exit(main())
