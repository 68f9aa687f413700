"""WriteLabeledShards: the one pass that carries image bytes, into deterministic shuffled shards.

For each predictions table file, the pass reads the table rows and gives each row its copies
from its class plan (`_PlanReads`); then it re-reads the table file's own input file(s) — the
TFRecord file it describes, its image files, or a Parquet file's splits of row groups, each
split by its own worker call as in the teacher pass — and emits every copy as a serialized
pseudo-label record, and every failed record as a dead letter (`_PairWithImages`; the rows
cross a shuffle in between, no bytes, so one file's splits spread over workers). Reading the
input a second time is far cheaper than carrying the image bytes through the teacher pass and
selection: the images cross exactly one shuffle, the one that spreads records over shards.

Every record carries a 63-bit order key (a hash of its image id, copy index and the seed). The
key picks the shard (`key % num_shards`) and a sort chunk inside it (`(key // num_shards) %
chunks`, with `chunks = ceil(total / num_shards / chunk_records)` and the total known from the
class plans before any image is read). Each chunk, about `chunk_records` records, is one group of
the shuffle: it is sorted by key in memory and written to a piece file. A shard made of one chunk
(the case whenever `num_shards * chunk_records >= total`) is that piece, renamed into place — a
metadata operation, no copy. A shard of several chunks is their concatenation in chunk order,
which reads and writes the shard once more: the price of sorting a shard larger than a worker's
memory. TFDS avoids it by choosing the shard count itself (shards <= ~1 GiB); here the user
chooses `--num_shards`, so the job keeps their count and logs the `--num_shards` that would
avoid the extra copy. (Object-store compose, e.g. GCS's, would make it free, but is not in
Beam's filesystem API.) Same inputs and seed give byte-identical files, unlike Beam's
`WriteToTFRecord`, whose shard assignment is random.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ns_data import formats, globs, schema
from ns_data import predictions as table
from ns_data.balance import ClassPlan, id_hash, id_hashes
from ns_data.lazy import tf
from ns_data.read import ParseFailure, parse_image_record
from ns_data.records import STAGE_FILE, STAGE_PARSE
from ns_data.select import file_copies
from ns_data.tfrecord import CorruptRecordError, frame, frame_data, iter_records

PSEUDO_LABEL_PREFIX = "pseudo_labels"
DEAD_LETTER_PREFIX = "dead_letters"
DEFAULT_CHUNK_RECORDS = 4096


def shard_path(output_dir: str, prefix: str, shard: int, num_shards: int) -> str:
    return posixpath.join(output_dir, f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def shard_pattern(output_dir: str, prefix: str) -> str:
    return posixpath.join(output_dir, f"{prefix}-*-of-*.tfrecord")


def chunks_per_shard(total: int, num_shards: int, chunk_records: int) -> int:
    """Sort chunks per shard for `total` records: each chunk about `chunk_records` records."""
    return max(1, math.ceil(total / num_shards / chunk_records))


def shard_key(prefix: str, order, num_shards: int, chunks: int) -> tuple:
    """The shuffle key (prefix, shard, chunk) of a record with this order key; with a uint64
    array of order keys, (prefix, shards, chunks) as arrays."""
    return prefix, order % num_shards, (order // num_shards) % chunks


class Framed(NamedTuple):
    """Records of one shuffle key as TFRecord frames (`tfrecord.frame`), in three bytes strings,
    which cross the shuffle as they are (a list of (order, record) tuples would be encoded and
    decoded value by value).

    Attributes:
      orders: each record's order key, uint64 little-endian.
      ends: where each record's frame ends in `frames`, uint64 little-endian.
      frames: the frames, one after the other.
    """

    orders: bytes
    ends: bytes
    frames: bytes


def framed(orders: Sequence[int], frames: Sequence[bytes]) -> Framed:
    """The `Framed` of records with these order keys and frames."""
    return Framed(np.asarray(orders, dtype="<u8").tobytes(),
                  np.cumsum([len(f) for f in frames], dtype="<u8").tobytes(), b"".join(frames))


def sorted_frames(batches: Iterable[Framed]) -> list[memoryview]:
    """Every frame of `batches`, ordered by order key and, among records with one order key, by
    their bytes: the order of sorting (order, record) pairs, whatever order the batches come in.

    Equal keys are common, not a hash collision: an image id defaults to a hash of the image's
    bytes, so an image present twice in the input gives two records with one key. Only those
    runs are compared byte by byte; the rest is one numpy sort.
    """
    keys, frames = [], []
    for batch in batches:
        data, ends = memoryview(batch.frames), np.frombuffer(batch.ends, "<u8").tolist()
        frames += [data[start:end] for start, end in zip([0, *ends], ends)]
        keys.append(np.frombuffer(batch.orders, "<u8"))
    if not frames:
        return []
    keys = np.concatenate(keys)
    rank = np.argsort(keys, kind="stable")
    ranked = keys[rank]
    rank = rank.tolist()
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])  # ranked[t] == ranked[t + 1]
    if len(tied):
        gaps = np.diff(tied) > 1
        for start, end in zip(tied[np.r_[True, gaps]].tolist(),
                              (tied[np.r_[gaps, True]] + 2).tolist()):
            rank[start:end] = sorted(rank[start:end], key=lambda i: frame_data(frames[i]))
    return [frames[i] for i in rank]


class _WriteChunk(beam.DoFn):
    """((prefix, shard, chunk), [Framed]) → one sorted piece file, written in blocks of about
    `_WRITE_BYTES`."""

    def __init__(self, temp_dir: str):
        self._temp_dir = temp_dir

    def setup(self):
        tf.io.gfile.makedirs(self._temp_dir)

    def process(self, element):
        (prefix, shard, chunk), batches = element
        path = posixpath.join(self._temp_dir, f"{prefix}-{shard:05d}-{chunk:05d}.tfrecord")
        frames = sorted_frames(batches)
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            block, size = [], 0
            for piece in frames:
                block.append(piece)
                size += len(piece)
                if size >= _WRITE_BYTES:
                    out.write(b"".join(block))
                    block, size = [], 0
            out.write(b"".join(block))
        yield (prefix, shard), (chunk, path, len(frames))


_WRITE_BYTES = 8 << 20


class _FinishShard(beam.DoFn):
    """((prefix, shard), pieces) → the final shard file; yields ((prefix, shard), records)."""

    def __init__(self, output_dir: str, num_shards: Mapping[str, int]):
        self._output_dir = output_dir
        self._num_shards = dict(num_shards)

    def setup(self):
        tf.io.gfile.makedirs(self._output_dir)

    def process(self, element):
        (prefix, shard), grouped = element
        pieces = sorted(grouped["pieces"])
        final = shard_path(self._output_dir, prefix, shard, self._num_shards[prefix])
        if len(pieces) == 1:
            self._rename(pieces[0][1], final)
        else:
            self._concatenate([path for _, path, _ in pieces], final)
        count = sum(c for _, _, c in pieces)
        beam.metrics.Metrics.counter("ns_data", f"{prefix}_written").inc(count)
        yield (prefix, shard), count

    @staticmethod
    def _rename(piece: str, final: str) -> None:
        """A one-piece shard is its piece: a rename, no copy of the bytes."""
        if not FileSystems.exists(piece):
            if FileSystems.exists(final):
                return  # a retried bundle: the piece was already renamed into place
            raise FileNotFoundError(f"shard piece {piece} is missing")
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([piece], [final])

    @staticmethod
    def _concatenate(paths: list[str], final: str) -> None:
        """Pieces (TFRecord files concatenate) → `final`, written to a temp name then renamed.

        No pieces: an empty shard. Pieces stay until every shard is written (RemoveTempDir), so
        a retried bundle can rebuild this shard from them.
        """
        temp = final + ".incomplete"
        # Beam's FileSystems streams to object stores; tf.io.gfile would stage a whole shard on
        # the worker's local disk before uploading it.
        with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            for path in paths:
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    while block := f.read(1 << 24):
                        out.write(block)
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([temp], [final])


def _remove_temp_dir(_, temp_dir: str):
    if tf.io.gfile.exists(temp_dir):
        tf.io.gfile.rmtree(temp_dir)


class WriteShuffledShards(beam.PTransform):
    """((prefix, shard, chunk), `Framed`) → TFRecord shards; returns ((prefix, shard), n).

    The input is keyed with `shard_key` (`KeyedBatches` makes it); each element is a batch of
    records of one key (a shuffle of a few thousand batches costs far less per record than one
    of millions of records). This transform's `GroupShards` is the shuffle of the records;
    everything after it moves file names.

    Args:
      output_dir: directory of the shards (any filesystem Beam and TensorFlow can write).
      num_shards: {prefix: number of files}; every file is written, empty ones included, as
        `{prefix}-00000-of-00016.tfrecord`.
    """

    def __init__(self, output_dir: str, num_shards: Mapping[str, int]):
        super().__init__()
        for prefix, n in num_shards.items():
            if n < 1:
                raise ValueError(f"num_shards must be >= 1, got {n} for {prefix}")
        self._output_dir = output_dir
        self._num_shards = dict(num_shards)

    def expand(self, keyed):
        temp_dir = posixpath.join(self._output_dir, ".tmp-shards")
        pieces = (keyed
                  | "GroupShards" >> beam.GroupByKey()
                  | "WriteChunks" >> beam.ParDo(_WriteChunk(temp_dir)))
        every_shard = keyed.pipeline | "ShardIds" >> beam.Create(
            [((prefix, s), None) for prefix, n in sorted(self._num_shards.items())
             for s in range(n)])
        written = ({"pieces": pieces, "shard": every_shard}
                   | "GroupPieces" >> beam.CoGroupByKey()
                   | "FinishShards" >> beam.ParDo(_FinishShard(self._output_dir,
                                                               self._num_shards)))
        _ = (written
             | "AllShardsWritten" >> beam.combiners.Count.Globally()
             | "RemoveTempDir" >> beam.Map(_remove_temp_dir, temp_dir))
        return written


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What the writing pass writes.

    Attributes:
      num_shards: pseudo-label shard files.
      label_type: the target each record carries besides its hard label.
      topk: classes kept per record for soft_topk.
      seed: salts the order keys (shard placement and order).
      chunk_records: records sorted in memory at once.
      min_confidence: the confidence threshold of the selection (rows below get no copy).
    """

    num_shards: int
    label_type: schema.LabelType
    topk: int = 10
    seed: int = 0
    chunk_records: int = DEFAULT_CHUNK_RECORDS
    min_confidence: float = 0.3

    def __post_init__(self):
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if self.chunk_records < 1:
            raise ValueError(f"chunk_records must be >= 1, got {self.chunk_records}")
        object.__setattr__(self, "label_type", schema.LabelType(self.label_type))

    @property
    def num_shards_by_prefix(self) -> dict[str, int]:
        return {PSEUDO_LABEL_PREFIX: self.num_shards, DEAD_LETTER_PREFIX: 1}


class _Rows:
    """The table rows the writing pass emits something for, as Python values and flat arrays
    (`hashes`: None for a table of format 1, which has no image hashes)."""

    def __init__(self, rows: pa.Table):
        self.ids = rows.column(table.ID).to_pylist()
        self.hashes = (rows.column(table.IMAGE_HASH).to_pylist()
                       if table.IMAGE_HASH in rows.column_names else None)
        self.sources = rows.column(table.SOURCE).to_pylist()
        self.indices = rows.column(table.INDEX).to_pylist()
        self.stages = rows.column(table.ERROR_STAGE).to_pylist()
        self.messages = rows.column(table.ERROR_MESSAGE).to_pylist()
        classes = rows.column(table.TOPK_CLASSES).combine_chunks()
        self._offsets = classes.offsets.to_numpy()
        self._classes = classes.values.to_numpy()
        self._probs = rows.column(table.TOPK_PROBS).combine_chunks().values.to_numpy()

    def probabilities(self, i: int, num_classes: int) -> np.ndarray:
        """Row i's probability vector (float32; zero outside its top classes)."""
        dense = np.zeros(num_classes, dtype=np.float32)
        at = slice(self._offsets[i], self._offsets[i + 1])
        dense[self._classes[at]] = self._probs[at]
        return dense

    def top1(self, num_classes: int) -> tuple[list[int], list[float]]:
        """Every row's label and confidence: the argmax of its probability vector (ties to the
        lower class) and that probability, as `schema.pseudo_label_example` takes them; in
        blocks of rows, so memory stays bounded whatever the class count."""
        n = len(self.ids)
        labels, confidences = np.zeros(n, np.int64), np.zeros(n, np.float32)
        block = max(1, (1 << 20) // num_classes)
        for start in range(0, n, block):
            stop = min(n, start + block)
            at = slice(self._offsets[start], self._offsets[stop])
            rows = np.repeat(np.arange(stop - start), np.diff(self._offsets[start:stop + 1]))
            dense = np.zeros((stop - start, num_classes), np.float32)
            dense[rows, self._classes[at]] = self._probs[at]
            labels[start:stop] = dense.argmax(axis=1)
            confidences[start:stop] = dense[np.arange(stop - start), labels[start:stop]]
        return labels.tolist(), confidences.tolist()


class _PseudoLabels:
    """The pseudo-label records of some table rows' copies, keyed for the shard shuffle.

    Every row's label and confidence and every copy's order key are worked out for all rows at
    once (numpy, one hash call), so a record costs little more than its serialization, and an
    image's copies share their encoded features (`schema.pseudo_label_records`). It holds an
    order key and a shard key per copy (about 120 bytes): some 120 MB for a table file with a
    million copies.
    """

    def __init__(self, rows: _Rows, copies: np.ndarray, spec: OutputSpec, num_classes: int,
                 chunks: int):
        self._rows, self._spec, self._num_classes = rows, spec, num_classes
        self._labels, self._confidences = rows.top1(num_classes)
        copies = copies.astype(np.int64).tolist()
        self._first = [0, *itertools.accumulate(copies)]
        orders = id_hashes([image_id + b"#%d" % copy for image_id, n in zip(rows.ids, copies)
                            for copy in range(n)], spec.seed)
        prefix, shards, chunks = shard_key(PSEUDO_LABEL_PREFIX, orders, spec.num_shards, chunks)
        self._orders = orders.tolist()
        self._keys = list(zip(itertools.repeat(prefix), shards.tolist(), chunks.tolist()))

    def copies(self, i: int, encoded: bytes) -> list[tuple[tuple, int, bytes]]:
        """(shard key, order, record) of row i's copies, its image being `encoded`."""
        rows, spec = self._rows, self._spec
        target = ([] if spec.label_type is schema.LabelType.HARD else schema.soft_target(
            rows.probabilities(i, self._num_classes), spec.label_type, spec.topk))
        first, end = self._first[i], self._first[i + 1]
        records = schema.pseudo_label_records(rows.ids[i], encoded, self._labels[i],
                                              self._confidences[i], target, range(end - first))
        keys, orders = self._keys, self._orders
        return [(keys[j], orders[j], record) for j, record in enumerate(records, first)]


class KeyedBatches:
    """Collects (key, order, record) into (key, `Framed`) batches, framing each record.

    A batch is emitted when it holds `_BATCH_RECORDS` records, and every batch when together
    they hold `_BATCH_BYTES` bytes, so a worker holds a bounded part of one input file. `add`
    returns the batches ready (most often none: an empty tuple), not a generator: it runs once
    per record.
    """

    def __init__(self):
        self._batches: dict[tuple, tuple[list[int], list[bytes]]] = {}
        self._bytes = 0

    def add(self, key: tuple, order: int, record: bytes) -> list | tuple:
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = ([], [])
        orders, frames = batch
        orders.append(order)
        frames.append(frame(record))
        self._bytes += len(frames[-1])
        if self._bytes >= _BATCH_BYTES:
            return self.flush()
        if len(orders) >= _BATCH_RECORDS:
            self._bytes -= sum(map(len, frames))
            del self._batches[key]
            return [(key, framed(orders, frames))]
        return ()

    def flush(self) -> list:
        batches, self._batches, self._bytes = self._batches, {}, 0
        return [(key, framed(*batch)) for key, batch in batches.items()]


_BATCH_RECORDS = 1024
_BATCH_BYTES = 64 << 20


def check_one_row_per_record(rows: pa.Table, path: str) -> None:
    """Refuses a table file whose rows are not records 0..n-1 of each input file, once each.

    The teacher pass writes one row per record read (a damaged file's last row stands for its
    unreadable rest), so a missing or repeated index means the table was edited or damaged: a
    deleted row would silently leave its image out, a repeated one count it twice.

    Raises:
      ValueError: naming the table file, the input file and the record.
    """
    sources = rows.column(table.SOURCE).combine_chunks().dictionary_encode()
    codes = sources.indices.to_numpy()
    indices = rows.column(table.INDEX).to_numpy()
    order = np.lexsort((indices, codes))
    codes, indices = codes[order], indices[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    expected = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    wrong = np.flatnonzero(indices != expected)
    if len(wrong):
        i = wrong[0]
        source = sources.dictionary[codes[i]].as_py()
        problem = (f"two rows for record {indices[i]}" if indices[i] < expected[i]
                   else f"no row for record {expected[i]}")
        raise ValueError(f"predictions table {path} has {problem} of {source}: the table was "
                         "edited or is damaged (every record read has exactly one row); rerun "
                         "beam_jobs.label_and_balance")


def records_now(source: str, input_format: str, columns: formats.Columns) -> int:
    """The records a reader finds in an input file now, counted as `InputFile.records` counts
    them: up to where a damaged file stops being readable."""
    if input_format in formats.FORMATS:
        return formats.count_samples(source, input_format, columns)
    count = 0
    try:
        for _ in iter_records(source):
            count += 1
    except CorruptRecordError:
        pass
    return count


def check_inputs(rows: pa.Table, path: str, metadata: table.TableMetadata) -> None:
    """Refuses a table file whose input files no longer hold what the teacher pass read
    (`predictions.InputFile`): a file that is gone, or whose size and record count changed —
    records appended, or cut. A size change with the same record count (a Parquet file
    rewritten with other compression, a record edited in place) is left to the record checks:
    each record's id, and each written image's hash.

    Raises:
      ValueError: naming the file, its records then and now, and the table file.
    """
    for recorded in table.input_files(rows) or ():
        try:
            size = FileSystems.get_filesystem(recorded.path).metadata(recorded.path).size_in_bytes
        except OSError as e:
            raise ValueError(f"{recorded.path}, an input file of the predictions table {path}, "
                             f"cannot be read ({type(e).__name__}: {e}): the input changed "
                             "since the table was written") from e
        if size == recorded.size:
            continue
        now = records_now(recorded.path, metadata.input_format, formats.table_columns(metadata))
        if now != recorded.records:
            raise ValueError(f"the input changed since the table was written: {recorded.path} "
                             f"had {recorded.records} records ({recorded.size} bytes), now "
                             f"{now} ({size} bytes); rerun beam_jobs.label_and_balance on it "
                             f"(predictions table file {path})")


@dataclasses.dataclass(frozen=True)
class _Reads:
    """One `_PairWithImages` call's work: rows of one table file to emit records for, with their
    copies; no image bytes.

    Attributes:
      path: the table file.
      rows: its rows that get a copy or are failures, in table order, with every table column
        (so `table.IMAGE_HASH`, for a table of format 2: the hash each image is checked against).
      copies: each row's copies.
    """

    path: str
    rows: pa.Table
    copies: np.ndarray


class _PlanReads(beam.DoFn):
    """Table file → `_Reads`: the rows that get copies or are failures, one `_Reads` for the
    file or, for a Parquet input, one per split of each input file (`formats.parquet_splits`, as
    the teacher pass reads it), so a big Parquet file is read again by several workers.

    A table whose rows are not one per record, or whose input files' size and record count
    changed since it was written (`check_inputs`, once per table file), fails the job: the table
    describes other data.
    """

    def __init__(self, spec: OutputSpec, metadata: table.TableMetadata, split_bytes: int):
        self._spec = spec
        self._metadata = metadata
        self._split_bytes = split_bytes

    def process(self, path: str, plans: Mapping[int, ClassPlan],
                tie_starts: Mapping[int, Mapping[str, int]]):
        rows = table.read_table_file(path)
        table.check_metadata(rows, path, self._metadata)
        check_one_row_per_record(rows, path)
        check_inputs(rows, path, self._metadata)
        copies = file_copies(rows, path, plans, tie_starts, self._spec.min_confidence,
                             self._spec.seed)
        failed = rows.column(table.ERROR_STAGE).is_valid().to_numpy(zero_copy_only=False)
        wanted = np.flatnonzero((copies > 0) | failed)
        if not len(wanted):
            return
        if self._metadata.input_format != formats.PARQUET:
            yield _Reads(path, rows.take(wanted), copies[wanted])
            return
        sources = np.array(rows.column(table.SOURCE).take(wanted).to_pylist(), dtype=object)
        indices = rows.column(table.INDEX).take(wanted).to_numpy()
        columns = formats.table_columns(self._metadata)
        for source in dict.fromkeys(sources):
            mine = sources == source
            try:
                splits = formats.parquet_splits(source, columns, self._split_bytes)
            except OSError:  # gone: `_PairWithImages` fails the job, naming the table
                splits = [formats.ParquetSplit(source)]
            split_of = np.searchsorted([split.first_row for split in splits], indices[mine],
                                       side="right")
            for split in np.unique(split_of):
                picked = wanted[mine][split_of == split]
                yield _Reads(path, rows.take(picked), copies[picked])


class _PairWithImages(beam.DoFn):
    """`_Reads` → their records' copies and dead letters, keyed for the shard shuffle.

    Reads the input records the rows name (in file order, once) and serializes what is to be
    written. An input whose record no longer matches the table (another id, an image whose bytes
    are not the ones scored, a record missing, or the file unreadable) fails the job: the table
    describes other data.

    A replaced image fails the job rather than becoming a dead letter: the selection already
    gave its class exactly K records from the old scores, so dropping it would leave the class
    short and stats.json unreconciled; and an input rewritten in place after scoring makes the
    file's other scores suspect too. Rerunning the teacher on the changed input is the fix.
    """

    def __init__(self, spec: OutputSpec, metadata: table.TableMetadata):
        self._spec = spec
        self._metadata = metadata
        self._records = beam.metrics.Metrics.counter("ns_data", "records_emitted")

    def process(self, reads: _Reads, totals: Mapping[str, int]):
        path, copies = reads.path, reads.copies
        chunks = {prefix: chunks_per_shard(totals.get(prefix, 0), n, self._spec.chunk_records)
                  for prefix, n in self._spec.num_shards_by_prefix.items()}
        picked = _Rows(reads.rows)
        labeled = _PseudoLabels(picked, copies, self._spec, self._metadata.num_classes,
                                chunks[PSEUDO_LABEL_PREFIX])
        by_source: dict[str, dict[int, int]] = {}
        batches = KeyedBatches()
        add, stages, ids = batches.add, picked.stages, picked.ids
        hashes = picked.hashes or [None] * len(ids)
        for i, (source, index) in enumerate(zip(picked.sources, picked.indices)):
            if stages[i] == STAGE_FILE:  # no bytes to read: the file breaks there
                yield from add(*self._dead_letter(picked, i, None, chunks))
            else:
                by_source.setdefault(source, {})[index] = i
        changed, written = [], []
        # Once per record: no generator per record, and the counter counted once per call.
        for source, rows_at in by_source.items():
            try:
                for index, serialized in self._read(source, rows_at, path):
                    i = rows_at[index]
                    if stages[i] is not None:
                        yield from add(*self._dead_letter(picked, i, serialized, chunks))
                        continue
                    encoded = self._encoded(serialized, ids[i], source, index, path)
                    recorded = hashes[i]
                    if recorded is not None and table.content_hash(encoded) != recorded:
                        changed.append((source, index, ids[i]))
                        continue
                    for key, order, record in labeled.copies(i, encoded):
                        ready = add(key, order, record)
                        if ready:
                            yield from ready
                    written.append(i)
            except OSError as e:
                raise ValueError(f"{source}, an input file of the predictions table {path}, "
                                 f"cannot be read ({type(e).__name__}: {e}): the input changed "
                                 "since the table was written") from e
        if changed:
            source, index, image_id = changed[0]
            # A Parquet input's rows come in splits (`_PlanReads`): the count is of this one.
            scope = ("this split of the input file" if self._metadata.input_format
                     == formats.PARQUET else "this table file")
            raise ValueError(f"{source} record {index} (id {image_id.decode(errors='replace')}):"
                             " image bytes changed since scoring, so the predictions table "
                             f"{path} has another image's label for it ({len(changed)} such "
                             f"image(s) selected in {scope}): the input changed since the table "
                             "was written; rerun beam_jobs.label_and_balance on it")
        self._records.inc(int(copies[written].sum()))
        yield from batches.flush()

    def _read(self, source: str, rows_at: Mapping[int, int], path: str):
        """(index, bytes) of the wanted records of one input file, in file order."""
        if self._metadata.input_format == "images":
            with FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                yield 0, f.read()
            return
        if self._metadata.input_format in formats.FORMATS:
            yield from formats.read_wanted(source, self._metadata.input_format,
                                           formats.table_columns(self._metadata), rows_at, path)
            return
        last, found = max(rows_at), 0
        for index, serialized in enumerate(iter_records(source)):
            if index in rows_at:
                found += 1
                yield index, serialized
            if index == last:
                break
        if found < len(rows_at):
            raise ValueError(f"{source} has fewer records than the predictions table {path} "
                             "names: the input changed since the table was written")

    def _encoded(self, serialized: bytes, image_id: bytes, source: str, index: int,
                 path: str) -> bytes:
        if self._metadata.input_format == "images":  # named as the teacher pass named it
            actual = globs.image_id(source, globs.glob_root(self._metadata.input))
            encoded = serialized
        elif self._metadata.input_format in formats.FORMATS:
            actual, encoded = serialized
        else:
            actual, encoded = parse_image_record(serialized)
        if actual != image_id:
            raise ValueError(f"{source} record {index} has id {actual!r}, the predictions table "
                             f"{path} says {image_id!r}: the input changed since the table was "
                             "written")
        return encoded

    def _dead_letter(self, rows: _Rows, i: int, serialized: bytes | None,
                     chunks: Mapping[str, int]):
        image_id, stage, message = rows.ids[i], rows.stages[i], rows.messages[i] or ""
        encoded = serialized
        if self._metadata.input_format in formats.FORMATS and serialized is not None:
            encoded = serialized[1]  # (id, bytes) from `formats.read_wanted`
        elif (serialized is not None and stage != STAGE_PARSE
                and self._metadata.input_format != "images"):
            try:
                _, encoded = parse_image_record(serialized)
            except ParseFailure:
                encoded = serialized
        order = id_hash(stage.encode() + b"#" + image_id, self._spec.seed)
        record = schema.dead_letter_example(stage, image_id, encoded, message)
        return shard_key(DEAD_LETTER_PREFIX, order, 1, chunks[DEAD_LETTER_PREFIX]), order, record


def _totals(_, plans: Mapping[int, ClassPlan], counts, spec: OutputSpec) -> dict[str, int]:
    """Records each output will hold, from the plans and the table counts alone."""
    written = sum(plan.quota.written for plan in plans.values())
    chunks = chunks_per_shard(written, spec.num_shards, spec.chunk_records)
    if chunks > 1:
        logging.warning(
            "%d records in %d shards is %d sort chunks per shard: each shard is concatenated "
            "from its chunks, one more read and write of the output. --num_shards=%d (or "
            "--chunk_records=%d) writes every shard in one piece.", written, spec.num_shards,
            chunks, math.ceil(written / spec.chunk_records),
            math.ceil(written / spec.num_shards))
    return {PSEUDO_LABEL_PREFIX: written, DEAD_LETTER_PREFIX: sum(counts.failed.values())}


class WriteLabeledShards(beam.PTransform):
    """Table file paths → pseudo-label and dead-letter shards; returns ((prefix, shard), n).

    Args:
      output_dir: where `pseudo_labels-*.tfrecord` and `dead_letters-00000-of-00001.tfrecord` go.
      spec: shard count, label type, seed, chunking.
      metadata: the predictions table's settings (input format, class count).
      plans: (label, ClassPlan) from `BalancePerClass`.
      tie_starts: (label, {file: start}) from `BalancePerClass`.
      counts: the `TableCounts` singleton from `CountPredictions`.
      split_bytes: a Parquet input file is read in splits of about this many bytes of its
        image and id columns (`formats.parquet_splits`), each by its own worker call.
    """

    def __init__(self, output_dir: str, spec: OutputSpec, metadata: table.TableMetadata,
                 plans: beam.PCollection, tie_starts: beam.PCollection,
                 counts: beam.PCollection, split_bytes: int = formats.DEFAULT_SPLIT_BYTES):
        super().__init__()
        self._split_bytes = split_bytes
        self._output_dir = output_dir
        self._spec = spec
        self._metadata = metadata
        self._plans = plans
        self._tie_starts = tie_starts
        self._counts = counts

    def expand(self, paths):
        side = beam.pvalue
        plans = side.AsDict(self._plans)
        totals = (paths.pipeline
                  | "Once" >> beam.Create([None])
                  | "Totals" >> beam.Map(_totals, plans, side.AsSingleton(self._counts),
                                         self._spec))
        # The work items are small (table rows, no bytes); spread so that the splits of one big
        # Parquet file are read by several workers.
        reads = (paths
                 | "PlanReads" >> beam.ParDo(
                     _PlanReads(self._spec, self._metadata, self._split_bytes), plans,
                     side.AsDict(self._tie_starts))
                 | "SpreadReads" >> beam.Reshuffle())
        keyed = reads | "PairWithImages" >> beam.ParDo(
            _PairWithImages(self._spec, self._metadata), side.AsSingleton(totals))
        return keyed | "Write" >> WriteShuffledShards(self._output_dir,
                                                      self._spec.num_shards_by_prefix)
