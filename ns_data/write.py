"""WriteLabeledShards: deterministic, shuffled, sharded TFRecord output.

Every record carries a 63-bit order key (a hash of its image id, copy index and the seed). The
key picks the shard (`key % num_shards`) and a sort chunk inside it; each chunk, a few thousand
records, is sorted by key in memory and written to a temporary piece; each shard is then the
concatenation of its pieces in chunk order (TFRecord files concatenate), renamed into place.
So records of one class and copies of one image are spread over shards and positions, a worker
never holds more than one chunk, and the same inputs and seed give byte-identical files, unlike
Beam's `WriteToTFRecord` whose shard assignment is random.
"""
from __future__ import annotations

import math
import posixpath

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ns_data import schema
from ns_data.balance import id_hash
from ns_data.records import DeadLetter, ScoredImage

PSEUDO_LABEL_PREFIX = "pseudo_labels"
DEAD_LETTER_PREFIX = "dead_letters"
DEFAULT_CHUNK_RECORDS = 4096


def shard_path(output_dir: str, prefix: str, shard: int, num_shards: int) -> str:
    return posixpath.join(output_dir, f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def shard_pattern(output_dir: str, prefix: str) -> str:
    return posixpath.join(output_dir, f"{prefix}-*-of-*.tfrecord")


class _KeyByChunk(beam.DoFn):
    def __init__(self, num_shards: int, chunk_records: int):
        self._num_shards = num_shards
        self._chunk_records = chunk_records

    def process(self, element, total):
        order, record = element
        chunks = max(1, math.ceil(total / self._num_shards / self._chunk_records))
        yield (order % self._num_shards, (order // self._num_shards) % chunks), (order, record)


class _WriteChunk(beam.DoFn):
    """((shard, chunk), records) → one sorted temporary piece file."""

    def __init__(self, temp_dir: str):
        self._temp_dir = temp_dir

    def setup(self):
        tf.io.gfile.makedirs(self._temp_dir)

    def process(self, element):
        (shard, chunk), records = element
        path = posixpath.join(self._temp_dir, f"{shard:05d}-{chunk:05d}.tfrecord")
        count = 0
        with tf.io.TFRecordWriter(path) as writer:
            for _, record in sorted(records):
                writer.write(record)
                count += 1
        yield shard, (chunk, path, count)


class _ConcatShard(beam.DoFn):
    """(shard, pieces) → the final shard file, written to a temp name then renamed."""

    def __init__(self, output_dir: str, prefix: str, num_shards: int):
        self._output_dir = output_dir
        self._prefix = prefix
        self._num_shards = num_shards
        self._written = beam.metrics.Metrics.counter("ns_data", f"{prefix}_written")

    def setup(self):
        tf.io.gfile.makedirs(self._output_dir)

    def process(self, element):
        shard, grouped = element
        pieces = sorted(p for p in grouped["pieces"])
        final = shard_path(self._output_dir, self._prefix, shard, self._num_shards)
        temp = final + ".incomplete"
        # Beam's FileSystems streams to object stores; tf.io.gfile would stage a whole shard on
        # the worker's local disk before uploading it.
        with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            for _, path, _ in pieces:
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    while block := f.read(1 << 24):
                        out.write(block)
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([temp], [final])
        # Pieces stay until every shard is written (RemoveTempDir), so a retried bundle can
        # rebuild this shard from them.
        count = sum(c for _, _, c in pieces)
        self._written.inc(count)
        yield shard, count


def _remove_temp_dir(_, temp_dir: str):
    if tf.io.gfile.exists(temp_dir):
        tf.io.gfile.rmtree(temp_dir)


class WriteShuffledShards(beam.PTransform):
    """(order key, serialized record) → `num_shards` TFRecord files; returns (shard, count).

    Args:
      output_dir: directory of the shards (any filesystem TensorFlow can write, e.g. gs://).
      prefix: shard file name prefix: `{prefix}-00000-of-00016.tfrecord`.
      num_shards: number of files, always all written (empty ones included).
      chunk_records: target records per in-memory sort chunk; bounds a worker's memory.
    """

    def __init__(self, output_dir: str, prefix: str, num_shards: int,
                 chunk_records: int = DEFAULT_CHUNK_RECORDS):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if chunk_records < 1:
            raise ValueError(f"chunk_records must be >= 1, got {chunk_records}")
        self._output_dir = output_dir
        self._prefix = prefix
        self._num_shards = num_shards
        self._chunk_records = chunk_records

    def expand(self, records):
        temp_dir = posixpath.join(self._output_dir, f".tmp-{self._prefix}")
        total = beam.pvalue.AsSingleton(records | "Count" >> beam.combiners.Count.Globally())
        pieces = (records
                  | "KeyByChunk" >> beam.ParDo(
                      _KeyByChunk(self._num_shards, self._chunk_records), total)
                  | "GroupChunks" >> beam.GroupByKey()
                  | "WriteChunks" >> beam.ParDo(_WriteChunk(temp_dir)))
        shards = records.pipeline | "ShardIds" >> beam.Create(
            [(s, None) for s in range(self._num_shards)])
        written = ({"pieces": pieces, "shard": shards}
                   | "GroupPieces" >> beam.CoGroupByKey()
                   | "ConcatShards" >> beam.ParDo(
                       _ConcatShard(self._output_dir, self._prefix, self._num_shards)))
        _ = (written
             | "AllShardsWritten" >> beam.combiners.Count.Globally()
             | "RemoveTempDir" >> beam.Map(_remove_temp_dir, temp_dir))
        return written


def _pseudo_label_record(element, label_type: schema.LabelType, topk: int, seed: int):
    image, copy = element
    order = id_hash(image.image_id + b"#%d" % copy, seed)
    return order, schema.pseudo_label_example(
        image.image_id, image.encoded, image.probabilities, label_type, copy=copy, topk=topk)


class WriteLabeledShards(beam.PTransform):
    """(ScoredImage, copy) → shuffled pseudo-label shards; returns (shard, count)."""

    def __init__(self, output_dir: str, num_shards: int, label_type: schema.LabelType,
                 topk: int = 10, seed: int = 0, chunk_records: int = DEFAULT_CHUNK_RECORDS):
        super().__init__()
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self._output_dir = output_dir
        self._num_shards = num_shards
        self._label_type = schema.LabelType(label_type)
        self._topk = topk
        self._seed = seed
        self._chunk_records = chunk_records

    def expand(self, copies):
        return (copies
                | "Serialize" >> beam.Map(
                    _pseudo_label_record, self._label_type, self._topk, self._seed)
                | "Write" >> WriteShuffledShards(self._output_dir, PSEUDO_LABEL_PREFIX,
                                                 self._num_shards, self._chunk_records))


def _dead_letter_record(letter: DeadLetter, seed: int):
    order = id_hash(letter.stage.encode() + b"#" + letter.image_id, seed)
    return order, schema.dead_letter_example(
        letter.stage, letter.image_id, letter.encoded, letter.message)


class WriteDeadLetters(beam.PTransform):
    """DeadLetter → one deterministic TFRecord file of dead-letter records."""

    def __init__(self, output_dir: str, seed: int = 0):
        super().__init__()
        self._output_dir = output_dir
        self._seed = seed

    def expand(self, letters):
        return (letters
                | "Serialize" >> beam.Map(_dead_letter_record, self._seed)
                | "Write" >> WriteShuffledShards(self._output_dir, DEAD_LETTER_PREFIX, 1))


SCORES_PREFIX = "scores"


def _score_record(image: ScoredImage, seed: int):
    return id_hash(image.image_id, seed), schema.pseudo_label_example(
        image.image_id, image.encoded, image.probabilities, schema.LabelType.SOFT)


class WriteScores(beam.PTransform):
    """ScoredImage → `scores-*.tfrecord`: every scored image with its full probabilities.

    The records are soft pseudo-labels (copy 0), the input of `beam_jobs.rebalance`, which
    re-selects with another K or threshold without running the teacher again.
    """

    def __init__(self, scores_dir: str, num_shards: int, seed: int = 0):
        super().__init__()
        self._scores_dir = scores_dir
        self._num_shards = num_shards
        self._seed = seed

    def expand(self, scored):
        return (scored
                | "Serialize" >> beam.Map(_score_record, self._seed)
                | "Write" >> WriteShuffledShards(self._scores_dir, SCORES_PREFIX,
                                                 self._num_shards))
