"""Re-cut a corpus into many TFRecord shards of image examples, so every later pass reads it in
parallel.

    python -m beam_jobs.reshard --input='data/huge-*.tfrecord' --output_dir=data/sharded \\
        --num_shards=256
    python -m beam_jobs.label_and_balance --input='data/sharded/images-*.tfrecord' ...

A TFRecord file or a tar can only be read from its start (where a record begins is known only
by reading every record before it), so one such file is read by one worker: a corpus kept in
four huge files keeps four workers busy in every teacher pass, writing pass and round. This job
pays for that once. It reads each input file once (`ReadImages`: any --input_format, Parquet
split by row groups) and writes every image as an `image/encoded` + `image/id` example
(`schema.image_example`) into `images-00000-of-00256.tfrecord` ..., the shard picked by a hash
of the id and the records of a shard sorted by it. The id is the one `label_and_balance` gives
the image in the original input (its `image/id`, Parquet id column, tar key or file path, else a
content hash of its bytes), so pseudo-labels keep their ids; other features (a `label`,
captions) are not copied. Records that do not parse and the unreadable rest of damaged files
are dead letters (`dead_letters-00000-of-00001.tfrecord`: id, stage, message naming the file
and record) and are counted in `reshard.json` beside the images per shard. The same input gives
byte-identical shards. The image bytes cross one shuffle, the one that spreads them over the
shards.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import posixpath
import sys

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import cli
from beam_jobs.cli import (InputOptions, OutputOptions, check_input, configure_logging,
                           input_columns, pipeline_options)
from ns_data import formats, schema
from ns_data import predictions as table
from ns_data.balance import id_hash
from ns_data.lazy import tf
from ns_data.progress import Progress
from ns_data.read import ReadImages
from ns_data.write import (DEAD_LETTER_PREFIX, KeyedBatches, WriteShuffledShards, shard_key,
                           shard_pattern)

IMAGES_PREFIX = "images"
SUMMARY_FILE = "reshard.json"
# Input bytes one worker sorts in memory at once: a shard of more is sorted in chunks of about
# this size, written apart and concatenated (`write.WriteShuffledShards`).
DEFAULT_SORT_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class ReshardConfig:
    """What to re-cut, and into what.

    Attributes:
      input: glob of the input files.
      input_format: one of `read.INPUT_FORMATS`.
      output_dir: where the shards, dead letters and `reshard.json` go.
      num_shards: image shards to write.
      columns: a Parquet input's image and id columns.
      sort_bytes: input bytes sorted in memory at once per shard.
    """

    input: str
    input_format: str
    output_dir: str
    num_shards: int
    columns: formats.Columns = formats.Columns()
    sort_bytes: int = DEFAULT_SORT_BYTES

    def __post_init__(self):
        if self.num_shards < 1:
            raise ValueError(f"--num_shards must be >= 1, got {self.num_shards}")
        if self.sort_bytes < 1:
            raise ValueError(f"sort_bytes must be >= 1, got {self.sort_bytes}")


def output_patterns(output_dir: str) -> list[str]:
    """The files a run writes into `output_dir`, image shards first."""
    return [shard_pattern(output_dir, IMAGES_PREFIX), shard_pattern(output_dir, DEAD_LETTER_PREFIX),
            posixpath.join(output_dir, SUMMARY_FILE)]


class _KeyImages(beam.DoFn):
    """[RawImage] batches → ((prefix, shard, chunk), [(order, image example)]) batches of a
    bundle, for the shard shuffle. The order key is a hash of the image id: it picks the shard
    and the record's place in it."""

    def __init__(self, num_shards: int, chunks: int):
        self._num_shards = num_shards
        self._chunks = chunks

    def start_bundle(self):
        self._batches = KeyedBatches()

    def process(self, images):
        for image in images:
            order = id_hash(image.image_id, 0)
            record = schema.image_example(image.encoded, image.image_id)
            yield from self._batches.add(
                shard_key(IMAGES_PREFIX, order, self._num_shards, self._chunks), (order, record))

    def finish_bundle(self):
        for batch in self._batches.flush():
            yield WindowedValue(batch, MIN_TIMESTAMP, [GlobalWindow()])


def dead_letters(rows: pa.Table):
    """A table of failed rows from `ReadImages` → one batch of dead-letter records for the
    shard shuffle. A message that does not name its file gets the file and record index."""
    letters = []
    for image_id, source, index, stage, message in zip(*(rows.column(c).to_pylist() for c in (
            table.ID, table.SOURCE, table.INDEX, table.ERROR_STAGE, table.ERROR_MESSAGE))):
        if source not in message:
            message = f"{source} record {index}: {message}"
        order = id_hash(b"%s#%s#%d" % (stage.encode(), source.encode(), index), 0)
        letters.append((order, schema.dead_letter_example(stage, image_id, None, message)))
    return [(shard_key(DEAD_LETTER_PREFIX, 0, 1, 1), letters)] if letters else []


def _write_summary(counts: list[tuple[tuple[str, int], int]], failed: dict[str, int],
                   config: ReshardConfig) -> str:
    per_shard = [0] * config.num_shards
    for (prefix, shard), n in counts:
        if prefix == IMAGES_PREFIX:
            per_shard[shard] = n
    summary = {"input": config.input, "input_format": config.input_format,
               "num_shards": config.num_shards, "images": sum(per_shard),
               "images_per_shard": per_shard, "failed": dict(sorted(failed.items()))}
    path = posixpath.join(config.output_dir, SUMMARY_FILE)
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(summary, indent=2).encode())
    return path


def build(pipeline: beam.Pipeline, config: ReshardConfig) -> beam.PCollection:
    """Adds the job's steps to `pipeline`; returns the PCollection of the reshard.json path."""
    input_bytes = sum(m.size_in_bytes for m in FileSystems.match([config.input])[0].metadata_list)
    chunks = max(1, math.ceil(input_bytes / config.num_shards / config.sort_bytes))
    if chunks > 1:
        logging.info("%d input bytes in %d shards is %d sort chunks per shard: each shard is "
                     "concatenated from its chunks, one more read and write of it", input_bytes,
                     config.num_shards, chunks)
    read = pipeline | "ReadImages" >> ReadImages(config.input, config.input_format,
                                                 columns=config.columns)
    keyed = (read.images | "KeyByShard" >> beam.ParDo(_KeyImages(config.num_shards, chunks)),
             read.failed | "DeadLetters" >> beam.FlatMap(dead_letters))
    written = (keyed
               | "AllRecords" >> beam.Flatten()
               | "WriteShards" >> WriteShuffledShards(
                   config.output_dir, {IMAGES_PREFIX: config.num_shards, DEAD_LETTER_PREFIX: 1}))
    failed = (read.failed
              | "FailedStages" >> beam.FlatMap(lambda rows: rows.column(
                  table.ERROR_STAGE).to_pylist())
              | "CountFailed" >> beam.combiners.Count.PerElement())
    return (written
            | "AllShards" >> beam.combiners.ToList()
            | "WriteSummary" >> beam.Map(_write_summary, beam.pvalue.AsDict(failed), config))


def reshard_config(options: PipelineOptions) -> ReshardConfig:
    """The job's settings from its flags, every one checked: the input matches files (Parquet
    columns included), and --output_dir is a directory holding no input files and no earlier
    run's shards (unless --overwrite). Reads no image and deletes nothing."""
    inputs = options.view_as(InputOptions)
    output = options.view_as(OutputOptions)
    missing = [f"--{name}" for name, value in (("input", inputs.input),
                                               ("output_dir", output.output_dir)) if not value]
    if missing:
        raise ValueError(f"missing required flags: {', '.join(missing)} (see --help)")
    check_input(inputs)
    output_dir = output.output_dir.rstrip("/")
    if "://" not in output_dir:
        output_dir = os.path.abspath(output_dir)  # to compare with the input's absolute paths
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is a file, not a directory")
    inside = sorted(m.path for m in FileSystems.match([inputs.input])[0].metadata_list
                    if m.path.startswith(output_dir + "/"))
    if inside:
        raise ValueError(f"--output_dir={output_dir} holds input files ({inside[0]}); write the "
                         "shards to another directory")
    cli.check_clear(output_dir, output_patterns(output_dir), "image shards", output.overwrite,
                    delete=False)
    return ReshardConfig(input=inputs.input, input_format=inputs.input_format,
                         output_dir=output_dir, num_shards=output.num_shards,
                         columns=input_columns(inputs))


def format_summary(summary: dict) -> str:
    """The closing lines: images per shard and what failed."""
    per_shard = summary["images_per_shard"]
    failed = summary["failed"]
    lines = [f"{summary['images']:,} images in {summary['num_shards']} shards "
             f"({min(per_shard):,}..{max(per_shard):,} per shard)"]
    if failed:
        lines.append(f"{sum(failed.values()):,} dead letters ("
                     + ", ".join(f"{stage}: {n:,}" for stage, n in failed.items())
                     + f") in {DEAD_LETTER_PREFIX}-00000-of-00001.tfrecord")
    return "\n".join(lines)


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.reshard", description=__doc__,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Beam pipeline options are accepted as well.")
    cli.add_options_args(parser, InputOptions)
    cli.add_options_args(parser, OutputOptions)
    return parser


def run(argv: list[str] | None = None,
        test_pipeline: beam.Pipeline | None = None) -> PipelineResult | None:
    """Runs the job and prints what it wrote; returns the result (None for --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return None
    _help_parser().parse_known_args(argv)
    options = pipeline_options(argv)
    config = reshard_config(options)
    dry_run = options.view_as(TestOptions).dry_run
    if not dry_run:
        cli.check_clear(config.output_dir, output_patterns(config.output_dir), "image shards",
                        options.view_as(OutputOptions).overwrite, delete=True)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    Progress.finish_all()
    if not dry_run:
        with FileSystems.open(posixpath.join(config.output_dir, SUMMARY_FILE)) as f:
            print(f"\nOutput: {config.output_dir}\n{format_summary(json.load(f))}")
    return result


if __name__ == "__main__":
    configure_logging()
    sys.exit(cli.main(run, "reshard"))
