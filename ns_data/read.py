"""ReadImages: unlabeled images from TFRecords of tf.train.Example, or from image files."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from ns_data import schema
from ns_data.records import STAGE_PARSE, DeadLetter, RawImage, ScoredImage

INPUT_FORMATS = ("tfrecord", "images")
DEAD_LETTERS = "dead_letters"
IMAGES = "images"


def check_input_pattern(pattern: str) -> int:
    """Number of files matching `pattern`; raises a clear error when there are none."""
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
        raise ValueError(f"--input={pattern} matches no files")
    return len(matched)


def _parse_failure(image_id: bytes, serialized: bytes, message: str):
    """A record that could not be read → a counted dead letter carrying the whole record."""
    beam.metrics.Metrics.counter("ns_data", "failed_parse").inc()
    return beam.pvalue.TaggedOutput(
        DEAD_LETTERS, DeadLetter(STAGE_PARSE, image_id, serialized, message))


class _ParseImageExample(beam.DoFn):
    """Serialized tf.train.Example → RawImage, or a dead letter when it is not one."""

    def __init__(self):
        self._read = beam.metrics.Metrics.counter("ns_data", "images_read")

    def process(self, serialized: bytes):
        try:
            features = schema.parse_example(serialized)
        except Exception as e:  # noqa: BLE001 - any bad record becomes a dead letter
            yield _parse_failure(schema.content_id(serialized), serialized,
                             f"not a tf.train.Example: {type(e).__name__}: {e}")
            return
        ids = features.get(schema.IMAGE_ID) or [b""]
        encoded = features.get(schema.IMAGE_ENCODED) or [b""]
        image_id = ids[0] if isinstance(ids[0], bytes) and ids[0] else None
        if not isinstance(encoded[0], bytes) or not encoded[0]:
            yield _parse_failure(image_id or schema.content_id(serialized), serialized,
                             f"record has no {schema.IMAGE_ENCODED!r} bytes "
                             f"(features: {sorted(features)})")
            return
        if ids[0] and image_id is None:
            yield _parse_failure(schema.content_id(serialized), serialized,
                             f"{schema.IMAGE_ID!r} must be bytes, got {type(ids[0]).__name__}")
            return
        self._read.inc()
        yield RawImage(image_id or schema.content_id(encoded[0]), encoded[0])

def _read_file(readable: fileio.ReadableFile) -> RawImage:
    beam.metrics.Metrics.counter("ns_data", "images_read").inc()
    return RawImage(readable.metadata.path.encode(), readable.read())


class ReadImages(beam.PTransform):
    """Reads images; returns {"images": RawImage, "dead_letters": DeadLetter}.

    `tfrecord`: a glob of TFRecord files of tf.train.Example with `image/encoded` (required) and
    `image/id` (optional; default: a content hash of the bytes). A record that does not parse is
    a dead letter carrying the whole serialized record.
    `images`: a glob of image files; the id is the file path.
    """

    def __init__(self, pattern: str, input_format: str = "tfrecord"):
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
        self._pattern = pattern
        self._format = input_format

    def expand(self, pbegin):
        if self._format == "images":
            images = (pbegin
                      | "MatchFiles" >> fileio.MatchFiles(self._pattern)
                      | "ReadMatches" >> fileio.ReadMatches()
                      | "ReadBytes" >> beam.Map(_read_file))
            dead = pbegin | "NoDeadLetters" >> beam.Create([])
            return {IMAGES: images, DEAD_LETTERS: dead}
        parsed = (pbegin
                  | "ReadTFRecords" >> beam.io.ReadFromTFRecord(self._pattern)
                  | "ParseExamples" >> beam.ParDo(_ParseImageExample()).with_outputs(
                      DEAD_LETTERS, main=IMAGES))
        return {IMAGES: parsed[IMAGES], DEAD_LETTERS: parsed[DEAD_LETTERS]}


def _parse_score(serialized: bytes):
    try:
        record = schema.parse_pseudo_label(serialized)
        if not record.probabilities:
            raise ValueError(f"record has no {schema.PROBABILITIES!r}; was it written with "
                             "--scores_dir?")
    except Exception as e:  # noqa: BLE001 - any bad record becomes a dead letter
        yield _parse_failure(schema.content_id(serialized), serialized,
                             f"{type(e).__name__}: {e}")
        return
    beam.metrics.Metrics.counter("ns_data", "images_read").inc()
    yield ScoredImage(record.image_id, record.encoded,
                      np.asarray(record.probabilities, dtype=np.float32))


class ReadScoredImages(beam.PTransform):
    """Scores persisted by `label_and_balance --scores_dir` → {"images": ScoredImage, ...}."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        parsed = (pbegin
                  | "ReadTFRecords" >> beam.io.ReadFromTFRecord(self._pattern)
                  | "ParseScores" >> beam.FlatMap(_parse_score).with_outputs(
                      DEAD_LETTERS, main=IMAGES))
        return {IMAGES: parsed[IMAGES], DEAD_LETTERS: parsed[DEAD_LETTERS]}
