"""Top-1 of an exported teacher on labeled TFRecords, through the model label_and_balance serves.

    python -m ns_train.evaluate --model=out/student/export --data='data/test-*.tfrecord'

Evaluates the SavedModel exactly as the Beam job runs it (`ns_data.teacher.inspect_teacher`
for shapes, dtype and value range; `scale_pixels`; `to_probabilities`), so the number is the
accuracy of the pseudo-labels that model would produce.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import tensorflow as tf

from ns_data import teacher as teacher_lib
from ns_train import data


def evaluate_export(model_dir: str, pattern: str, batch_size: int = 256) -> dict:
    """{"top1", "count", "per_class_top1"} of the SavedModel at `model_dir` on `pattern`."""
    spec = teacher_lib.inspect_teacher(model_dir, batch_size=batch_size)
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures[spec.signature]
    batches = data.dataset(data.InputSpec(pattern, spec.image, spec.num_classes, batch_size,
                                          training=False))
    correct = np.zeros(spec.num_classes)
    total = np.zeros(spec.num_classes)
    for images, targets in batches:
        raw = serve(**{spec.input_name: tf.constant(
            teacher_lib.scale_pixels(images.numpy(), spec))})[spec.output_name].numpy()
        predicted = teacher_lib.to_probabilities(raw, spec.outputs).argmax(-1)
        truth = targets.numpy().argmax(-1)
        np.add.at(total, truth, 1)
        np.add.at(correct, truth, predicted == truth)
    count = int(total.sum())
    if not count:
        raise ValueError(f"{pattern} holds no records")
    return {"top1": float(correct.sum() / count), "count": count,
            "per_class_top1": [float(c / t) if t else None for c, t in zip(correct, total)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="SavedModel directory (an export).")
    parser.add_argument("--data", required=True, help="Glob of labeled TFRecords.")
    parser.add_argument("--batch_size", type=int, default=256,
                        help="Images per call (default: %(default)s).")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_export(args.model, args.data, args.batch_size), indent=2))


if __name__ == "__main__":
    main()
