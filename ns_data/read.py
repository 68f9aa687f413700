"""ReadImages: unlabeled images from TFRecords of tf.train.Example, or from image files.

Every image is read with where it is — its input file and its record index there — because the
predictions table names images by that location and the writing pass reads them again from it.
`parse_image_record` is the one definition of how an input record becomes (id, bytes), shared
by both passes so they agree on every id.
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ns_data import predictions, schema
from ns_data.records import STAGE_PARSE, Prediction, RawImage
from ns_data.tfrecord import iter_records

INPUT_FORMATS = ("tfrecord", "images")
# Images per element between reading and the teacher: Beam's per-element cost is paid once per
# batch. A multiple of the usual teacher batches (64, 128, 256), so few teacher calls are padded.
DEFAULT_READ_BATCH = 256


def check_input_pattern(pattern: str) -> int:
    """Number of files matching `pattern`; raises a clear error when there are none."""
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
        raise ValueError(f"--input={pattern} matches no files")
    return len(matched)


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
    try:
        features = schema.parse_example(serialized)
    except Exception as e:  # noqa: BLE001 - any bad record becomes a dead letter
        raise ParseFailure(schema.content_id(serialized),
                           f"not a tf.train.Example: {type(e).__name__}: {e}") from e
    ids = features.get(schema.IMAGE_ID) or [b""]
    encoded = features.get(schema.IMAGE_ENCODED) or [b""]
    image_id = ids[0] if isinstance(ids[0], bytes) and ids[0] else None
    if not isinstance(encoded[0], bytes) or not encoded[0]:
        raise ParseFailure(image_id or schema.content_id(serialized),
                           f"record has no {schema.IMAGE_ENCODED!r} bytes "
                           f"(features: {sorted(features)})")
    if ids[0] and image_id is None:
        raise ParseFailure(schema.content_id(serialized),
                           f"{schema.IMAGE_ID!r} must be bytes, got {type(ids[0]).__name__}")
    return image_id or schema.content_id(encoded[0]), encoded[0]


class _ReadTFRecordFile(beam.DoFn):
    """TFRecord file path → [RawImage] batches of consecutive records, and tables of failed
    predictions rows for the records that do not parse (tagged `failed`)."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size
        self._read = beam.metrics.Metrics.counter("ns_data", "images_read")
        self._failed = beam.metrics.Metrics.counter("ns_data", "failed_parse")

    def process(self, path: str):
        images, failed = [], []
        for index, serialized in enumerate(iter_records(path)):
            try:
                image_id, encoded = parse_image_record(serialized)
            except ParseFailure as e:
                failed.append(Prediction(path, index, e.image_id, stage=STAGE_PARSE,
                                         message=str(e)))
                if len(failed) == self._batch_size:
                    yield self._failures(failed)
                    failed = []
                continue
            images.append(RawImage(image_id, encoded, path, index))
            if len(images) == self._batch_size:
                yield self._images(images)
                images = []
        if images:
            yield self._images(images)
        if failed:
            yield self._failures(failed)

    def _images(self, images: list[RawImage]) -> list[RawImage]:
        self._read.inc(len(images))
        return images

    def _failures(self, failed: list[Prediction]):
        self._failed.inc(len(failed))
        return beam.pvalue.TaggedOutput(FAILED, predictions.to_table(failed))


def _read_image_files(paths: list[str]) -> list[RawImage]:
    beam.metrics.Metrics.counter("ns_data", "images_read").inc(len(paths))
    images = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            images.append(RawImage(path.encode(), f.read(), path, 0))
    return images


def encoded_images(pattern: str, input_format: str):
    """The encoded images of an input, in file order, skipping records that do not parse (the
    launch check's sample; the pipeline reads with `ReadImages`)."""
    for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
        if input_format == "images":
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                yield f.read()
            continue
        for serialized in iter_records(path):
            try:
                yield parse_image_record(serialized)[1]
            except ParseFailure:
                continue


FAILED = "failed"


class ReadResult(NamedTuple):
    """ReadImages' outputs, in batches: [RawImage], and the records that did not parse as
    tables of failed predictions rows (`predictions.SCHEMA`)."""

    images: beam.PCollection
    failed: beam.PCollection


class ReadImages(beam.PTransform):
    """Reads images with their locations; returns a `ReadResult`.

    `tfrecord`: a glob of TFRecord files of tf.train.Example with `image/encoded` (required) and
    `image/id` (optional; default: a content hash of the bytes). A record that does not parse is
    a failed predictions row (stage "parse") named by a content hash of the whole record.
    `images`: a glob of image files; the id is the file path.

    File names are reshuffled before reading so that workers share the files; no image bytes
    cross that shuffle. Images come in batches of up to `batch_size`: consecutive records of one
    TFRecord file, or image files read together.
    """

    def __init__(self, pattern: str, input_format: str = "tfrecord",
                 batch_size: int = DEFAULT_READ_BATCH):
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._pattern = pattern
        self._format = input_format
        self._batch_size = batch_size

    def expand(self, pbegin):
        paths = (pbegin
                 | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                 | "Paths" >> beam.Map(lambda metadata: metadata.path)
                 | "SpreadFiles" >> beam.Reshuffle())
        if self._format == "images":
            images = (paths
                      | "BatchPaths" >> beam.BatchElements(min_batch_size=self._batch_size,
                                                           max_batch_size=self._batch_size)
                      | "ReadImageFiles" >> beam.Map(_read_image_files))
            failed = pbegin | "NoParseFailures" >> beam.Create([])
            return ReadResult(images, failed)
        read = paths | "ReadTFRecordFiles" >> beam.ParDo(
            _ReadTFRecordFile(self._batch_size)).with_outputs(FAILED, main="images")
        return ReadResult(read["images"], read[FAILED])
