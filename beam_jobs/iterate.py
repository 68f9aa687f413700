"""The whole Noisy Student loop on Fashion-MNIST, one command, with a report.

    python -m beam_jobs.iterate --workdir=out/replicate            # about an hour on 2 cores
    python -m beam_jobs.iterate --workdir=out/quick --quick        # a few minutes

Round r: train the teacher on the labeled split (round 0) or take round r-1's student →
`label_and_balance` on the unlabeled split (soft targets, per-class top-K with duplication,
every score kept for re-selection) → train a noised student on labeled + pseudo-labeled data →
evaluate teacher and student on the holdout split (for choices) and the test split (reported).
`--ablations` trains more round-0 students from the same teacher and predictions: without noise,
with hard labels, without balancing. Every step resumes: rerunning the command skips what is
done and continues interrupted training from its checkpoint.

Writes WORKDIR/report/summary.md (tables + links to per-round PNGs: class counts before/after
balancing, the confidence histogram, a sample grid with pseudo-labels) and results.json.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import posixpath
import sys
import time
from collections.abc import Iterator
from typing import Any

from beam_jobs import label_and_balance, prepare_fashion_mnist, rebalance
from ns_data import fashion_mnist, report, round_report, stats
from ns_data.lazy import tf
from ns_data.progress import format_duration
from ns_data.teacher_flags import int_at_least
from ns_train.config import TrainConfig, configure_logging
from ns_train.evaluate import evaluate_export

logger = logging.getLogger("beam_jobs.iterate")

ABLATIONS = ("full", "no_noise", "hard", "no_balance")
DESCRIPTIONS = {"full": "soft targets, balanced, noised student",
                 "no_noise": "same pseudo-labels, student without RandAugment/dropout/SD",
                 "hard": "hard pseudo-labels, balanced, noised student",
                 "no_balance": "soft targets above the threshold, no top-K or duplication"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and steps of one run; `--quick` swaps in a tiny version."""

    num_labeled: int
    num_holdout: int
    limit: int
    teacher_widths: tuple[int, ...]
    student_widths: tuple[int, ...]
    blocks: int
    teacher_steps: int
    student_steps: int
    batch_size: int


# The student is wider than the teacher (the paper's "equal-or-larger student"): with an equal
# one (16, 32, 64; 3000 steps) the student gained +0.84 holdout / +0.64 test points.
FULL = Settings(num_labeled=5000, num_holdout=5000, limit=0, teacher_widths=(16, 32, 64),
                student_widths=(24, 48, 96), blocks=1, teacher_steps=1500, student_steps=2400,
                batch_size=128)
# The loop in about three minutes: a smoke test, not a measurement. On 1,000 test images one
# point is 10 images; at 150 steps the teacher was too unsure to label 4 classes at 0.3.
QUICK = Settings(num_labeled=200, num_holdout=100, limit=1000, teacher_widths=(8, 16),
                 student_widths=(8, 16), blocks=1, teacher_steps=400, student_steps=400,
                 batch_size=32)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.iterate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Where everything of the run goes.")
    parser.add_argument("--quick", action="store_true",
                        help="Tiny subset and few steps: the whole loop in a few minutes.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Noisy Student iterations; each student teaches the next round "
                             "(default: %(default)s).")
    parser.add_argument("--ablations", default="full",
                        help=f"Comma-separated round-0 students to train, of {ABLATIONS} "
                             "(default: %(default)s).")
    parser.add_argument("--fashion_mnist_dir", default=fashion_mnist.DEFAULT_DIR,
                        help="Debian's dataset-fashion-mnist files (default: %(default)s).")
    parser.add_argument("--images_per_class", type=int, default=0,
                        help="K; 0: unlabeled images / classes (default: %(default)s).")
    parser.add_argument("--min_confidence", type=float, default=0.3,
                        help="Confidence threshold of pseudo-labels (default: %(default)s).")
    parser.add_argument("--unlabeled_ratio", type=float, default=1.0,
                        help="Unlabeled batch / labeled batch (default: %(default)s).")
    parser.add_argument("--teacher_steps", type=int, default=0,
                        help="Teacher training steps (default: 1500, --quick 400).")
    parser.add_argument("--student_steps", type=int, default=0,
                        help="Student training steps (default: 2400, --quick 400).")
    parser.add_argument("--student_widths", type=int, nargs="+", default=None,
                        help="Student ResNet stage widths, each at least the teacher's "
                             "(teacher 16 32 64, default 24 48 96; --quick: both 8 16).")
    parser.add_argument("--randaugment_magnitude", type=float, default=10.0,
                        help="RandAugment magnitude of noised models (default: %(default)s).")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="Seed of the splits, training and shard placement "
                             "(default: %(default)s).")
    args = parser.parse_args(argv)
    # One name per place: "run/", "x/../run" and "run" resume the same workdir.
    args.workdir = os.path.normpath(args.workdir)
    unknown = set(args.ablations.split(",")) - set(ABLATIONS)
    if unknown:
        parser.error(f"unknown ablations {sorted(unknown)}; choose from {ABLATIONS}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for flag in ("teacher_steps", "student_steps", "images_per_class"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be >= 0 (0: the default), got {getattr(args, flag)}")
    teacher_widths = (QUICK if args.quick else FULL).teacher_widths
    if args.student_widths and (len(args.student_widths) != len(teacher_widths) or any(
            s < t for s, t in zip(args.student_widths, teacher_widths))):
        parser.error(f"--student_widths {args.student_widths}: the student must be equal to or "
                     f"larger than the teacher, {list(teacher_widths)} stage by stage")
    if args.rounds > 1 and "full" not in args.ablations.split(","):
        parser.error("--rounds > 1 needs the 'full' student in --ablations: it teaches the "
                     "next round")
    return args


# Changing these between runs of one workdir only adds work (or names the same place);
# anything else would mix two runs.
_MAY_CHANGE = {"workdir", "rounds", "ablations", "fashion_mnist_dir"}


def _run_identity(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The flags and the sizes/steps they give (so a change of the built-in defaults is caught
    too): what must not change, beyond _MAY_CHANGE, while a workdir is resumed."""
    return {**vars(args), **{f"settings.{k}": v for k, v in dataclasses.asdict(settings).items()}}


def _trainer():
    """`ns_train.train`, imported when first needed: its Keras model classes import TensorFlow
    with the module, and `--help` or a flag error needs none of it (see `ns_data.lazy`)."""
    from ns_train import train  # noqa: PLC0415
    return train


def check_workdir(args: argparse.Namespace, settings: Settings) -> None:
    """Refuses to resume a workdir whose iterate.json records other flags or settings."""
    _trainer().refuse_changed_settings(posixpath.join(args.workdir, "iterate.json"),
                                       _run_identity(args, settings), _MAY_CHANGE, args.workdir)


def _record_workdir(args: argparse.Namespace, settings: Settings) -> None:
    """Writes iterate.json once the run has made something (its data splits)."""
    path = posixpath.join(args.workdir, "iterate.json")
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump(_run_identity(args, settings), f, indent=2)


@contextlib.contextmanager
def _stage(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Times one stage into `seconds[name]` and logs it, so a run shows where its hour goes."""
    start = time.monotonic()
    yield
    seconds[name] = round(time.monotonic() - start, 1)
    logger.info("%s: %s", name, format_duration(seconds[name]))


def _settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.teacher_steps:
        changes["teacher_steps"] = args.teacher_steps
    if args.student_steps:
        changes["student_steps"] = args.student_steps
    if args.student_widths:
        changes["student_widths"] = tuple(args.student_widths)
    return dataclasses.replace(base, **changes)


def _train_config(workdir: str, data_dir: str, settings: Settings, args: argparse.Namespace, *,
                  widths: tuple[int, ...], steps: int, unlabeled: str = "",
                  noise: bool = True) -> TrainConfig:
    """The settings of one model's training (a `ValueError` names a bad one)."""
    return TrainConfig(
        workdir=workdir, labeled=posixpath.join(data_dir, "labeled-*.tfrecord"),
        unlabeled=unlabeled, eval=posixpath.join(data_dir, "holdout-*.tfrecord"),
        num_classes=10, class_names=",".join(fashion_mnist.CLASS_NAMES), image_size=(28, 28),
        channels=1, model="small_resnet", resnet_widths=widths, resnet_blocks=settings.blocks,
        batch_size=settings.batch_size, unlabeled_ratio=args.unlabeled_ratio, steps=steps,
        optimizer="sgd", learning_rate=0.1, weight_decay=5e-5, schedule="cosine",
        randaugment_ops=2 if noise else 0, randaugment_magnitude=args.randaugment_magnitude,
        dropout=0.2 if noise else 0.0, stochastic_depth=0.8 if noise else 1.0,
        ema_decay=0.99, normalization="tft", log_every=max(1, steps // 10),
        checkpoint_every=max(1, steps // 4), seed=args.seed)


def _train(workdir: str, data_dir: str, settings: Settings, args: argparse.Namespace,
           **model) -> str:
    """Trains (or resumes) one model; returns its export directory."""
    config = _train_config(workdir, data_dir, settings, args, **model)
    return _trainer().train(config)["export_dir"]


def _label_argv(teacher: str, data_dir: str, output_dir: str, table_dir: str, k: int,
                args: argparse.Namespace) -> list[str]:
    return [f"--input={posixpath.join(data_dir, 'unlabeled-*.tfrecord')}", f"--teacher={teacher}",
            f"--output_dir={output_dir}", f"--predictions_dir={table_dir}",
            f"--images_per_class={k}", f"--min_confidence={args.min_confidence}",
            "--label_type=soft", "--num_shards=8", "--batch_size=256", f"--seed={args.seed}",
            "--overwrite"]


def _rebalance_argv(table_dir: str, output_dir: str, k: int, label_type: str, duplicate: bool,
                    args: argparse.Namespace) -> list[str]:
    return ([f"--predictions={table_dir}", f"--output_dir={output_dir}",
             f"--images_per_class={k}", f"--min_confidence={args.min_confidence}",
             f"--label_type={label_type}", "--num_shards=8", f"--seed={args.seed}", "--overwrite"]
            + ([] if duplicate else ["--no_duplicate"]))


def _pseudo_label(teacher: str, data_dir: str, output_dir: str, table_dir: str, k: int,
                  args: argparse.Namespace) -> None:
    if tf.io.gfile.exists(posixpath.join(output_dir, stats.STATS_FILE)):
        return
    label_and_balance.run(_label_argv(teacher, data_dir, output_dir, table_dir, k, args))


def _rebalance(table_dir: str, output_dir: str, k: int, label_type: str, duplicate: bool,
               args: argparse.Namespace) -> None:
    if tf.io.gfile.exists(posixpath.join(output_dir, stats.STATS_FILE)):
        return
    rebalance.run(_rebalance_argv(table_dir, output_dir, k, label_type, duplicate, args))


def check_settings(args: argparse.Namespace, settings: Settings) -> None:
    """Refuses, before any work, a setting that a step of the loop would refuse later: every
    model's training settings and the flags of every label_and_balance and rebalance run, with
    the messages those steps give."""
    here = args.workdir
    for widths, steps, noise in ((settings.teacher_widths, settings.teacher_steps, False),
                                 (settings.student_widths, settings.student_steps, True)):
        _train_config(here, here, settings, args, widths=widths, steps=steps,
                      unlabeled=here if noise else "", noise=noise)
    k = args.images_per_class or 1  # 0 means "from the data", known once it is prepared
    label_and_balance.check_flags(_label_argv(here, here, here, here, k, args))
    rebalance.check_flags(_rebalance_argv(here, here, k, "hard", False, args))


def _read_truth(data_dir: str) -> dict[bytes, int]:
    with open(posixpath.join(data_dir, "unlabeled_truth.csv")) as f:
        next(f)
        return {line.split(",")[0].encode(): int(line.split(",")[1]) for line in f}


def _evaluate(export_dir: str, data_dir: str) -> dict[str, float]:
    return {split: evaluate_export(export_dir, posixpath.join(data_dir, f"{split}-*.tfrecord"))
            ["top1"] for split in ("holdout", "test")}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs (or resumes) the loop; returns what results.json holds."""
    args = parse_args(argv)
    settings = _settings(args)
    try:
        check_settings(args, settings)
    except ValueError as e:
        raise ValueError(f"{e} (a setting of the loop's steps; nothing was run)") from e
    check_workdir(args, settings)
    workdir = args.workdir
    data_dir = posixpath.join(workdir, "data")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    if not os.path.exists(posixpath.join(data_dir, "splits.json")):
        with _stage("prepare", seconds):
            sizes = prepare_fashion_mnist.prepare(
                data_dir, num_labeled=settings.num_labeled, num_holdout=settings.num_holdout,
                seed=args.seed, data_dir=args.fashion_mnist_dir, limit=settings.limit)
        logger.info("Prepared %s", sizes)
    _record_workdir(args, settings)
    with open(posixpath.join(data_dir, "splits.json")) as f:
        sizes = json.load(f)["sizes"]
    k = args.images_per_class or sizes["unlabeled"] // 10
    truth = _read_truth(data_dir)
    ablations = args.ablations.split(",")

    with _stage("round0 teacher", seconds):
        teacher = _train(posixpath.join(workdir, "round0", "teacher"), data_dir, settings, args,
                         widths=settings.teacher_widths, steps=settings.teacher_steps)
    rounds = []
    for r in range(args.rounds):
        round_dir = posixpath.join(workdir, f"round{r}")
        table_dir = posixpath.join(round_dir, "predictions")
        labels = {"full": posixpath.join(round_dir, "pseudo_soft")}
        with _stage(f"round{r} label_and_balance", seconds):
            _pseudo_label(teacher, data_dir, labels["full"], table_dir, k, args)
        variants = ablations if r == 0 else ["full"]
        if "hard" in variants:
            labels["hard"] = posixpath.join(round_dir, "pseudo_hard")
            with _stage(f"round{r} rebalance hard", seconds):
                _rebalance(table_dir, labels["hard"], k, "hard", True, args)
        if "no_balance" in variants:
            labels["no_balance"] = posixpath.join(round_dir, "pseudo_unbalanced")
            with _stage(f"round{r} rebalance no_balance", seconds):
                _rebalance(table_dir, labels["no_balance"], sizes["unlabeled"], "soft", False,
                           args)
        students = {}
        for variant in variants:
            pseudo = labels.get(variant, labels["full"])
            with _stage(f"round{r} student {variant}", seconds):
                export = _train(posixpath.join(round_dir, f"student_{variant}"), data_dir,
                                settings, args, widths=settings.student_widths,
                                steps=settings.student_steps,
                                unlabeled=posixpath.join(pseudo, "pseudo_labels-*"),
                                noise=variant != "no_noise")
                students[variant] = {
                    "export": export, **_evaluate(export, data_dir), "pseudo_labels": pseudo,
                    "pseudo_labels_written": [c["written"] for c in
                                              stats.read_stats(pseudo)["classes"]],
                    "description": DESCRIPTIONS[variant]}
        report_dir = posixpath.join(workdir, "report", f"round{r}")
        with _stage(f"round{r} report", seconds):
            labeling = report.write_label_report(labels["full"], table_dir, report_dir,
                                                 fashion_mnist.CLASS_NAMES, truth=truth)
            rounds.append({"round": r,
                           "teacher": {"export": teacher, **_evaluate(teacher, data_dir)},
                           "students": students, "labeling": labeling, "report_dir": report_dir})
        print(round_report.format_round(rounds[-1]), flush=True)
        teacher = students["full"]["export"] if "full" in students else teacher
    seconds["total"] = round(time.monotonic() - started, 1)
    result = {"settings": dataclasses.asdict(settings), "args": vars(args), "sizes": sizes,
              "images_per_class": k, "seconds": seconds, "rounds": rounds}
    with open(posixpath.join(workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    summary = round_report.write_summary(posixpath.join(workdir, "report"), result,
                                         fashion_mnist.CLASS_NAMES)
    print(f"\nDone in {format_duration(seconds['total'])}. Report: {summary}")
    return result


def main() -> None:
    configure_logging()
    try:
        run()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
