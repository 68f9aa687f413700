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
and record) and are counted in `reshard.json` beside the images per shard; a `_SUCCESS` marker
(`ns_data.completion`, with those counts) is written last, once all of that is written, and
`--overwrite` deletes it first. The same input gives byte-identical shards. The image bytes
cross one shuffle, the one that spreads them over the shards.

Your own labeled images in: `--label_folders` labels an image folder by its class folders
(`--input='photos/**' --input_format=images`: photos/cat/1.jpg is class `cat`), `--labels_csv`
by a CSV of `path,label` rows (paths as the ids are: under the glob's folder, or the tar key,
Parquet id, ...). Classes are numbered in sorted name order, every record gets its `label`,
`reshard.json` lists the class names and images per class, and the summary prints the
`--num_classes` and `--class_names` to train with. An image without a class is a dead letter.

    python -m beam_jobs.reshard --input='photos/**' --input_format=images --label_folders \
        --output_dir=data/labeled --num_shards=4
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
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
from ns_data import completion, formats, globs, schema, startup
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


STAGE_LABEL = "label"  # a dead letter's stage: the image has no class


@dataclasses.dataclass(frozen=True)
class Labels:
    """Each image's class, for a labeled corpus: by its first folder under the glob's folder
    (`by_id` None), or by its id in a table (`by_id`: {id: class index})."""

    class_names: tuple[str, ...]
    by_id: dict[bytes, int] | None = None

    def label_of(self, image_id: bytes) -> int:
        """The image's class index.

        Raises:
          ValueError: naming why the image has no class.
        """
        if self.by_id is not None:
            if image_id not in self.by_id:
                raise ValueError(f"{image_id.decode(errors='replace')!r} has no row in "
                                 "--labels_csv")
            return self.by_id[image_id]
        folder, sep, _ = image_id.decode(errors="replace").partition("/")
        if not sep:
            raise ValueError(f"{folder!r} is not in a class folder (--label_folders)")
        return self.class_names.index(folder)


def folder_labels(pattern: str) -> Labels:
    """The classes of an image folder: the first folders of its files under the glob's folder,
    sorted by name.

    Raises:
      ValueError: when no file is in a folder.
    """
    root = globs.glob_root(pattern)
    names = sorted({image_id.decode().split("/")[0]
                    for image_id in (globs.image_id(m.path, root) for m in globs.match(pattern))
                    if b"/" in image_id})
    if not names:
        raise ValueError(f"--label_folders: no file of --input={pattern} is in a folder under "
                         f"{root}; put each class's images in a folder named after it")
    return Labels(tuple(names))


def csv_labels(path: str) -> Labels:
    """The classes of a CSV of `path,label` rows (a header row of exactly that is skipped),
    sorted by name; `path` is the image's id.

    Raises:
      ValueError: for a row of another shape, an id given twice, or an empty file.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        rows = list(csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    if rows and [cell.strip().lower() for cell in rows[0]] == ["path", "label"]:
        rows = rows[1:]
    by_name: dict[bytes, str] = {}
    for line, row in enumerate(rows, start=1):
        if len(row) != 2 or not row[0] or not row[1]:
            raise ValueError(f"--labels_csv={path} row {line}: expected 'path,label', got "
                             f"{','.join(row)!r:.80}")
        image_id = row[0].encode()
        if image_id in by_name and by_name[image_id] != row[1]:
            raise ValueError(f"--labels_csv={path} row {line}: {row[0]!r} is labeled both "
                             f"{by_name[image_id]!r} and {row[1]!r}")
        by_name[image_id] = row[1]
    if not by_name:
        raise ValueError(f"--labels_csv={path} has no rows")
    names = tuple(sorted(set(by_name.values())))
    index = {name: i for i, name in enumerate(names)}
    return Labels(names, {image_id: index[name] for image_id, name in by_name.items()})


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
      labels: each image's class (a labeled corpus), or None.
    """

    input: str
    input_format: str
    output_dir: str
    num_shards: int
    columns: formats.Columns = formats.Columns()
    sort_bytes: int = DEFAULT_SORT_BYTES
    labels: Labels | None = None

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
    """[RawImage] batches → ((prefix, shard, chunk), `Framed` image examples) batches of a
    bundle, for the shard shuffle. The order key is a hash of the image id: it picks the shard
    and the record's place in it."""

    def __init__(self, num_shards: int, chunks: int, labels: Labels | None = None):
        self._num_shards = num_shards
        self._chunks = chunks
        self._labels = labels

    def start_bundle(self):
        self._batches = KeyedBatches()

    def process(self, images):
        classes = []
        for image in images:
            order = id_hash(image.image_id, 0)
            label = None
            if self._labels is not None:
                try:
                    label = self._labels.label_of(image.image_id)
                except ValueError as e:
                    letter = schema.dead_letter_example(
                        STAGE_LABEL, image.image_id, image.encoded,
                        f"{image.source} record {image.index}: {e}")
                    classes.append(None)
                    yield from self._batches.add(shard_key(DEAD_LETTER_PREFIX, 0, 1, 1),
                                                 order, letter)
                    continue
                classes.append(label)
            record = schema.image_example(image.encoded, image.image_id, label)
            yield from self._batches.add(
                shard_key(IMAGES_PREFIX, order, self._num_shards, self._chunks), order, record)
        if classes:  # per-class counts, and the images without one (None)
            yield beam.pvalue.TaggedOutput(_CLASSES, classes)

    def finish_bundle(self):
        for batch in self._batches.flush():
            yield WindowedValue(batch, MIN_TIMESTAMP, [GlobalWindow()])


_CLASSES = "classes"


def dead_letters(rows: pa.Table):
    """A table of failed rows from `ReadImages` → batches of dead-letter records for the shard
    shuffle. A message that does not name its file gets the file and record index."""
    batches = KeyedBatches()
    for image_id, source, index, stage, message in zip(*(rows.column(c).to_pylist() for c in (
            table.ID, table.SOURCE, table.INDEX, table.ERROR_STAGE, table.ERROR_MESSAGE))):
        if source not in message:
            message = f"{source} record {index}: {message}"
        order = id_hash(b"%s#%s#%d" % (stage.encode(), source.encode(), index), 0)
        yield from batches.add(shard_key(DEAD_LETTER_PREFIX, 0, 1, 1), order,
                               schema.dead_letter_example(stage, image_id, None, message))
    yield from batches.flush()


def _write_summary(counts: list[tuple[tuple[str, int], int]], failed: dict[str, int],
                   classes: dict[int | None, int], config: ReshardConfig) -> str:
    per_shard = [0] * config.num_shards
    for (prefix, shard), n in counts:
        if prefix == IMAGES_PREFIX:
            per_shard[shard] = n
    failed = dict(failed)
    if classes.get(None):
        failed[STAGE_LABEL] = classes[None]
    summary = {"input": config.input, "input_format": config.input_format,
               "num_shards": config.num_shards, "images": sum(per_shard),
               "images_per_shard": per_shard, "failed": dict(sorted(failed.items()))}
    if config.labels is not None:
        names = config.labels.class_names
        summary["class_names"] = list(names)
        summary["images_per_class"] = [classes.get(i, 0) for i in range(len(names))]
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
    images = read.images | "KeyByShard" >> beam.ParDo(
        _KeyImages(config.num_shards, chunks, config.labels)).with_outputs(_CLASSES, main="keyed")
    classes = (images[_CLASSES]
               | "Classes" >> beam.FlatMap(lambda labels: labels)
               | "CountClasses" >> beam.combiners.Count.PerElement())
    keyed = (images.keyed, read.failed | "DeadLetters" >> beam.FlatMap(dead_letters))
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
            | "WriteSummary" >> beam.Map(_write_summary, beam.pvalue.AsDict(failed),
                                         beam.pvalue.AsDict(classes), config))


def reshard_config(options: PipelineOptions) -> ReshardConfig:
    """The job's settings from its flags, every one checked: the input matches files (Parquet
    columns included), and --output_dir is a directory holding no input files and no earlier
    run's shards (unless --overwrite). Reads no image and deletes nothing."""
    inputs = options.view_as(InputOptions)
    output = options.view_as(OutputOptions)
    cli.require_flags(input=inputs.input, output_dir=output.output_dir)
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
    labeling = options.view_as(LabelOptions)
    labels = None
    if labeling.label_folders and labeling.labels_csv:
        raise ValueError("--label_folders and --labels_csv: give one of them")
    if labeling.label_folders:
        if inputs.input_format != "images":
            raise ValueError("--label_folders applies to --input_format=images only, not "
                             f"--input_format={inputs.input_format}; see --labels_csv")
        labels = folder_labels(inputs.input)
    elif labeling.labels_csv:
        labels = csv_labels(labeling.labels_csv)
    return ReshardConfig(input=inputs.input, input_format=inputs.input_format,
                         output_dir=output_dir, num_shards=output.num_shards,
                         columns=input_columns(inputs), labels=labels)


class LabelOptions(PipelineOptions):
    """How a labeled corpus names each image's class."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("labels (a labeled corpus, e.g. a teacher's training set)")
        g.add_argument("--label_folders", action="store_true",
                       help="With --input_format=images: an image's class is its first folder "
                       "under the glob's folder (photos/cat/1.jpg is 'cat' with "
                       "--input='photos/**'); records get the class index in sorted name order.")
        g.add_argument("--labels_csv", default=None,
                       help="A CSV of path,label rows (an optional header 'path,label'): an "
                       "image's class by its id (a file's path under the glob's folder, a tar "
                       "key, a Parquet id or image/id); classes are numbered in sorted name "
                       "order.")


def marker(summary: dict) -> dict:
    """The `_SUCCESS` marker's contents for a run's `reshard.json`: the job, its input and
    shards, and its counts (as `label_and_balance`'s marker holds its settings and totals)."""
    return {"job": "reshard",
            "config": {key: summary[key] for key in ("input", "input_format", "num_shards")},
            "totals": {key: summary[key] for key in ("images", "failed")}}


def format_summary(summary: dict) -> str:
    """The closing lines: images per shard (and per class) and what failed."""
    per_shard = summary["images_per_shard"]
    failed = summary["failed"]
    lines = [f"{summary['images']:,} images in {summary['num_shards']} shards "
             f"({min(per_shard):,}..{max(per_shard):,} per shard)"]
    if failed:
        lines.append(f"{sum(failed.values()):,} dead letters ("
                     + ", ".join(f"{stage}: {n:,}" for stage, n in failed.items())
                     + f") in {DEAD_LETTER_PREFIX}-00000-of-00001.tfrecord")
    if "class_names" in summary:
        names = summary["class_names"]
        lines.append(f"{len(names)} classes: " + ", ".join(
            f"{i} {name} ({n:,})" for i, (name, n) in enumerate(zip(names,
                                                                    summary["images_per_class"]))))
        lines.append(f"train with --num_classes={len(names)} "
                     f"--class_names={','.join(names)}")
    return "\n".join(lines)


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.reshard", description=__doc__,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Beam pipeline options are accepted as well. "
                                     + startup.HELP)
    cli.add_options_args(parser, InputOptions)
    cli.add_options_args(parser, OutputOptions)
    cli.add_options_args(parser, LabelOptions)
    return parser


def run(argv: list[str] | None = None,
        test_pipeline: beam.Pipeline | None = None) -> PipelineResult | None:
    """Runs the job and prints what it wrote; returns the result (None for --help)."""
    argv = cli.command_line(argv, _help_parser)
    if argv is None:
        return None
    options = pipeline_options(argv)
    config = reshard_config(options)
    dry_run = options.view_as(TestOptions).dry_run
    if not dry_run:
        cli.check_clear(config.output_dir, output_patterns(config.output_dir), "image shards",
                        options.view_as(OutputOptions).overwrite, delete=True)
    pipeline = test_pipeline or cli.new_pipeline(options)
    build(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    Progress.finish_all()
    if not dry_run:
        with FileSystems.open(posixpath.join(config.output_dir, SUMMARY_FILE)) as f:
            summary = json.load(f)
        completion.write_marker(config.output_dir, marker(summary))
        print(f"\nOutput: {config.output_dir}\n{format_summary(summary)}")
    return result


if __name__ == "__main__":
    startup.quiet_startup()
    configure_logging()
    sys.exit(cli.main(run, "reshard"))
