"""ReadImages: unlabeled images from TFRecords of tf.train.Example, or from image files.

Every image is read with where it is — its input file and its record index there — because the
predictions table names images by that location and the writing pass reads them again from it.
`parse_image_record` is the one definition of how an input record becomes (id, bytes), shared
by both passes so they agree on every id.
"""
from __future__ import annotations

import glob
import logging
import os
import posixpath
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ns_data import formats, globs, predictions, schema
from ns_data.progress import Progress
from ns_data.records import STAGE_FILE, STAGE_PARSE, Prediction, RawImage
from ns_data.tfrecord import CorruptRecordError, iter_records

INPUT_FORMATS = ("tfrecord", "images", *formats.FORMATS)
# Images per element between reading and the teacher: Beam's per-element cost is paid once per
# batch. A multiple of the usual teacher batches (64, 128, 256), so few teacher calls are padded.
DEFAULT_READ_BATCH = 256


def check_input_pattern(pattern: str) -> int:
    """Number of files matching `pattern` (`globs.match`); raises a clear error when there are
    none, or when it names a directory (which would match itself, not its files)."""
    if "://" not in pattern and os.path.isdir(pattern):
        raise ValueError(f"--input={pattern} is a directory; give a glob of its files, e.g. "
                         f"--input='{posixpath.join(pattern, '*')}', or "
                         f"--input='{posixpath.join(pattern, '**')}' with its subfolders")
    matched = globs.match(pattern)
    if not matched:
        raise ValueError(f"--input={pattern} matches no files")
    return len(matched)


def broken_links(pattern: str) -> list[str]:
    """The local files matching `pattern` (`**` crossing folders, as `globs.match` reads it)
    that are symlinks to nothing, sorted.

    Beam's file listing drops what it cannot stat, so such a file would vanish from the run
    without a count; `ReadImages` makes each one a failed row instead.
    """
    if "://" in pattern:
        return []
    return sorted(path for path in glob.glob(pattern, recursive=True)
                  if os.path.islink(path) and not os.path.exists(path))


class ParseFailure(ValueError):
    """A record that is not an image example; `image_id` names it in the dead letters."""

    def __init__(self, image_id: bytes, message: str):
        super().__init__(message)
        self.image_id = image_id


def parse_image_record(serialized: bytes) -> tuple[bytes, bytes]:
    """A serialized tf.train.Example → (image id, encoded bytes).

    The id is `image/id` when present, else a content hash of the bytes.

    Raises:
      ParseFailure: when the record is not an Example with `image/encoded` bytes.
    """
    quick = schema.image_features(serialized)
    if quick is not None:
        image_id, encoded = quick
        return image_id or schema.content_id(encoded), encoded
    try:
        features = schema.parse_example(serialized)
    except Exception as e:  # noqa: BLE001 - any bad record becomes a dead letter
        raise ParseFailure(schema.content_id(serialized),
                           f"not a tf.train.Example: {type(e).__name__}: {e}") from e
    ids = features.get(schema.IMAGE_ID, [])
    encoded = features.get(schema.IMAGE_ENCODED, [])
    image_id = ids[0] if len(ids) == 1 and isinstance(ids[0], bytes) and ids[0] else None
    if len(encoded) != 1 or not isinstance(encoded[0], bytes) or not encoded[0]:
        problem = (f"{len(encoded)} {schema.IMAGE_ENCODED!r} values (one image per record)"
                   if len(encoded) > 1 else f"no {schema.IMAGE_ENCODED!r} bytes")
        raise ParseFailure(image_id or schema.content_id(serialized),
                           f"record has {problem} (features: {sorted(features)})")
    if image_id is None and ids not in ([], [b""]):  # an empty id is no id: hash the bytes
        raise ParseFailure(schema.content_id(serialized),
                           f"{schema.IMAGE_ID!r} must be one bytes value, got {ids!r:.80}")
    return image_id or schema.content_id(encoded[0]), encoded[0]


def damaged_file(error: CorruptRecordError | OSError, path: str, index: int = 0,
                 end: int | None = None, image_id: bytes | None = None) -> Prediction:
    """The failed row that stands for the unreadable rest of an input file from `index` on, or,
    for a split of a Parquet file, for its records `index`..`end - 1`; named `image_id` (an
    image file's id: the file is its one image), else `path#index`."""
    problem = str(error) if isinstance(error, CorruptRecordError) else (
        f"{path} cannot be read at record {index}: {type(error).__name__}: {error}")
    if end is not None:
        message = (f"{problem}. Its records {index}..{end - 1}, the rest of its split, are lost; "
                   "the file's other splits are read on their own.")
    elif index:
        message = f"{problem}. Its first {index} records are read; the rest of the file is lost."
    else:
        message = f"{problem}. Nothing in the file can be read."
    logging.warning("damaged input file: %s", message)
    return Prediction(path, index, image_id or b"%s#%d" % (path.encode(), index),
                      stage=STAGE_FILE, message=message)


class _ReadFiles(beam.DoFn):
    """Input files → [RawImage] batches, and tables of failed predictions rows (tagged `failed`)
    for what cannot be used: records that do not parse, and the unreadable part of a damaged
    file (`damaged_file`; the records before the damage are kept).

    TFRecord and WebDataset files are read one path per element, Parquet files one
    `formats.ParquetSplit` per element, in batches of consecutive records; image files come as
    batches of paths, one image each, named by their path under `root`, the glob's folder
    (`globs.image_id`).
    """

    def __init__(self, input_format: str, batch_size: int, root: str = "",
                 columns: formats.Columns = formats.Columns()):
        self._format = input_format
        self._columns = columns
        self._batch_size = batch_size
        self._root = root
        self._real_root = os.path.realpath(root) if root and "://" not in root else ""
        self._read = beam.metrics.Metrics.counter("ns_data", "images_read")
        self._failed = beam.metrics.Metrics.counter("ns_data", "failed_parse")
        self._damaged = beam.metrics.Metrics.counter("ns_data", "damaged_files")

    def start_bundle(self):
        self._pending_bytes = 0

    def process(self, element, total_bytes: int = 0):
        self._progress = Progress.shared("read", total_bytes)
        images, failed = [], []
        records = (self._image_files(element, failed) if self._format == "images"
                   else self._tfrecord_file(element, failed) if self._format == "tfrecord"
                   else self._sample_file(element, failed))
        for image in records:
            images.append(image)
            if len(images) == self._batch_size:
                yield self._images(images)
                images = []
            if len(failed) == self._batch_size:
                yield self._failures(failed)
                failed = []
        if images:
            yield self._images(images)
        if failed:
            yield self._failures(failed)

    def _tfrecord_file(self, path: str, failed: list[Prediction]):
        index = 0
        try:
            for serialized in iter_records(path):
                self._pending_bytes += len(serialized) + _FRAME_BYTES
                try:
                    image_id, encoded = parse_image_record(serialized)
                except ParseFailure as e:
                    failed.append(Prediction(path, index, e.image_id, stage=STAGE_PARSE,
                                             message=str(e)))
                else:
                    yield RawImage(image_id, encoded, path, index)
                index += 1
        except (CorruptRecordError, OSError) as e:
            self._damaged.inc()
            failed.append(damaged_file(e, path, index))

    def _sample_file(self, element: str | formats.ParquetSplit, failed: list[Prediction]):
        """A Parquet split or a WebDataset file (`formats`), like a TFRecord file."""
        if self._format == formats.PARQUET:
            path, samples = element.path, formats.split_samples(element, self._columns)
        else:
            path, samples = element, formats.iter_samples(element, self._format, self._columns)
        try:
            for sample in samples:
                self._pending_bytes += sample.size
                if sample.problem:
                    failed.append(Prediction(path, sample.index, sample.image_id,
                                             stage=STAGE_PARSE, message=sample.problem))
                else:
                    yield RawImage(sample.image_id, sample.encoded, path, sample.index)
        except formats.DamagedInput as e:
            self._damaged.inc()
            failed.append(damaged_file(e, path, e.index, e.end))

    def _image_files(self, paths: list[str], failed: list[Prediction]):
        for path in paths:
            image_id = globs.image_id(path, self._root)
            outside = self._outside_root(path)
            if outside:
                failed.append(Prediction(path, 0, image_id, stage=STAGE_FILE, message=outside))
                continue
            try:
                with FileSystems.open(path,
                                      compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    encoded = f.read()
            except OSError as e:
                self._damaged.inc()
                failed.append(damaged_file(e, path, image_id=image_id))
                continue
            self._pending_bytes += len(encoded)
            yield RawImage(image_id, encoded, path, 0)

    def _outside_root(self, path: str) -> str | None:
        """Why a local image file is not read: a symlink (itself, or a folder on its way) that
        leads out of the input's folder. None for every other file."""
        if not self._real_root:
            return None
        real = os.path.realpath(path)
        if real == self._real_root or real.startswith(self._real_root.rstrip(os.sep) + os.sep):
            return None
        return (f"{path} is a symlink to {real}, outside the input folder {self._real_root}; "
                "not followed")

    def _images(self, images: list[RawImage]) -> list[RawImage]:
        self._read.inc(len(images))
        self._progress.update(len(images), self._pending_bytes)
        self._pending_bytes = 0
        return images

    def _failures(self, failed: list[Prediction]):
        self._failed.inc(len(failed))
        return beam.pvalue.TaggedOutput(FAILED, predictions.to_table(failed))


def encoded_images(pattern: str, input_format: str,
                   columns: formats.Columns = formats.Columns()):
    """The encoded images of an input, in file order, skipping records that do not parse and
    the unreadable rest of damaged files (the launch check's sample; the pipeline reads with
    `ReadImages`)."""
    for path in (m.path for m in globs.match(pattern)):
        try:
            if input_format == "images":
                with FileSystems.open(path,
                                      compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    yield f.read()
                continue
            if input_format in formats.FORMATS:
                yield from (s.encoded for s in formats.iter_samples(path, input_format, columns)
                            if not s.problem)
                continue
            for serialized in iter_records(path):
                try:
                    yield parse_image_record(serialized)[1]
                except ParseFailure:
                    continue
        except (CorruptRecordError, OSError):
            continue


FAILED = "failed"
_FRAME_BYTES = 16  # a TFRecord frame's length, its checksum and the data's checksum


class ReadResult(NamedTuple):
    """ReadImages' outputs, in batches: [RawImage], and the records that did not parse as
    tables of failed predictions rows (`predictions.SCHEMA`); and (path, bytes) of every input
    file as listed before it was read, which the predictions table records."""

    images: beam.PCollection
    failed: beam.PCollection
    file_sizes: beam.PCollection


class ReadImages(beam.PTransform):
    """Reads images with their locations; returns a `ReadResult`.

    `tfrecord`: a glob of TFRecord files of tf.train.Example with `image/encoded` (required) and
    `image/id` (optional; default: a content hash of the bytes). A record that does not parse is
    a failed predictions row (stage "parse") named by a content hash of the whole record.
    `images`: a glob of image files (`globs.match`: `photos/**` reads subfolders too); the id
    is the file's path under the glob's folder, `cats/1.jpg` for `/data/photos/**`.
    `parquet`, `webdataset`: see `formats` (`columns`: a Parquet input's image and id columns);
    a sample is named by its row, or its position in the tar, as a record is.

    A damaged file costs only what cannot be read from it: the records of a TFRecord file before
    a truncated or corrupt frame are read, and one failed row (stage "damaged_file", the file's
    path and the byte where it breaks in the message) stands for the rest; so does an image file
    that cannot be opened, a local one reached by a symlink out of the glob's folder, and a
    local symlink to nothing (`broken_links`).

    File names are reshuffled before reading so that workers share the files; no image bytes
    cross that shuffle. A Parquet file is read in splits of consecutive row groups of about
    `split_bytes` compressed bytes (`formats.parquet_splits`), themselves reshuffled, so one big
    file is read by several workers at once; a damaged row group then costs the rest of its
    split only. TFRecord and WebDataset files cannot be split (a record's start is found only
    by reading up to it): a few huge ones are read by as many workers, so reshard them first
    (`beam_jobs.reshard`). Images come in batches of up to `batch_size`: consecutive records of
    one file or split, or image files read together.
    """

    def __init__(self, pattern: str, input_format: str = "tfrecord",
                 batch_size: int = DEFAULT_READ_BATCH,
                 columns: formats.Columns = formats.Columns(),
                 split_bytes: int = formats.DEFAULT_SPLIT_BYTES):
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split_bytes < 1:
            raise ValueError(f"split_bytes must be >= 1, got {split_bytes}")
        self._pattern = pattern
        self._format = input_format
        self._batch_size = batch_size
        self._columns = columns
        self._split_bytes = split_bytes

    def expand(self, pbegin):
        matched = (pbegin
                   | "Glob" >> beam.Create([self._pattern])
                   | "MatchFiles" >> beam.FlatMap(globs.match))
        sizes = (matched
                 | "Sizes" >> beam.Map(lambda metadata: metadata.size_in_bytes)
                 | "InputBytes" >> beam.CombineGlobally(sum))  # for the progress line's ETA
        paths = (matched
                 | "Paths" >> beam.Map(lambda metadata: metadata.path)
                 | "SpreadFiles" >> beam.Reshuffle())
        if self._format == "images":
            paths = paths | "BatchPaths" >> beam.BatchElements(
                min_batch_size=self._batch_size, max_batch_size=self._batch_size)
        elif self._format == formats.PARQUET:
            # Footers are read after the files are spread, so a corpus of many files is planned
            # by many workers; the splits are spread again, so one big file's are read by many.
            paths = (paths
                     | "SplitRowGroups" >> beam.FlatMap(formats.parquet_splits, self._columns,
                                                        self._split_bytes)
                     | "SpreadSplits" >> beam.Reshuffle())
        read = paths | "ReadFiles" >> beam.ParDo(
            _ReadFiles(self._format, self._batch_size, globs.glob_root(self._pattern),
                       self._columns),
            total_bytes=beam.pvalue.AsSingleton(sizes)).with_outputs(FAILED, main="images")
        failed = read[FAILED]
        root = globs.glob_root(self._pattern)
        broken = [Prediction(path, 0, globs.image_id(path, root) if self._format == "images"
                             else b"%s#0" % path.encode(), stage=STAGE_FILE,
                             message=f"{path} is a symlink to {os.readlink(path)}, which does "
                             "not exist. Nothing in the file can be read.")
                  for path in broken_links(self._pattern)]
        if broken:
            links = pbegin | "BrokenLinks" >> beam.Create([predictions.to_table(broken)])
            failed = (failed, links) | "AllFailed" >> beam.Flatten()
        file_sizes = matched | "FileSizes" >> beam.Map(
            lambda metadata: (metadata.path, metadata.size_in_bytes))
        return ReadResult(read["images"], failed, file_sizes)
