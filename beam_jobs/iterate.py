"""The whole Noisy Student loop on your data, one command, with a report.

    python -m beam_jobs.iterate --config=my_loop.py --workdir=out/run \\
        --labeled='data/labeled-*.tfrecord' --unlabeled='data/unlabeled-*.tfrecord' \\
        --eval='data/holdout-*.tfrecord' [--test='data/test-*.tfrecord']
    python -m beam_jobs.iterate --config=ns_train/configs/fashion_mnist_loop.py \\
        --workdir=out/replicate                                   # about an hour on 2 cores
    python -m beam_jobs.iterate --config=ns_train/configs/fashion_mnist_loop.py:runlocal \\
        --workdir=out/quick                                       # a few minutes

The data are TFRecords in our schema (`ns_data.schema`): labeled records carry `label`;
--eval is a labeled holdout for choices, --test (optional) is only reported. The config
(`ns_train/loop_config.py`, big_vision style, `:VARIANT` for `get_config(VARIANT)`) holds the
teacher's training settings, each round's student (students grow per round, as in the paper),
the labeling settings, rounds, ablations and seed; a config may bring its own data step
(Fashion-MNIST's splits), which runs when no data flags are given. The flags below override the
config's entries of the same name.

Round r: train the teacher on the labeled data (round 0) or take round r-1's student →
`label_and_balance` on the unlabeled data (per-class top-K with duplication, every score kept for
re-selection) → train round r's noised student on labeled + pseudo-labeled data → evaluate
teacher and student on --eval and --test. Round-0 ablations train more students from the same
teacher and predictions: without noise, with hard labels, without balancing. Each round also
trains the paper's baseline (the round's student architecture, for its steps, on the labeled data
alone; `--no_baseline` skips it), so every table gives the gain from pseudo-labels apart from
the gain from a larger model or longer training. `--seeds=0,1,2` runs the loop once per seed
(WORKDIR/seed-N) and writes WORKDIR/seeds.md: mean ± std of each model and gain. Every setting of
every step (each model's training, each label_and_balance and rebalance run) is checked before
the first step starts, with the messages those steps give. Every step resumes: rerunning the
command skips what is done and continues interrupted training from its checkpoint.

Writes WORKDIR/report/summary.md (tables with each model's size, links to per-round PNGs:
class counts before/after balancing, the confidence histogram, a sample grid with
pseudo-labels) and WORKDIR/results.json.
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
from typing import TYPE_CHECKING, Any

from ns_data import startup
from ns_data.fashion_mnist import DEFAULT_DIR as FASHION_MNIST_DIR
from ns_data.lazy import tf

if TYPE_CHECKING:  # they import TensorFlow; --help does not need it
    from beam_jobs.label_and_balance import LabelAndBalanceConfig
    from beam_jobs.rebalance import RebalanceConfig
    from ns_train.config import TrainConfig
    from ns_train.loop_config import LoopConfig

logger = logging.getLogger("beam_jobs.iterate")

DESCRIPTIONS = {"full": "soft targets, balanced, noised student",
                "no_noise": "same pseudo-labels, student without RandAugment/dropout/SD",
                "hard": "hard pseudo-labels, balanced, noised student",
                "no_balance": "soft targets above the threshold, no top-K or duplication"}

BASELINE_DESCRIPTION = "the student's model and steps, labeled data only"


@dataclasses.dataclass(frozen=True)
class LoopData:
    """Where one run of the loop reads and writes. Empty globs: the config's data step
    prepares them in WORKDIR/data."""

    workdir: str
    labeled: str = ""
    unlabeled: str = ""
    eval: str = ""
    test: str = ""
    unlabeled_truth: str = ""  # CSV of id,label for the unlabeled images (reports only)
    fashion_mnist_dir: str = FASHION_MNIST_DIR

    @property
    def given(self) -> bool:
        return bool(self.labeled or self.unlabeled or self.eval or self.test)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.iterate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="Where everything of the run goes.")
    parser.add_argument("--config", required=True,
                        help="Loop config file, FILE.py or FILE.py:VARIANT (e.g. "
                             "ns_train/configs/fashion_mnist_loop.py:runlocal).")
    g = parser.add_argument_group("data (TFRecords in our schema; none: the config's data step)")
    g.add_argument("--labeled", default="", help="Glob of the labeled records.")
    g.add_argument("--unlabeled", default="", help="Glob of the unlabeled records.")
    g.add_argument("--eval", default="",
                   help="Glob of labeled holdout records, for choices (never the test set).")
    g.add_argument("--test", default="",
                   help="Glob of labeled test records, only reported (default: none).")
    g.add_argument("--unlabeled_truth", default="",
                   help="CSV of id,label of the unlabeled images, to report pseudo-label "
                        "accuracy (default: none; the Fashion-MNIST step writes one).")
    g.add_argument("--fashion_mnist_dir", default=FASHION_MNIST_DIR,
                   help="Debian's dataset-fashion-mnist files, for a config that prepares "
                        "Fashion-MNIST (default: %(default)s).")
    g = parser.add_argument_group("overrides of the config's entries (default: the config's)")
    g.add_argument("--rounds", type=int, default=None,
                   help="Noisy Student iterations; each student teaches the next round.")
    g.add_argument("--ablations", default=None,
                   help="Comma-separated round-0 students to train, of full, no_noise, hard, "
                        "no_balance.")
    g.add_argument("--no_baseline", dest="baseline", action="store_false", default=None,
                   help="Do not train the baseline (each round's student architecture on the "
                        "labeled data alone).")
    g.add_argument("--seed", type=int, default=None,
                   help="Seed of the splits, training and shard placement.")
    parser.add_argument("--seeds", default="",
                        help="Comma-separated seeds, e.g. 0,1,2: run (or resume) the loop once "
                             "per seed in WORKDIR/seed-N, then write WORKDIR/seeds.md and "
                             "seeds.json with the mean and std of every model and gain. "
                             "Not with --seed.")
    g.add_argument("--min_confidence", type=float, default=None,
                   help="Confidence threshold of pseudo-labels.")
    g.add_argument("--images_per_class", type=int, default=None,
                   help="K; 0: unlabeled images / classes.")
    g.add_argument("--teacher_steps", type=int, default=None, help="Teacher training steps.")
    g.add_argument("--student_steps", type=int, default=None,
                   help="Training steps of every round's student.")
    g.add_argument("--unlabeled_ratio", type=float, default=None,
                   help="Unlabeled batch / labeled batch, of every model.")
    g.add_argument("--randaugment_magnitude", type=float, default=None,
                   help="RandAugment magnitude of every noised model.")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else []
    except ValueError:
        parser.error(f"--seeds={args.seeds}: expected comma-separated integers, e.g. 0,1,2")
    if args.seeds and args.seed is not None:
        parser.error("--seed and --seeds: give one (--seeds runs one loop per seed)")
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds={','.join(map(str, args.seeds))}: a seed is repeated")
    # One name per place: "run/", "x/../run" and "run" resume the same workdir.
    args.workdir = os.path.normpath(args.workdir)
    return args


def loop_config(args: argparse.Namespace) -> LoopConfig:
    """The config file's `LoopConfig` with the flags' overrides (checked as the config is)."""
    from ns_train import loop_config as lc  # noqa: PLC0415 - keeps --help light

    config = lc.load(args.config)
    changes: dict[str, Any] = {name: getattr(args, name) for name in ("rounds", "seed",
                                                                      "baseline")
                               if getattr(args, name) is not None}
    if args.ablations is not None:
        changes["ablations"] = tuple(args.ablations.split(","))
    labeling = {name: getattr(args, name) for name in ("min_confidence", "images_per_class")
                if getattr(args, name) is not None}
    if labeling:
        changes["labeling"] = dataclasses.replace(config.labeling, **labeling)
    every_model = {name: getattr(args, name) for name in ("unlabeled_ratio",
                                                          "randaugment_magnitude")
                   if getattr(args, name) is not None}
    teacher = {**config.teacher, **every_model}
    if args.teacher_steps is not None:
        teacher["steps"] = args.teacher_steps
    students = tuple({**student, **every_model} for student in config.students)
    if args.student_steps is not None:
        students = tuple({**student, "steps": args.student_steps} for student in students)
    return dataclasses.replace(config, teacher=teacher, students=students, **changes)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line: runs (or resumes) the loop of the flags; returns `run_loop`'s result,
    or with --seeds `run_seeds`'."""
    args = parse_args(argv)
    data = LoopData(workdir=args.workdir, labeled=args.labeled, unlabeled=args.unlabeled,
                    eval=args.eval, test=args.test, unlabeled_truth=args.unlabeled_truth,
                    fashion_mnist_dir=args.fashion_mnist_dir)
    if args.seeds:
        return run_seeds(loop_config(args), data, args.seeds)
    return run_loop(loop_config(args), data)


def run_seeds(config: LoopConfig, data: LoopData, seeds: list[int]) -> dict[str, Any]:
    """Runs (or resumes) the loop once per seed in WORKDIR/seed-N; writes WORKDIR/seeds.md and
    seeds.json (`round_report.seeds_table`) and returns the latter's content.

    Every seed's settings are checked before the first one starts.
    """
    from ns_data import round_report  # noqa: PLC0415

    runs = [(dataclasses.replace(config, seed=seed),
             dataclasses.replace(data, workdir=posixpath.join(data.workdir, f"seed-{seed}")))
            for seed in seeds]
    for seed_config, seed_data in runs:
        check_workdir(seed_config, seed_data)
    results = [run_loop(seed_config, seed_data) for seed_config, seed_data in runs]
    table = round_report.seeds_table(results)
    os.makedirs(data.workdir, exist_ok=True)
    with open(posixpath.join(data.workdir, "seeds.json"), "w") as f:
        json.dump(table, f, indent=2)
    text = round_report.format_seeds(table)
    with open(posixpath.join(data.workdir, "seeds.md"), "w") as f:
        f.write(text + "\n")
    print("\n" + text, flush=True)
    return table


# Changing these between runs of one workdir only adds work or names the same place; anything
# else would mix two runs.
_MAY_CHANGE = {"workdir", "unlabeled_truth", "fashion_mnist_dir", "config.rounds",
               "config.ablations", "config.baseline", "config.name"}


def _run_identity(config: LoopConfig, data: LoopData) -> dict[str, Any]:
    """What must not change, beyond _MAY_CHANGE, while a workdir is resumed: the data and every
    setting of the config (so an edited config file is caught too)."""
    return {**dataclasses.asdict(data),
            **{f"config.{name}": value for name, value in config.recorded().items()}}


def check_workdir(config: LoopConfig, data: LoopData) -> None:
    """Refuses to resume a workdir whose iterate.json records other data or settings."""
    from ns_train.train import refuse_changed_settings  # noqa: PLC0415 - keeps --help light

    refuse_changed_settings(posixpath.join(data.workdir, "iterate.json"),
                            _run_identity(config, data), _MAY_CHANGE, data.workdir)


def _record_workdir(config: LoopConfig, data: LoopData) -> None:
    """Writes iterate.json once the run has made something (its data splits)."""
    path = posixpath.join(data.workdir, "iterate.json")
    if not os.path.exists(path):
        os.makedirs(data.workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(_run_identity(config, data), f, indent=2)


@contextlib.contextmanager
def _stage(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Times one stage into `seconds[name]` and logs it, so a run shows where its hour goes."""
    from ns_data.progress import format_duration  # noqa: PLC0415

    start = time.monotonic()
    yield
    seconds[name] = round(time.monotonic() - start, 1)
    logger.info("%s: %s", name, format_duration(seconds[name]))


def resolve_data(config: LoopConfig, data: LoopData) -> LoopData:
    """The globs the loop reads: the flags', or those of the config's data step.

    Raises:
      ValueError: for missing data flags, or a glob that matches no files.
    """
    if not data.given:
        if config.fashion_mnist is None:
            raise ValueError("--labeled, --unlabeled and --eval are required: the config "
                             "prepares no data")
        prepared = posixpath.join(data.workdir, "data")
        return dataclasses.replace(
            data, **{flag: posixpath.join(prepared, f"{split}-*.tfrecord") for flag, split in
                     (("labeled", "labeled"), ("unlabeled", "unlabeled"), ("eval", "holdout"),
                      ("test", "test"))},
            unlabeled_truth=data.unlabeled_truth or posixpath.join(prepared,
                                                                   "unlabeled_truth.csv"))

    missing = [f"--{flag}" for flag in ("labeled", "unlabeled", "eval")
               if not getattr(data, flag)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: the loop needs labeled, unlabeled and "
                         "eval (holdout) data")
    for flag in ("labeled", "unlabeled", "eval", "test"):
        pattern = getattr(data, flag)
        if pattern and not tf.io.gfile.glob(pattern):
            raise ValueError(f"--{flag}={pattern} matches no files")
    if data.unlabeled_truth and not tf.io.gfile.exists(data.unlabeled_truth):
        raise ValueError(f"--unlabeled_truth={data.unlabeled_truth} does not exist")
    return data


def trainings(config: LoopConfig, data: LoopData) -> Iterator[tuple[str, TrainConfig]]:
    """Every training the loop will run, by stage name, with the paths it will use."""
    here = data.workdir
    teacher = config.teacher_config(workdir=posixpath.join(here, "round0", "teacher"),
                                    labeled=data.labeled, eval=data.eval)
    yield "teacher", teacher
    # Every model trains on the same labeled files: the teacher's normalisation analysis serves
    # them all (the trainer checks it read exactly those files).
    shared = {"labeled": data.labeled, "eval": data.eval}
    if teacher.normalization == "tft":
        shared["transform_from"] = teacher.transform_dir
    baselines = baseline_trainings(config) if config.baseline else {}
    for r in range(config.rounds):
        for variant in _variants(config, r):
            yield f"round{r} student {variant}", config.student_config(
                r, noise=variant != "no_noise", **shared,
                workdir=posixpath.join(here, f"round{r}", f"student_{variant}"),
                unlabeled=posixpath.join(_labels_dir(here, r, variant), "pseudo_labels-*"))
        if baselines.get(r) == f"round{r} baseline":
            yield f"round{r} baseline", config.baseline_config(
                r, **shared, workdir=posixpath.join(here, f"round{r}", "baseline"))


def baseline_trainings(config: LoopConfig) -> dict[int, str]:
    """Round -> the training whose model is that round's baseline, trained once: the teacher
    when the student is the teacher's model, steps and noise (the paper's same-size setting,
    where the baseline is the teacher), else the first round with the same student."""
    first: dict[TrainConfig, str] = {config.teacher_config(): "teacher"}
    return {r: first.setdefault(config.baseline_config(r), f"round{r} baseline")
            for r in range(config.rounds)}


def _variants(config: LoopConfig, round_index: int) -> tuple[str, ...]:
    return config.ablations if round_index == 0 else ("full",)


_LABELS_DIRS = {"full": "pseudo_soft", "no_noise": "pseudo_soft", "hard": "pseudo_hard",
                "no_balance": "pseudo_unbalanced"}


def _labels_dir(workdir: str, round_index: int, variant: str) -> str:
    return posixpath.join(workdir, f"round{round_index}", _LABELS_DIRS[variant])


def _label_config(config: LoopConfig, data: LoopData, teacher: str, round_index: int,
                  k: int) -> LabelAndBalanceConfig:
    """The round's label_and_balance run."""
    from beam_jobs.cli import BalanceSettings  # noqa: PLC0415
    from beam_jobs.label_and_balance import LabelAndBalanceConfig  # noqa: PLC0415

    labeling, round_dir = config.labeling, posixpath.join(data.workdir, f"round{round_index}")
    return LabelAndBalanceConfig(
        input=data.unlabeled, teacher=teacher, batch_size=labeling.batch_size,
        predictions_dir=posixpath.join(round_dir, "predictions"),
        balance=BalanceSettings(
            output_dir=_labels_dir(data.workdir, round_index, "full"), images_per_class=k,
            min_confidence=labeling.min_confidence, label_type=labeling.label_type,
            num_shards=labeling.num_shards, seed=config.seed, max_copies=labeling.max_copies,
            overwrite=True))


def _rebalance_config(config: LoopConfig, data: LoopData, variant: str, k: int,
                      num_unlabeled: int) -> RebalanceConfig:
    """Round 0's re-selection for the `hard` or `no_balance` ablation."""
    from beam_jobs.cli import BalanceSettings  # noqa: PLC0415
    from beam_jobs.rebalance import RebalanceConfig  # noqa: PLC0415

    labeling = config.labeling
    hard = variant == "hard"
    return RebalanceConfig(
        predictions=posixpath.join(data.workdir, "round0", "predictions"),
        balance=BalanceSettings(
            output_dir=_labels_dir(data.workdir, 0, variant),
            images_per_class=k if hard else max(1, num_unlabeled),
            min_confidence=labeling.min_confidence,
            label_type="hard" if hard else labeling.label_type, no_duplicate=not hard,
            num_shards=labeling.num_shards, seed=config.seed, max_copies=labeling.max_copies,
            overwrite=True))


def check_settings(config: LoopConfig, data: LoopData, k: int) -> None:
    """Refuses, before any work, a setting that a step of the loop would refuse later: every
    model's training settings and every label_and_balance and rebalance run's, with the
    messages those steps give. Reads no data and no model (a glob's files may not exist yet).
    """
    k = k or 1  # 0 means "from the data", known once it is prepared
    dict(trainings(config, data))  # each model's TrainConfig checks itself
    _label_config(config, data, data.workdir, 0, k)
    for variant in ("hard", "no_balance"):
        if variant in config.ablations:
            _rebalance_config(config, data, variant, k, k)


def _count_records(pattern: str) -> int:

    files = sorted(tf.io.gfile.glob(pattern))
    return int(tf.data.TFRecordDataset(files).reduce(tf.constant(0, tf.int64),
                                                     lambda n, _: n + 1))


def _splits_file(workdir: str) -> str:
    return posixpath.join(workdir, "data", "splits.json")


def _sizes(data: LoopData, prepared: bool) -> dict[str, int]:
    """Records per split (`holdout` is --eval): counted, or as the data step wrote them."""
    if prepared:
        with open(_splits_file(data.workdir)) as f:
            return json.load(f)["sizes"]
    return {split: _count_records(getattr(data, flag)) for split, flag in
            (("labeled", "labeled"), ("holdout", "eval"), ("unlabeled", "unlabeled"),
             ("test", "test")) if getattr(data, flag)}


def _read_truth(path: str) -> dict[bytes, int] | None:
    if not path:
        return None
    with open(path) as f:
        next(f)
        return {line.split(",")[0].encode(): int(line.split(",")[1]) for line in f
                if line.strip()}


def _evaluate(export_dir: str, data: LoopData) -> dict[str, float]:
    from ns_train.evaluate import evaluate_export  # noqa: PLC0415

    return {split: evaluate_export(export_dir, pattern)["top1"]
            for split, pattern in (("holdout", data.eval), ("test", data.test)) if pattern}


def _model_entry(export: str, train_config: TrainConfig, data: LoopData) -> dict[str, Any]:
    """A trained model in results.json: its export, top-1 per split and size."""
    from ns_train import loop_config as lc  # noqa: PLC0415
    from ns_train.train import build_model  # noqa: PLC0415

    return {"export": export, **_evaluate(export, data),
            "architecture": lc.describe(train_config),
            "parameters": int(build_model(train_config).count_params()),
            "steps": train_config.steps}


def run_loop(config: LoopConfig, given: LoopData) -> dict[str, Any]:
    """Runs (or resumes) the loop of `config` on the data `given`; returns what results.json
    holds.

    Raises:
      ValueError: before any work, for a setting any step would refuse, or a workdir that holds
        a run with other settings.
    """
    from beam_jobs import label_and_balance, prepare_fashion_mnist, rebalance  # noqa: PLC0415
    from ns_data import report, round_report, stats  # noqa: PLC0415
    from ns_data.progress import format_duration  # noqa: PLC0415
    from ns_train import train as trainer  # noqa: PLC0415

    data = resolve_data(config, given)
    try:
        check_settings(config, data, config.labeling.images_per_class)
    except ValueError as e:
        raise ValueError(f"{e} (a setting of the loop's steps; nothing was run)") from e
    check_workdir(config, given)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    splits = config.fashion_mnist
    if not given.given and not os.path.exists(_splits_file(data.workdir)):
        with _stage("prepare", seconds):
            sizes = prepare_fashion_mnist.prepare(
                posixpath.join(data.workdir, "data"), num_labeled=splits.num_labeled,
                num_holdout=splits.num_holdout, seed=config.seed,
                data_dir=data.fashion_mnist_dir, limit=splits.limit)
        logger.info("Prepared %s", sizes)
    _record_workdir(config, given)
    sizes = _sizes(data, prepared=not given.given)
    teacher_config = config.teacher_config()
    k = config.labeling.images_per_class or max(1, sizes["unlabeled"]
                                                // teacher_config.num_classes)
    class_names = teacher_config.class_name_list or [
        str(c) for c in range(teacher_config.num_classes)]
    truth = _read_truth(data.unlabeled_truth)
    models = dict(trainings(config, data))

    with _stage("round0 teacher", seconds):
        teacher = trainer.train(models["teacher"])["export_dir"]
    teacher_entry = _model_entry(teacher, models["teacher"], data)
    rounds = []
    for r in range(config.rounds):
        label_config = _label_config(config, data, teacher, r, k)
        with _stage(f"round{r} label_and_balance", seconds):
            if not _done(label_config.balance.output_dir):
                label_and_balance.run_job(label_config)
        variants = _variants(config, r)
        for variant in ("hard", "no_balance"):
            if variant in variants:
                rebalance_config = _rebalance_config(config, data, variant, k,
                                                     sizes["unlabeled"])
                with _stage(f"round{r} rebalance {variant}", seconds):
                    if not _done(rebalance_config.balance.output_dir):
                        rebalance.run_job(rebalance_config)
        students = {}
        for variant in variants:
            pseudo = _labels_dir(data.workdir, r, variant)
            student_config = models[f"round{r} student {variant}"]
            with _stage(f"round{r} student {variant}", seconds):
                export = trainer.train(student_config)["export_dir"]
                students[variant] = {
                    **_model_entry(export, student_config, data), "pseudo_labels": pseudo,
                    "pseudo_labels_written": [c["written"] for c in
                                              stats.read_stats(pseudo)["classes"]],
                    "description": DESCRIPTIONS[variant]}
        baseline = {}
        if config.baseline:
            name = baseline_trainings(config)[r]
            with _stage(f"round{r} baseline", seconds):  # a shared one is trained once
                export = trainer.train(models[name])["export_dir"]
                baseline = {"baseline": {
                    **_model_entry(export, models[name], data),
                    "description": BASELINE_DESCRIPTION + ("; the round-0 teacher"
                                                           if name == "teacher" else "")}}
        report_dir = posixpath.join(data.workdir, "report", f"round{r}")
        with _stage(f"round{r} report", seconds):
            labeling = report.write_label_report(label_config.balance.output_dir,
                                                 label_config.predictions_dir, report_dir,
                                                 class_names, truth=truth)
        rounds.append({"round": r, "teacher": teacher_entry, **baseline, "students": students,
                       "labeling": labeling, "report_dir": report_dir})
        print(round_report.format_round(rounds[-1]), flush=True)
        if "full" in students:  # it teaches the next round
            teacher = students["full"]["export"]
            teacher_entry = {key: students["full"][key] for key in teacher_entry}
    seconds["total"] = round(time.monotonic() - started, 1)
    result = {"name": config.name, "config": config.recorded(), "data": dataclasses.asdict(data),
              "sizes": sizes, "images_per_class": k, "seconds": seconds, "rounds": rounds}
    with open(posixpath.join(data.workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    summary = round_report.write_summary(posixpath.join(data.workdir, "report"), result,
                                         class_names)
    print(f"\nDone in {format_duration(seconds['total'])}. Report: {summary}")
    return result


def _done(output_dir: str) -> bool:
    """Whether a labeling run wrote its stats.json (it finished; rerunning skips it)."""

    from ns_data import stats  # noqa: PLC0415

    return tf.io.gfile.exists(posixpath.join(output_dir, stats.STATS_FILE))


def main() -> None:
    from ns_train.config import configure_logging  # noqa: PLC0415

    configure_logging()
    try:
        run()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    startup.quiet_startup()
    main()
