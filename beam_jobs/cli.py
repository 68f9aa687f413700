"""What every job's command line shares: flag types, the input flags of `label_and_balance` and
`reshard`, the output flags of those and `rebalance`, the selection flags, Beam options with this
project's defaults, output-directory checks, the closing summary, and `main` (one-line errors,
exit statuses).

Flags two jobs share live in one `PipelineOptions` class here, which each job's options class
lists as a base beside `PipelineOptions` itself: Beam parses every job's command line with the
flags of all of `PipelineOptions`' direct subclasses, so a flag defined by two classes would
clash, while a view (`options.view_as(LabelAndBalanceOptions)`) shows its bases' flags too. Such
a class defines its own `_add_argparse_args` (Beam would call an inherited one a second time).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import posixpath
import sys
from collections.abc import Callable, Mapping
from typing import Any

from apache_beam.options.pipeline_options import (PipelineOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from ns_data import completion, formats, predictions, schema, stats, teacher_flags
from ns_data.balance import DEFAULT_COLLECT_LIMIT
from ns_data.lazy import tf
from ns_data.pipeline import BalanceConfig
from ns_data.read import INPUT_FORMATS, check_input_pattern
from ns_data.write import (DEAD_LETTER_PREFIX, DEFAULT_CHUNK_RECORDS, PSEUDO_LABEL_PREFIX,
                           shard_pattern)


def main(run: Callable[[list[str] | None], Any], prog: str,
         argv: list[str] | None = None) -> int:
    """Runs a job's `run(argv)` as a command.

    Bad settings (`ValueError`, whose messages name the flag) and a finished run that fails its
    checks (too many failures or copies) are one line on stderr, with exit status 2 and 1;
    anything else keeps its traceback, because it is a bug or an infrastructure failure.
    """
    try:
        run(argv)
    except completion.RunCheckError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def check_values(parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> None:
    """Refuses a value its flag would refuse, with argparse's own message (e.g. "argument
    --min_confidence: must be in [0, 1], got 1.5"): a job's config built in code (by `iterate`)
    is checked exactly as its command line is, before any work.

    Args:
      parser: the job's parser; `values` are keyed by its flags' destinations.
      values: a flag's value as its type would give it (None: not given, for flags without a
        default).

    Raises:
      ValueError: for a value its flag's type, range or choices refuse, or of another type.
    """
    actions = {action.dest: action for action in parser._actions}
    for name, value in values.items():
        action = actions[name]
        flag = "/".join(action.option_strings)
        if value is None and action.default is None:
            continue
        if action.nargs == 0:  # --flag without a value: True or False
            if not isinstance(value, bool):
                raise ValueError(f"argument {flag}: takes True or False, got {value!r}")
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        try:
            parsed = parser._get_value(action, text)
            parser._check_value(action, parsed)
        except argparse.ArgumentError as e:
            raise ValueError(str(e)) from e
        if parsed != value or isinstance(value, bool):
            raise ValueError(f"argument {flag}: takes {type(parsed).__name__} values, got "
                             f"{value!r}")


positive_int = teacher_flags.positive_int
non_negative_int = teacher_flags.int_at_least(0)
require_flags = teacher_flags.require_flags


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not -2**63 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must fit in 64 bits, got {value}")
    return value


def add_options_args(parser: argparse.ArgumentParser, options: type[PipelineOptions]) -> None:
    """Adds the flags of an options class and of its bases to a job's --help parser, bases
    first, as Beam does for a view."""
    for cls in reversed(options.mro()):
        if issubclass(cls, PipelineOptions) and "_add_argparse_args" in cls.__dict__:
            cls._add_argparse_args(parser)


class InputOptions(PipelineOptions):
    """What a job reads: `label_and_balance` and `reshard`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("input")
        g.add_argument("--input", help="Glob of the unlabeled images: TFRecord files of "
                       "tf.train.Example with image/encoded (and optional image/id), or image "
                       "files, Parquet files or WebDataset tar shards with --input_format. * "
                       "stays in one folder, ** crosses folders: 'photos/**' is every file "
                       "under photos/, 'photos/**/*.jpg' every .jpg there, subfolders included. "
                       "Required.")
        g.add_argument("--input_format", choices=INPUT_FORMATS, default="tfrecord",
                       help="What --input holds: tfrecord; images (one file each, the id is "
                       "its path under the glob's folder: photos/cats/1.jpg is cats/1.jpg with "
                       "--input='photos/**'); parquet (one image per row, read a row group at "
                       "a time, a big file in splits of row groups by several workers; see "
                       "--image_column, --id_column); webdataset (tar shards, plain or "
                       "compressed, of key.jpg|jpeg|png|webp|gif|bmp members, the id is the key; "
                       "other members are ignored) (default: %(default)s).")
        g.add_argument("--image_column", default=None,
                       help="With --input_format=parquet: the image column, binary or a struct "
                       "with a 'bytes' field as Hugging Face datasets store images (default: "
                       f"{formats.DEFAULT_IMAGE_COLUMN}).")
        g.add_argument("--id_column", default=None,
                       help="With --input_format=parquet: the image id column, string, binary "
                       "or integer (its decimal string) (default: none, a content hash of the "
                       "image bytes).")


def input_columns(opts: InputOptions) -> formats.Columns:
    """A Parquet input's image and id columns, from --image_column and --id_column."""
    return formats.Columns(opts.image_column or formats.DEFAULT_IMAGE_COLUMN,
                           opts.id_column or "")


def check_input(opts: InputOptions) -> None:
    """Refuses an --input that matches no files or names a directory, and Parquet column flags
    with another format or naming columns the first readable file lacks. A local --input is
    made absolute: outputs name input files by path, which then resolve from any directory."""
    if "://" not in opts.input:
        opts.input = os.path.abspath(opts.input)
    check_input_pattern(opts.input)
    for flag in ("image_column", "id_column"):
        if getattr(opts, flag) is not None and opts.input_format != formats.PARQUET:
            raise ValueError(f"--{flag} applies to --input_format=parquet only, not "
                             f"--input_format={opts.input_format}")
    formats.check_input(opts.input, opts.input_format, input_columns(opts))


class OutputOptions(PipelineOptions):
    """Where a job writes its TFRecord shards: `label_and_balance`, `rebalance` and `reshard`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("output")
        g.add_argument("--output_dir", help="Where shards, dead letters and the run's summary "
                       "JSON go. Required.")
        g.add_argument("--overwrite", action="store_true",
                       help="Replace the shards an --output_dir (and the table a "
                       "--predictions_dir) already holds; they are deleted at launch, before "
                       "the new run writes.")
        g.add_argument("--num_shards", type=positive_int, default=16,
                       help="Number of TFRecord shards; with at least records/--chunk_records "
                       "of them each pseudo-label shard is written in one piece (default: "
                       "%(default)s).")


def add_balance_args(parser) -> None:
    """Selection and pseudo-label record flags, shared with `beam_jobs.rebalance`."""
    g = parser.add_argument_group("selection")
    g.add_argument("--min_confidence", type=probability, default=0.3,
                   help="Keep images whose top-1 probability is at least this "
                   "(default: %(default)s).")
    g.add_argument("--images_per_class", type=positive_int, default=130_000,
                   help="K: records per class after balancing; a class with fewer images "
                   "above --min_confidence has them duplicated up to K (--max_copies bounds "
                   "the copies of one image). Set it for your corpus: about unlabeled images "
                   "/ classes (default: %(default)s, the paper's ImageNet value).")
    g.add_argument("--no_duplicate", action="store_true",
                   help="Cap classes at K without duplicating images of smaller classes.")
    g.add_argument("--seed", type=seed, default=0,
                   help="Seed for tie-breaking, copy choice and shard placement; the same "
                   "inputs and seed give byte-identical output (default: %(default)s).")
    g.add_argument("--collect_limit", type=positive_int, default=DEFAULT_COLLECT_LIMIT,
                   help="Largest per-class bucket of keys the threshold search sorts in "
                   "memory (default: %(default)s).")
    g = parser.add_argument_group("pseudo-label records")
    g.add_argument("--label_type", choices=[t.value for t in schema.LabelType],
                   default="soft", help="hard: label only; soft: dense probabilities; "
                   "soft_topk: sparse top-k classes and renormalised probabilities "
                   "(default: %(default)s).")
    g.add_argument("--topk", type=positive_int, default=10,
                   help="Classes kept per record with --label_type=soft_topk "
                   "(default: %(default)s).")
    g.add_argument("--chunk_records", type=positive_int, default=DEFAULT_CHUNK_RECORDS,
                   help="Records sorted in memory at once when writing shards; a worker "
                   "holds about this many encoded images (default: %(default)s).")
    g.add_argument("--max_failure_fraction", type=probability,
                   default=completion.DEFAULT_MAX_FAILURE_FRACTION,
                   help="Largest share of the images read that may fail (dead letters) for the "
                   "run to count as complete; above it the job exits with an error and the "
                   f"counts per stage, and --output_dir gets no {completion.SUCCESS_FILE} "
                   "marker (default: %(default)s).")
    g.add_argument("--max_copies", type=non_negative_int,
                   default=completion.DEFAULT_MAX_COPIES,
                   help="Most records one image may become when small classes are duplicated "
                   "up to K. Checked once the classes are counted, before any shard is "
                   "written: above it the job exits with an error naming the class, and the "
                   "predictions table is kept for beam_jobs.rebalance. 0: no limit. The "
                   "summary reports the most copies and warns above "
                   f"{stats.WARN_COPIES} (default: %(default)s).")


class BalanceOptions(OutputOptions, PipelineOptions):
    """Selection and output flags, shared by `label_and_balance` and `rebalance`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add_balance_args(parser)


@dataclasses.dataclass(frozen=True)
class BalanceSettings:
    """The selection and output flags as one frozen value, named and defaulted as the flags
    are; part of the configs that `label_and_balance.run_job` and `rebalance.run_job` take."""

    output_dir: str | None = None
    min_confidence: float = 0.3
    images_per_class: int = 130_000
    no_duplicate: bool = False
    seed: int = 0
    collect_limit: int = DEFAULT_COLLECT_LIMIT
    overwrite: bool = False
    num_shards: int = 16
    label_type: str = "soft"
    topk: int = 10
    chunk_records: int = DEFAULT_CHUNK_RECORDS
    max_failure_fraction: float = completion.DEFAULT_MAX_FAILURE_FRACTION
    max_copies: int = completion.DEFAULT_MAX_COPIES

    def __post_init__(self):
        parser = argparse.ArgumentParser(add_help=False)
        OutputOptions._add_argparse_args(parser)
        add_balance_args(parser)
        check_values(parser, dataclasses.asdict(self))

    @classmethod
    def from_options(cls, options: PipelineOptions) -> BalanceSettings:
        view = options.view_as(BalanceOptions)
        return cls(**{f.name: getattr(view, f.name) for f in dataclasses.fields(cls)})


def balance_config(opts: BalanceOptions | BalanceSettings) -> BalanceConfig:
    """The selection and output settings of the flags."""
    return BalanceConfig(
        min_confidence=opts.min_confidence, images_per_class=opts.images_per_class,
        duplicate=not opts.no_duplicate, seed=opts.seed, collect_limit=opts.collect_limit,
        num_shards=opts.num_shards, label_type=opts.label_type, topk=opts.topk,
        chunk_records=opts.chunk_records, max_copies=opts.max_copies)


def check_output_dir(output_dir: str, overwrite: bool, delete: bool = False) -> None:
    """Refuses to mix a new run's shards with an old run's, unless told to replace them.

    With `overwrite` and `delete`, removes the old completion marker first, then the old
    shards, dead letters and stats.json, so an interrupted rerun never looks complete.
    """
    check_clear(output_dir, [shard_pattern(output_dir, PSEUDO_LABEL_PREFIX),
                             shard_pattern(output_dir, DEAD_LETTER_PREFIX),
                             posixpath.join(output_dir, stats.STATS_FILE)],
                "pseudo_labels shards", overwrite, delete)


def check_table_dir(table_dir: str, overwrite: bool, delete: bool = False) -> None:
    """The same for a predictions table."""
    check_clear(table_dir, [predictions.table_pattern(table_dir)], "predictions table files",
                overwrite, delete)


def check_clear(directory: str, patterns: list[str], what: str, overwrite: bool,
                delete: bool) -> None:
    """Refuses a `directory` holding files of `patterns` (counted by the first) unless
    `overwrite`; with `delete`, removes the completion marker, then those files."""
    existing = [path for pattern in patterns for path in tf.io.gfile.glob(pattern)]
    if existing and not overwrite:
        counted = len(tf.io.gfile.glob(patterns[0]))
        raise ValueError(f"{directory} already holds {counted} {what}; pass --overwrite or pick "
                         "another directory")
    if delete:
        completion.remove_marker(directory)
        for path in existing:
            tf.io.gfile.remove(path)


def command_line(argv: list[str] | None,
                 help_parser: Callable[[], argparse.ArgumentParser]) -> list[str] | None:
    """A Beam job's flags (sys.argv's when `argv` is None) once argparse has checked its own
    ones, with argparse's usage line and exit status 2 for a bad value; None when --help was
    asked for and printed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        help_parser().print_help()
        return None
    help_parser().parse_known_args(argv)
    return argv


def new_pipeline(options: PipelineOptions):
    """A pipeline for `options`. On the DirectRunner it runs on Beam's FnApiRunner, set up as
    the DirectRunner sets it up (the options passed on to its workers): Beam 2.77's DirectRunner
    first tries the PrismRunner, downloading its binary from GitHub when it can, so the same
    command would run on another engine depending on the network."""
    import apache_beam as beam  # noqa: PLC0415 - keeps the flag helpers light

    runner = options.view_as(StandardOptions).runner or ""
    if runner.lower() not in ("direct", "directrunner"):
        return beam.Pipeline(options=options)
    from apache_beam.portability.api import beam_provision_api_pb2  # noqa: PLC0415
    from apache_beam.runners.portability.fn_api_runner import (  # noqa: PLC0415
        fn_runner, worker_handlers)
    from apache_beam.runners.portability.portable_runner import JobServiceHandle  # noqa: PLC0415

    # Beam 2.77's FnApiRunner gives its gRPC data streams (--direct_running_mode=multi_threading
    # and multi_processing) a 1 s time limit: a timer thread flushes the buffer (takes its bytes,
    # then clears it) while the bundle's thread writes elements into it without a lock, and an
    # element written in between is silently dropped (measured: 0.5-2.6% of 200,000 records
    # lost per run with multi_threading, which stats.json's reconciliation then refuses). 0
    # leaves only the size-based flushes, made by the writing thread itself. Re-check on a Beam
    # upgrade (worker_handlers.py, data_plane.TimeBasedBufferingClosableOutputStream).
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)


def pipeline_options(argv: list[str],
                     values: Mapping[str, Any] | None = None) -> PipelineOptions:
    """Beam options from argv, with this project's defaults filled in.

    Args:
      argv: command-line flags, the job's own and Beam's.
      values: option values by name, taking precedence over `argv` (a job's frozen config).

    Raises:
      ValueError: for a flag neither this job nor Beam knows (Beam would only log it, and a
        misspelt --images_per_class would silently run with the default K), and for a word
        that is no flag's value, most often the second file of a glob the shell expanded
        (Beam would drop it and the job read the first file only).
    """
    options = PipelineOptions(argv, **(values or {}))
    parsers = []
    options.get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(argv)
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("--")]
    if unknown and not flags:
        raise ValueError(f"unexpected arguments: {' '.join(unknown[:3])}"
                         f"{' ...' if len(unknown) > 3 else ''}; every argument is a --flag=value. "
                         "If the shell expanded a glob, quote it: --input='data/unlabeled-*'")
    if flags:
        known = [opt for action in parsers[0]._actions for opt in action.option_strings]
        hints = [f"{f} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(f, known, 1))
                 else f for f in flags]
        raise ValueError(f"unknown flags: {', '.join(hints)}; see --help")
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"  # Beam's default (Prism) downloads a binary
    setup = options.view_as(SetupOptions)
    worker = options.view_as(WorkerOptions)
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    # A custom container (docker/) already has the package installed: staging it again would
    # pip install it on every worker at start-up.
    has_image = worker.sdk_container_image or worker.worker_harness_container_image
    if (standard.runner.lower() in ("dataflow", "dataflowrunner") and not setup.setup_file
            and not setup.requirements_file and not has_image and os.path.exists(here)):
        setup.setup_file = here  # workers need ns_data; ship it unless told otherwise
    return options


def print_summary(output_dir: str) -> None:
    """Prints where the output went and the per-class table from its stats.json (classes named
    as the run's stats name them)."""
    if tf.io.gfile.exists(posixpath.join(output_dir, stats.STATS_FILE)):
        print(f"\nOutput: {output_dir}")
        print(stats.format_summary(stats.read_stats(output_dir)))


def configure_logging() -> None:
    """INFO for progress, minus Beam's log line for every string type hint it meets, and minus
    the traceback Beam logs for an exception raised in a step before re-raising it: `main`
    reports that same exception (one line for a bad input, the traceback for anything else).
    Beam's other INFO lines are held back by `startup.quiet_startup`."""
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("apache_beam.typehints").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
