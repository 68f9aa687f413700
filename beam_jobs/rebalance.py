"""Re-select persisted teacher scores with another K, threshold or label type; no teacher needed.

    python -m beam_jobs.label_and_balance ... --scores_dir=out/scores   # once, runs the teacher
    python -m beam_jobs.rebalance --scores='out/scores/scores-*.tfrecord' \\
        --output_dir=out/k50k --images_per_class=50000 --min_confidence=0.5

Reads the scores (every scored image with its probabilities), then runs the same
FilterByConfidence → BalancePerClass → WriteLabeledShards steps and writes the same outputs as
`label_and_balance`: shards, dead letters and stats.json. The teacher's temperature is baked
into the persisted probabilities.
"""
from __future__ import annotations

import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from beam_jobs.label_and_balance import (BalanceOptions, balance_and_write, balance_config,
                                         check_output_dir, configure_logging, pipeline_options,
                                         print_summary)
from ns_data.read import ReadScoredImages, check_input_pattern


class RebalanceOptions(PipelineOptions):
    """Flags of `beam_jobs.rebalance` (Beam's own options are accepted too)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--scores", help="Glob of the scores written by label_and_balance "
                            "--scores_dir (scores-*.tfrecord). Required.")


def build(pipeline: beam.Pipeline, opts: RebalanceOptions) -> beam.PCollection:
    """Adds the job's steps to `pipeline`; returns the PCollection of the stats.json path."""
    balance = opts.view_as(BalanceOptions)
    read = pipeline | "ReadScores" >> ReadScoredImages(opts.scores)
    config = {"scores": opts.scores, **balance_config(balance)}
    return balance_and_write(read["images"], read["images"], read["dead_letters"], balance,
                             config)


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.rebalance", description=__doc__,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Beam pipeline options are accepted as well.")
    RebalanceOptions._add_argparse_args(parser)
    BalanceOptions._add_argparse_args(parser)
    return parser


def run(argv: list[str] | None = None,
        test_pipeline: beam.Pipeline | None = None) -> PipelineResult | None:
    """Runs the job and prints a per-class summary; returns the result (None for --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return None
    _help_parser().parse_known_args(argv)
    options = pipeline_options(argv)
    opts = options.view_as(RebalanceOptions)
    balance = options.view_as(BalanceOptions)
    missing = [f"--{name}" for name, value in (("scores", opts.scores),
                                               ("output_dir", balance.output_dir)) if not value]
    if missing:
        raise ValueError(f"missing required flags: {', '.join(missing)} (see --help)")
    check_input_pattern(opts.scores)
    check_output_dir(balance.output_dir, balance.overwrite)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build(pipeline, opts)
    result = pipeline.run()
    result.wait_until_finish()
    print_summary(balance.output_dir)
    return result


if __name__ == "__main__":
    configure_logging()
    run()
