"""The main job on the embedded Fashion-MNIST sample, offline, in about a minute.

    python -m beam_jobs.demo --output_dir=out/demo

1. Trains a tiny CNN teacher on the 1,000 labeled sample images (ns_data/sample/labeled.tfrecord).
2. Runs `beam_jobs.label_and_balance` on the 2,000 unlabeled sample images with it.
3. Reads every output record back through `ns_data.schema` and prints what it found.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os

from beam_jobs import label_and_balance
from ns_data import fashion_mnist, schema, startup
from ns_data.lazy import tf
from ns_data.write import PSEUDO_LABEL_PREFIX, shard_pattern

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "ns_data", "sample")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="out/demo",
                        help="Where the teacher and the pseudo-labels go (default: %(default)s).")
    parser.add_argument("--images_per_class", type=int, default=200,
                        help="K for the sample (default: %(default)s).")
    parser.add_argument("--label_type", default="soft", choices=[t.value for t in schema.LabelType],
                        help="Target written with each record (default: %(default)s).")
    args = parser.parse_args(argv)
    # Keras imports TensorFlow with the module: only once --help has been answered.
    from ns_train.tiny_teacher import train_tiny_teacher  # noqa: PLC0415

    teacher_dir = os.path.join(args.output_dir, "teacher")
    labels_dir = os.path.join(args.output_dir, "pseudo_labels")
    print(f"[1/3] Training a tiny teacher on {SAMPLE_DIR}/labeled.tfrecord ...")
    metrics = train_tiny_teacher(os.path.join(SAMPLE_DIR, "labeled.tfrecord"), teacher_dir,
                                 class_names=fashion_mnist.CLASS_NAMES)
    print(f"      exported to {teacher_dir} (train accuracy {metrics['accuracy']:.3f})")
    print("[2/3] Pseudo-labeling and balancing 2,000 unlabeled images ...")
    label_and_balance.run([
        f"--input={SAMPLE_DIR}/unlabeled.tfrecord", f"--teacher={teacher_dir}",
        f"--output_dir={labels_dir}", f"--images_per_class={args.images_per_class}",
        "--num_shards=4", f"--label_type={args.label_type}", "--overwrite",
        "--runner=DirectRunner"])
    print(f"[3/3] Reading {labels_dir} back through ns_data.schema ...")
    files = sorted(tf.io.gfile.glob(shard_pattern(labels_dir, PSEUDO_LABEL_PREFIX)))
    records = [schema.parse_pseudo_label(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    per_class = collections.Counter(r.label for r in records)
    copies = sum(1 for r in records if r.copy > 0)
    print(f"      {len(records)} records in {len(files)} shards parse; {copies} are duplicates; "
          f"per class: {dict(sorted(per_class.items()))}")
    print(f"Done. Pseudo-labels: {labels_dir}  stats: {labels_dir}/stats.json")


if __name__ == "__main__":
    startup.quiet_startup()
    logging.getLogger().setLevel(logging.WARNING)
    main()
