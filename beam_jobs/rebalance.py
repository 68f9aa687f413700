"""Re-select from a predictions table with another K, threshold or label type; no teacher needed.

    python -m beam_jobs.label_and_balance ... --output_dir=out/k130k   # once, runs the teacher
    python -m beam_jobs.rebalance --predictions=out/k130k/predictions \\
        --output_dir=out/k50k --images_per_class=50000 --min_confidence=0.5

Reads the table's small columns to select, then the original input files the table names (they
must be unchanged) to write the same outputs as `label_and_balance`: shards, dead letters and
stats.json, byte-identical to a fresh run with the same settings. The table records each input
file's records and size and each image's hash: an input file with records appended or cut
since, or a selected image replaced under its id, is refused with the file (tables written
before these records, format 1, are read unchecked, with a warning). The teacher's temperature is
baked into the table's probabilities; `--label_type=soft` needs a table of every class.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import posixpath
import sys
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions
from apache_beam.runners.runner import PipelineResult

from beam_jobs import cli
from beam_jobs.cli import (BalanceOptions, BalanceSettings, balance_config, check_output_dir,
                           configure_logging, pipeline_options, print_summary)
from ns_data import completion, predictions, startup
from ns_data.lazy import tf
from ns_data.pipeline import check_table_serves, select_and_write


class RebalanceOptions(PipelineOptions):
    """Flags of `beam_jobs.rebalance` (Beam's own options are accepted too)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--predictions", "--scores", dest="predictions",
                            help="The predictions table of a label_and_balance run: its "
                            "directory (OUTPUT_DIR/predictions by default) or a glob of its "
                            "predictions-*.parquet files. Required.")
        parser.add_argument("--allow_incomplete", action="store_true",
                            help="Read a table whose run did not finish (its directory has no "
                            f"{completion.SUCCESS_FILE} marker).")


@dataclasses.dataclass(frozen=True)
class RebalanceConfig:
    """Every flag of the job as one frozen value, named and defaulted as the flags are (Beam's
    own options aside): `run_job` takes it, from the command line or from another job.

    A value its flag would refuse is refused here, with the flag's message.
    """

    predictions: str | None = None
    allow_incomplete: bool = False
    balance: BalanceSettings = BalanceSettings()

    def __post_init__(self):
        cli.check_values(_help_parser(), {"predictions": self.predictions,
                                          "allow_incomplete": self.allow_incomplete})

    @classmethod
    def from_options(cls, options: PipelineOptions) -> RebalanceConfig:
        view = options.view_as(RebalanceOptions)
        return cls(predictions=view.predictions, allow_incomplete=view.allow_incomplete,
                   balance=BalanceSettings.from_options(options))

    def flag_values(self) -> dict[str, Any]:
        """Every flag's value by its name (the Beam options of the run)."""
        return {"predictions": self.predictions, "allow_incomplete": self.allow_incomplete,
                **dataclasses.asdict(self.balance)}


def table_pattern(opts: RebalanceOptions) -> str:
    """A glob of the table's files from a directory or a glob."""
    if any(c in opts.predictions for c in "*?["):
        return opts.predictions
    return predictions.table_pattern(opts.predictions.rstrip("/"))


def build(pipeline: beam.Pipeline, opts: RebalanceOptions,
          metadata: predictions.TableMetadata) -> beam.PCollection:
    """Adds the job's steps to `pipeline`; returns the PCollection of the stats.json path."""
    balance = opts.view_as(BalanceOptions)
    config = balance_config(balance)
    check_table_serves(metadata, config)
    paths = (pipeline
             | "MatchTable" >> fileio.MatchFiles(table_pattern(opts))
             | "TablePaths" >> beam.Map(lambda m: m.path))
    recorded = {"predictions": table_pattern(opts), "input": metadata.input,
                "teacher": metadata.teacher, **config.recorded()}
    return select_and_write(paths, balance.output_dir, config, metadata, recorded,
                            opts.predictions)


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.rebalance", description=__doc__,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Beam pipeline options are accepted as well. "
                                     + startup.HELP)
    RebalanceOptions._add_argparse_args(parser)
    cli.add_options_args(parser, BalanceOptions)
    return parser


def read_table_metadata(pattern: str) -> predictions.TableMetadata:
    """The settings of the table's files, refusing a glob that mixes tables.

    Every file's footer is read (in parallel threads: a footer is one small read) so that a
    glob over two runs — other teachers, class counts, inputs, or the same input twice — is
    refused before any work, naming the files.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"--predictions={pattern} matches no predictions table files")
    seen: dict[str, str] = {}
    for path in files:
        name = posixpath.basename(path)
        if name in seen:
            raise ValueError(f"--predictions={pattern} holds the predictions of one input twice "
                             f"({seen[name]} and {path}): select from one run's table at a time")
        seen[name] = path
    with concurrent.futures.ThreadPoolExecutor(_FOOTER_THREADS) as pool:
        found = list(pool.map(predictions.read_metadata, files))
    for path, metadata in zip(files, found):
        if metadata != found[0]:
            raise ValueError(f"--predictions={pattern} mixes tables: {path} was written with "
                             f"other settings than {files[0]} "
                             f"({predictions.describe_difference(found[0], metadata)}); select "
                             "from one run's table at a time")
    return found[0]


_FOOTER_THREADS = 32


def run(argv: list[str] | None = None,
        test_pipeline: beam.Pipeline | None = None) -> PipelineResult | None:
    """The command line: runs the job on its flags (`run_job`); None for --help."""
    argv = cli.command_line(argv, _help_parser)
    if argv is None:
        return None
    return run_job(RebalanceConfig.from_options(pipeline_options(argv)), argv, test_pipeline)


def run_job(config: RebalanceConfig, pipeline_args: Sequence[str] = (),
            test_pipeline: beam.Pipeline | None = None) -> PipelineResult:
    """Runs the job and prints a per-class summary; returns the result.

    Args:
      config: the job's settings.
      pipeline_args: Beam's own flags (--runner, ...); the job's flags among them are ignored,
        `config` says those.
      test_pipeline: a pipeline to build into instead of a new one (tests).
    """
    options = pipeline_options(list(pipeline_args), config.flag_values())
    opts = options.view_as(RebalanceOptions)
    balance = options.view_as(BalanceOptions)
    cli.require_flags(predictions=opts.predictions, output_dir=balance.output_dir)
    metadata = read_table_metadata(table_pattern(opts))
    if not metadata.checks_input:
        logging.warning(
            "--predictions=%s is a table of format %d, written before tables recorded their "
            "input files' sizes and image hashes: records appended to an input file since, or "
            "an image replaced under its id, cannot be noticed. Rerun "
            "beam_jobs.label_and_balance for a table that records them.", opts.predictions,
            metadata.version)
    table_dirs = completion.directories_of(table_pattern(opts))
    if balance.output_dir.rstrip("/") in table_dirs:
        raise ValueError(f"--output_dir={balance.output_dir} is the --predictions table's own "
                         "directory: its shards and _SUCCESS would mix with the table's; pick "
                         "another directory")
    if not opts.allow_incomplete:
        completion.require_complete_inputs(table_pattern(opts), "--predictions",
                                           "--allow_incomplete")
    check_table_serves(metadata, balance_config(balance))
    dry_run = options.view_as(TestOptions).dry_run
    if not dry_run:
        check_output_dir(balance.output_dir, balance.overwrite, delete=True)
    pipeline = test_pipeline or cli.new_pipeline(options)
    build(pipeline, opts, metadata)
    result = pipeline.run()
    result.wait_until_finish()
    if not dry_run:
        print_summary(balance.output_dir)
        completion.finish_run(balance.output_dir, "rebalance", balance.max_failure_fraction)
    return result


if __name__ == "__main__":
    startup.quiet_startup()
    configure_logging()
    sys.exit(cli.main(run, "rebalance"))
