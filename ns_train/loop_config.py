"""The Noisy Student loop's configuration: `python -m beam_jobs.iterate --config=FILE.py[:VARIANT]`.

A loop config file (big_vision style, like `configs/fashion_mnist_loop.py`) is a Python file
whose `get_config(arg=None)` returns a `LoopConfig`: the teacher's training settings (fields of
`TrainConfig`), one entry per round for that round's student (the fields that differ from the
teacher's: in the paper each round's student is equal to or larger than its teacher), the
labeling settings, rounds, ablations and seed. `arg` picks a variant, e.g. `runlocal`: the same
experiment tiny enough to run in minutes.

Every setting is checked when the config is made: each model's `TrainConfig` is built, so a bad
value is refused with the trainer's own message before anything runs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ns_data.completion import DEFAULT_MAX_COPIES
from ns_train.config import TrainConfig, check_option_names, load_python_config

ABLATIONS = ("full", "no_noise", "hard", "no_balance")
# What the `no_noise` ablation changes: the student without RandAugment, dropout and
# stochastic depth.
NO_NOISE = {"randaugment_ops": 0, "dropout": 0.0, "stochastic_depth": 1.0}
# Set by the loop for every model (data, places, seed); a config entry would be ignored.
_LOOP_FIELDS = ("workdir", "labeled", "unlabeled", "allow_incomplete", "eval", "export_dir",
                "seed")
# Fixed by the data and the pseudo-labels for every model of a run.
_DATA_FIELDS = ("num_classes", "class_names", "channels")


@dataclasses.dataclass(frozen=True)
class FashionMNISTSplits:
    """The `prepare_fashion_mnist` step a config may bring: it runs when no data globs are
    given (`beam_jobs.prepare_fashion_mnist` documents the splits)."""

    num_labeled: int = 5000
    num_holdout: int = 5000
    limit: int = 0  # only the first `limit` train and test images (0: all)


@dataclasses.dataclass(frozen=True)
class LabelingConfig:
    """Each round's `label_and_balance` run (and the ablations' `rebalance` runs). The jobs
    check the values, with their flags' messages, before the loop starts."""

    min_confidence: float = 0.3
    images_per_class: int = 0  # K; 0: the unlabeled images / classes
    label_type: str = "soft"
    num_shards: int = 8
    batch_size: int = 256  # the teacher's inference batch
    # The jobs' --max_copies (0: no limit). With K = unlabeled images / classes, a class
    # duplicated past it has under 1% of its share above the threshold: a broken teacher.
    max_copies: int = DEFAULT_MAX_COPIES

    def __post_init__(self):
        if self.images_per_class < 0:
            raise ValueError(f"images_per_class must be >= 0 (0: unlabeled images / classes), "
                             f"got {self.images_per_class}")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """One Noisy Student experiment.

    Attributes:
      teacher: `TrainConfig` fields of the round-0 teacher, and the base of every student.
      students: per round, the `TrainConfig` fields in which that round's student differs from
        the teacher (e.g. wider `resnet_widths`, more `steps`); `rounds` may not exceed it.
      labeling: the pseudo-labeling settings.
      rounds: Noisy Student iterations; round r's student teaches round r + 1.
      ablations: round-0 students to train, of `ABLATIONS`; round 1 on trains `full` only.
      baseline: per round, also train the paper's baseline: that round's student architecture
        for its steps, with its noise, on the labeled data alone; the tables then give each
        student's gain over it. Rounds whose students are the same model share one, and a
        student that is the teacher's model, steps and noise has the teacher as its baseline.
      seed: of the data splits, training and shard placement.
      name: the dataset's name, for the report's title.
      fashion_mnist: prepare Fashion-MNIST when no data globs are given (None: never).
    """

    teacher: Mapping[str, Any]
    students: tuple[Mapping[str, Any], ...]
    labeling: LabelingConfig = LabelingConfig()
    rounds: int = 1
    ablations: tuple[str, ...] = ("full",)
    baseline: bool = True
    seed: int = 0
    name: str = ""
    fashion_mnist: FashionMNISTSplits | None = None

    def __post_init__(self):
        check_option_names(self.teacher, "teacher")
        _refuse(self.teacher, _LOOP_FIELDS, "teacher", "set by the loop")
        for r, student in enumerate(self.students):
            check_option_names(student, f"students[{r}]")
            _refuse(student, _LOOP_FIELDS, f"students[{r}]", "set by the loop")
            _refuse(student, _DATA_FIELDS, f"students[{r}]", "the teacher's, fixed by the data")
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown or not self.ablations or len(set(self.ablations)) < len(self.ablations):
            raise ValueError(f"ablations must name each of {ABLATIONS} at most once, got "
                             f"{list(self.ablations)}" + (f" (unknown {unknown})" if unknown
                                                          else ""))
        if not 1 <= self.rounds <= len(self.students):
            raise ValueError(f"rounds must be in [1, {len(self.students)}]: the config has "
                             f"students for {len(self.students)} rounds, got {self.rounds}")
        if self.rounds > 1 and "full" not in self.ablations:
            raise ValueError("rounds > 1 needs the 'full' student in ablations: it teaches the "
                             "next round")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        previous, name = self.teacher_config(), "the teacher"
        for r in range(len(self.students)):
            student = self.student_config(r)
            problem = _smaller(student, previous)
            if problem:
                raise ValueError(f"students[{r}] is smaller than {name} ({problem}): a Noisy "
                                 "Student is equal to or larger than its teacher")
            previous, name = student, f"students[{r}]"
        for variant in self.ablations:
            self.student_config(0, noise=variant != "no_noise")

    def teacher_config(self, **paths: str) -> TrainConfig:
        """The teacher's training settings; `paths` gives the loop's fields (workdir, ...)."""
        return _train_config(self.teacher, seed=self.seed, **paths)

    def student_config(self, round_index: int, noise: bool = True, **paths: str) -> TrainConfig:
        """Round `round_index`'s student (without noise for the `no_noise` ablation)."""
        return _train_config({**self.teacher, **self.students[round_index],
                              **({} if noise else NO_NOISE)}, seed=self.seed, **paths)

    def baseline_config(self, round_index: int, **paths: str) -> TrainConfig:
        """Round `round_index`'s baseline: its student without pseudo-labels (`paths` has no
        `unlabeled`)."""
        if "unlabeled" in paths:
            raise ValueError("a baseline trains on the labeled data alone")
        return self.student_config(round_index, **paths)

    def recorded(self) -> dict[str, Any]:
        """Every setting by a dotted name (`teacher.steps`, `students[1].resnet_widths`), so a
        resumed run names exactly what changed."""
        return _flatten(dataclasses.asdict(self))


def load(spec: str) -> LoopConfig:
    """The `LoopConfig` of `--config=FILE.py[:VARIANT]`."""
    config = load_python_config(spec)
    if not isinstance(config, LoopConfig):
        raise ValueError(f"--config={spec}: get_config() returns a {type(config).__name__}, not "
                         "a LoopConfig (ns_train.loop_config); a trainer config (a dict) is for "
                         "ns_train.train")
    return config


def describe(config: TrainConfig) -> str:
    """A model's architecture in a few words, e.g. `small_resnet 24/48/96 x1`."""
    if config.model == "small_resnet":
        return (f"small_resnet {'/'.join(map(str, config.resnet_widths))} "
                f"x{config.resnet_blocks}")
    return config.model


def _train_config(values: Mapping[str, Any], **fixed: Any) -> TrainConfig:
    values = {**values, **fixed}
    for name in ("image_size", "resnet_widths"):
        if name in values:
            values[name] = tuple(values[name])
    # Log and checkpoint cadence follow the steps unless the config sets them.
    steps = values.get("steps", 0)
    if steps:
        values = {"log_every": max(1, steps // 10), "checkpoint_every": max(1, steps // 4),
                  **values}
    return TrainConfig(**values)


def _refuse(entry: Mapping[str, Any], names: tuple[str, ...], where: str, why: str) -> None:
    found = [name for name in names if name in entry]
    if found:
        raise ValueError(f"{where}: {', '.join(found)} may not be set here ({why})")


def _smaller(student: TrainConfig, teacher: TrainConfig) -> str | None:
    """How `student` is smaller than `teacher` (same family of models), or None."""
    if student.model == teacher.model == "small_resnet":
        if len(student.resnet_widths) != len(teacher.resnet_widths):
            return (f"{len(student.resnet_widths)} stages, not {len(teacher.resnet_widths)}")
        if any(s < t for s, t in zip(student.resnet_widths, teacher.resnet_widths)):
            return (f"resnet_widths {list(student.resnet_widths)} < "
                    f"{list(teacher.resnet_widths)}")
        if student.resnet_blocks < teacher.resnet_blocks:
            return f"resnet_blocks {student.resnet_blocks} < {teacher.resnet_blocks}"
    elif student.model.startswith("efficientnet") and teacher.model.startswith("efficientnet"):
        if student.model < teacher.model:
            return f"{student.model} < {teacher.model}"
    return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, item in value.items()
                for k, v in _flatten(item, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Mapping):
        return {k: v for i, item in enumerate(value)
                for k, v in _flatten(item, f"{prefix}[{i}]").items()}
    return {prefix: value}
