"""What every job's command line shares: flag types, the selection and output flags of
`label_and_balance` and `rebalance`, Beam options with this project's defaults, output-directory
checks, the closing summary, and `main` (one-line errors, exit statuses)."""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import posixpath
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from apache_beam.options.pipeline_options import (PipelineOptions, SetupOptions, StandardOptions,
                                                  WorkerOptions)

from ns_data import completion, predictions, schema, stats, teacher_flags
from ns_data.balance import DEFAULT_COLLECT_LIMIT
from ns_data.pipeline import BalanceConfig
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


def check_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parses a job's own flags in `argv` (others are left to Beam) the way its command line
    does, but raises `ValueError` with argparse's message (e.g. "argument --min_confidence: must
    be in [0, 1], got 1.5") instead of printing usage and exiting: a caller that runs the job
    later (`iterate`) checks its flags before any work."""
    parser.exit_on_error = False
    try:
        return parser.parse_known_args(list(argv))[0]
    except argparse.ArgumentError as e:
        raise ValueError(str(e)) from e


positive_int = teacher_flags.positive_int
non_negative_int = teacher_flags.int_at_least(0)


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


def add_balance_args(parser) -> None:
    """Selection and output flags, shared with `beam_jobs.rebalance`."""
    g = parser.add_argument_group("selection")
    g.add_argument("--min_confidence", type=probability, default=0.3,
                   help="Keep images whose top-1 probability is at least this "
                   "(default: %(default)s).")
    g.add_argument("--images_per_class", type=positive_int, default=130_000,
                   help="K: images per class after balancing (default: %(default)s).")
    g.add_argument("--no_duplicate", action="store_true",
                   help="Cap classes at K without duplicating images of smaller classes.")
    g.add_argument("--seed", type=seed, default=0,
                   help="Seed for tie-breaking, copy choice and shard placement; the same "
                   "inputs and seed give byte-identical output (default: %(default)s).")
    g.add_argument("--collect_limit", type=positive_int, default=DEFAULT_COLLECT_LIMIT,
                   help="Largest per-class bucket of keys the threshold search sorts in "
                   "memory (default: %(default)s).")
    g = parser.add_argument_group("output")
    g.add_argument("--output_dir", help="Where shards, dead letters and stats.json go. "
                   "Required.")
    g.add_argument("--overwrite", action="store_true",
                   help="Replace the shards an --output_dir (and the table a --predictions_dir) "
                   "already holds; they are deleted at launch, before the new run writes.")
    g.add_argument("--num_shards", type=positive_int, default=16,
                   help="Number of pseudo-label TFRecord shards; with at least "
                   "records/--chunk_records of them each shard is written in one piece "
                   "(default: %(default)s).")
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
    g.add_argument("--max_copies", type=non_negative_int, default=0,
                   help="Most records one image may become when small classes are duplicated; "
                   "above it the job exits with an error and no completion marker (default: "
                   "0, no limit; the summary always reports the most copies).")


class BalanceOptions(PipelineOptions):
    """Selection and output flags, shared by `label_and_balance` and `rebalance`."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add_balance_args(parser)


def balance_config(opts: BalanceOptions) -> BalanceConfig:
    """The selection and output settings of the flags."""
    return BalanceConfig(
        min_confidence=opts.min_confidence, images_per_class=opts.images_per_class,
        duplicate=not opts.no_duplicate, seed=opts.seed, collect_limit=opts.collect_limit,
        num_shards=opts.num_shards, label_type=opts.label_type, topk=opts.topk,
        chunk_records=opts.chunk_records)


def check_output_dir(output_dir: str, overwrite: bool, delete: bool = False) -> None:
    """Refuses to mix a new run's shards with an old run's, unless told to replace them.

    With `overwrite` and `delete`, removes the old completion marker first, then the old
    shards, dead letters and stats.json, so an interrupted rerun never looks complete.
    """
    _check_clear(output_dir, [shard_pattern(output_dir, PSEUDO_LABEL_PREFIX),
                              shard_pattern(output_dir, DEAD_LETTER_PREFIX),
                              posixpath.join(output_dir, stats.STATS_FILE)],
                 "pseudo_labels shards", overwrite, delete)


def check_table_dir(table_dir: str, overwrite: bool, delete: bool = False) -> None:
    """The same for a predictions table."""
    _check_clear(table_dir, [predictions.table_pattern(table_dir)], "predictions table files",
                 overwrite, delete)


def _check_clear(directory: str, patterns: list[str], what: str, overwrite: bool,
                 delete: bool) -> None:
    existing = [path for pattern in patterns for path in tf.io.gfile.glob(pattern)]
    if existing and not overwrite:
        counted = len(tf.io.gfile.glob(patterns[0]))
        raise ValueError(f"{directory} already holds {counted} {what}; pass --overwrite or pick "
                         "another directory")
    if delete:
        completion.remove_marker(directory)
        for path in existing:
            tf.io.gfile.remove(path)


def pipeline_options(argv: list[str]) -> PipelineOptions:
    """Beam options from argv, with this project's defaults filled in.

    Raises:
      ValueError: for a flag neither this job nor Beam knows (Beam would only log it, and a
        misspelt --images_per_class would silently run with the default K), and for a word
        that is no flag's value, most often the second file of a glob the shell expanded
        (Beam would drop it and the job read the first file only).
    """
    options = PipelineOptions(argv)
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


def print_summary(output_dir: str, class_names: list[str] | None = None) -> None:
    """Prints where the output went and the per-class table from its stats.json."""
    if tf.io.gfile.exists(posixpath.join(output_dir, stats.STATS_FILE)):
        print(f"\nOutput: {output_dir}")
        print(stats.format_summary(stats.read_stats(output_dir), class_names))


def configure_logging() -> None:
    """INFO for progress, minus Beam's log line for every string type hint it meets, and minus
    the traceback Beam logs for an exception raised in a step before re-raising it: `main`
    reports that same exception (one line for a bad input, the traceback for anything else)."""
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("apache_beam.typehints").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
