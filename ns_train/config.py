"""The trainer's configuration: one frozen dataclass, its command-line flags, and config files
(and the command line's logging, `configure_logging`, which `beam_jobs.iterate` shares).

Every option is a field of `TrainConfig` with its help text next to it; `parse_args` turns the
fields into flags, so `python -m ns_train.train --help` documents all of them. A config file
(big_vision style) is a small Python file with `get_config()` returning a dict of field values:

    python -m ns_train.train --config=ns_train/configs/fashion_mnist.py --workdir=out/t --steps=50

Precedence: explicit flags, then the config file, then the defaults below.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import inspect
import logging
import os
import posixpath
import sys
import typing
from collections.abc import Iterable
from typing import Any

from ns_data import startup
from ns_data.images import ImageSpec
from ns_train.augment import MAX_MAGNITUDE

MODELS = ("small_resnet",) + tuple(f"efficientnet-b{i}" for i in range(8))
OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("cosine", "exponential", "constant")
NORMALIZATIONS = ("tft", "none")


def _field(default: Any, help: str, **kwargs) -> Any:  # noqa: A002 - mirrors argparse
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Teacher mode without `unlabeled`, student mode with it."""

    workdir: str = _field("", "Directory for checkpoints, TensorBoard logs, the export and "
                              "result.json. Rerunning with the same workdir resumes.")
    labeled: str = _field("", "Glob of labeled TFRecords (ns_data.schema; `label` is the class).")
    unlabeled: str = _field("", "Glob of pseudo-labeled TFRecords from label_and_balance (hard, "
                                "soft or soft_topk). Empty: teacher mode, labeled data only.")
    allow_incomplete: bool = _field(False, "Train on --unlabeled shards even when their "
                                    "directory has no _SUCCESS marker (the label_and_balance "
                                    "run that wrote them did not finish).")
    eval: str = _field("", "Glob of labeled TFRecords for top-1 evaluation (EMA weights). "
                           "Empty: no evaluation.")
    num_classes: int = _field(10, "Number of classes.")
    class_names: str = _field("", "Comma-separated class names, recorded in the export.")
    image_size: tuple[int, int] = _field((28, 28), "Input height and width; images are "
                                                   "resized to it.", nargs=2)
    channels: int = _field(1, "Input channels (1 or 3).", choices=(1, 3))

    model: str = _field("small_resnet", "Architecture, trained from scratch.", choices=MODELS)
    resnet_widths: tuple[int, ...] = _field((32, 64, 128), "small_resnet: filters per stage.",
                                            nargs="+")
    resnet_blocks: int = _field(2, "small_resnet: residual blocks per stage.")
    dropout: float = _field(-1.0, "Dropout rate before the classifier; 0 turns it off, -1 uses "
                                  "the model's default (0.2 small_resnet, 0.2..0.5 EfficientNet).")
    stochastic_depth: float = _field(0.8, "Survival probability of the last block, decaying "
                                          "linearly from 1.0 at the first; 1 turns it off.")
    randaugment_ops: int = _field(2, "RandAugment operations per image; 0 turns it off.")
    randaugment_magnitude: float = _field(27.0, "RandAugment magnitude on the 0..30 scale.")

    batch_size: int = _field(128, "Labeled examples per step (global, over all replicas).")
    unlabeled_ratio: float = _field(1.0, "Unlabeled batch = ratio x labeled batch (paper: 3 "
                                         "for large models, 1 for small ones).")
    steps: int = _field(0, "Training steps; 0 derives them from --epochs.")
    epochs: float = _field(10.0, "Passes over the larger input stream when --steps is 0.")
    label_smoothing: float = _field(0.1, "Label smoothing of the labeled cross-entropy.")
    target_temperature: float = _field(1.0, "Extra softmax temperature on soft pseudo-label "
                                             "targets (<1 sharpens); 1 keeps them.")

    optimizer: str = _field("sgd", "Optimizer.", choices=OPTIMIZERS)
    learning_rate: float = _field(0.1, "Peak learning rate, reached after the warmup.")
    momentum: float = _field(0.9, "Momentum of SGD and RMSProp.")
    weight_decay: float = _field(5e-5, "Decoupled weight decay (not on biases or norms).")
    schedule: str = _field("cosine", "Decay after the warmup.", choices=SCHEDULES)
    warmup_steps: int = _field(-1, "Linear warmup steps from 0 to the peak; 0 turns it off, -1 "
                                   "uses 5% of the steps.")
    decay_rate: float = _field(0.97, "exponential: factor applied every --decay_epochs.")
    decay_epochs: float = _field(2.4, "exponential: epochs between decays (EfficientNet: 2.4).")
    ema_decay: float = _field(0.999, "Decay of the weight EMA used for eval and export; 0 "
                                     "evaluates and exports the raw weights.")

    normalization: str = _field("tft", "Pixel normalisation baked into the export: 'tft' "
                                        "computes per-channel mean/std over the labeled set with "
                                        "tensorflow-transform; 'none' scales to [0, 1].",
                                choices=NORMALIZATIONS)
    transform_from: str = _field("", "tft: reuse the analysis of another run on the same "
                                     "--labeled files (its WORKDIR/transform) instead of "
                                     "analysing again; refused if it read other files or another "
                                     "image size. beam_jobs.iterate passes its teacher's.")
    log_every: int = _field(50, "Steps between log lines and TensorBoard scalars.")
    eval_every: int = _field(0, "Steps between evaluations; 0: only at the end.")
    checkpoint_every: int = _field(500, "Steps between checkpoints (one is always written at "
                                        "the end).")
    keep_checkpoints: int = _field(3, "Checkpoints kept in the workdir.")
    export_dir: str = _field("", "Where to export the teacher SavedModel; empty: WORKDIR/export.")
    shuffle_buffer: int = _field(10_000, "Examples in each input's shuffle buffer.")
    seed: int = _field(0, "Seed of initialisation, shuffling and augmentation.")
    tpu: str = _field("", "TPU address or name ('local' for a TPU VM); uses TPUStrategy. "
                          "Without it: MirroredStrategy over GPUs, else the default strategy.")

    def __post_init__(self):
        checks = [
            (self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.unlabeled_ratio > 0, f"unlabeled_ratio must be > 0, got {self.unlabeled_ratio}"),
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.steps > 0 or self.epochs > 0, "set --steps or a positive --epochs"),
            (0 <= self.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.target_temperature > 0,
             f"target_temperature must be > 0, got {self.target_temperature}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.dropout == -1 or 0 <= self.dropout < 1,
             f"dropout must be in [0, 1) or -1, got {self.dropout}"),
            (0 < self.stochastic_depth <= 1,
             f"stochastic_depth must be in (0, 1], got {self.stochastic_depth}"),
            (self.randaugment_ops >= 0,
             f"randaugment_ops must be >= 0, got {self.randaugment_ops}"),
            (0 <= self.randaugment_magnitude <= MAX_MAGNITUDE,
             f"randaugment_magnitude must be in [0, {MAX_MAGNITUDE:g}], got "
             f"{self.randaugment_magnitude}"),
            (self.warmup_steps >= -1, f"warmup_steps must be >= -1, got {self.warmup_steps}"),
            (0 < self.decay_rate <= 1, f"decay_rate must be in (0, 1], got {self.decay_rate}"),
            (self.decay_epochs > 0, f"decay_epochs must be > 0, got {self.decay_epochs}"),
            (min(self.log_every, self.checkpoint_every, self.keep_checkpoints) >= 1,
             "log_every, checkpoint_every and keep_checkpoints must be >= 1"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (all(w >= 1 for w in self.resnet_widths) and self.resnet_blocks >= 1,
             "resnet_widths and resnet_blocks must be positive"),
            (len(self.class_name_list) in (0, self.num_classes),
             f"--class_names has {len(self.class_name_list)} names for "
             f"{self.num_classes} classes"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        # argparse enforces choices on flags; config files reach here without it.
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices and getattr(self, field.name) not in choices:
                raise ValueError(f"{field.name} must be one of {choices}, "
                                 f"got {getattr(self, field.name)!r}")

    @property
    def image(self) -> ImageSpec:
        return ImageSpec(self.image_size[0], self.image_size[1], self.channels)

    @property
    def class_name_list(self) -> list[str]:
        return [name.strip() for name in self.class_names.split(",") if name.strip()]

    @property
    def unlabeled_batch_size(self) -> int:
        return max(1, round(self.batch_size * self.unlabeled_ratio))

    @property
    def student(self) -> bool:
        return bool(self.unlabeled)

    @property
    def transform_dir(self) -> str:
        """The tensorflow-transform analysis a `tft` run normalises with: --transform_from, or
        its own in WORKDIR/transform."""
        return self.transform_from or posixpath.join(self.workdir, "transform")


def load_python_config(spec: str) -> Any:
    """What `get_config()` returns in a config file (big_vision style).

    Args:
      spec: the file's path, or `path.py:VARIANT` to call `get_config(VARIANT)` (e.g.
        `:runlocal` for a config's tiny variant).

    Raises:
      ValueError: naming `spec`, for a file that is not a config or a variant it does not take.
    """
    path, variant = spec.rsplit(":", 1) if ".py:" in spec else (spec, None)
    if not os.path.isfile(path):
        raise ValueError(f"--config={path}: no such file")
    module_spec = importlib.util.spec_from_file_location("ns_train_config", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"--config={spec} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config={spec} has no get_config() function")
    if variant is None:
        return module.get_config()
    try:
        inspect.signature(module.get_config).bind(variant)
    except TypeError:
        raise ValueError(f"--config={spec}: get_config() of {path} takes no variant") from None
    return module.get_config(variant)


def check_option_names(names: Iterable[str], where: str) -> None:
    """Refuses a name that is not a `TrainConfig` field, suggesting the closest one."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in names:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown option {key!r}{hint}")


def load_config_file(path: str) -> dict[str, Any]:
    """The dict returned by `get_config()` in the Python file at `path` (`path.py:VARIANT` for
    `get_config(VARIANT)`)."""
    values = dict(load_python_config(path))
    check_option_names(values, path)
    return values


def _flag_type(field: dataclasses.Field) -> type:
    hint = typing.get_type_hints(TrainConfig)[field.name]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0]
    return hint


def parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per `TrainConfig` field, plus --config."""
    result = argparse.ArgumentParser(
        prog="python -m ns_train.train",
        description="Train a Noisy Student teacher (labeled data) or student (labeled + "
                    "pseudo-labeled data) and export it for beam_jobs.label_and_balance.",
        epilog=startup.HELP, allow_abbrev=False)
    result.add_argument("--config", default="",
                        help="Python file with get_config() -> dict of the options below.")
    for field in dataclasses.fields(TrainConfig):
        extra = {k: v for k, v in field.metadata.items() if k != "help"}
        text = f"{field.metadata['help']} (default: {field.default})".replace("%", "%%")
        kind = _flag_type(field)
        typed = ({"action": argparse.BooleanOptionalAction} if kind is bool
                 else {"type": kind})
        result.add_argument(f"--{field.name}", default=None, help=text, **typed, **extra)
    return result


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags (and an optional --config file) → a validated `TrainConfig`.

    Raises:
      SystemExit: on unknown flags or invalid values, with the reason (argparse style).
    """
    flag_parser = parser()
    args = flag_parser.parse_args(argv)
    try:
        values = load_config_file(args.config) if args.config else {}
    except ValueError as e:
        flag_parser.error(str(e))
    for name, value in vars(args).items():
        if name != "config" and value is not None:
            values[name] = value
    for name in ("image_size", "resnet_widths"):
        if name in values:
            values[name] = tuple(values[name])
    try:
        config = TrainConfig(**values)
    except ValueError as e:
        flag_parser.error(str(e))
    for name in ("workdir", "labeled"):
        if not getattr(config, name):
            flag_parser.error(f"--{name} is required")
    return config


def configure_logging() -> None:
    """Timestamped progress lines on stderr (TensorFlow's and Beam's INFO lines are held back
    by `ns_data.startup.quiet_startup`, which the entry points call first)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
