"""Tests for the deterministic shard writer in `ns_data/write.py`.

Each record's bytes start with its zero-padded order key, so a shard read back tells which key
every record had. Pipelines are few and shared through module fixtures: a DirectRunner run costs
about two seconds. The writing pass that feeds it (`WriteLabeledShards`) is tested end to end in
tests/beam_jobs.
"""
from __future__ import annotations

import collections
import math
import os
import pathlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from ns_data import predictions
from ns_data import write as write_module
from ns_data.balance import id_hash
from ns_data.records import Prediction
from ns_data.write import (DEFAULT_CHUNK_RECORDS, OutputSpec, WriteShuffledShards,
                           chunks_per_shard, shard_key, shard_path)
from ns_data.tfrecord import frame, frame_data
from tests.data_files import read_tfrecords, write_tfrecord

PREFIX = "recs"


def direct_pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(options=PipelineOptions(["--runner=DirectRunner"]))


def record(key: int, tag: str) -> bytes:
    return f"{key:020d}/{tag}".encode()


def key_of(rec: bytes) -> int:
    return int(rec.split(b"/")[0])


# 41 records with 63-bit hash keys, one key shared by two records.
KEYS = [id_hash(b"image-%d" % i, 7) for i in range(40)]
MANY = [(k, record(k, f"r{i}")) for i, k in enumerate(KEYS)] + [(KEYS[5], record(KEYS[5], "dup"))]
FEW = [(5, record(5, "a")), (13, record(13, "b")), (2, record(2, "c"))]  # shards 5, 5, 2 of 8


def _pick(index, pairs, num_shards, chunks):
    # Unannotated, so the output type is Any as for the pipeline's own keyed records.
    order, rec = pairs[index]
    return shard_key(PREFIX, order, num_shards, chunks), write_module.framed([order], [frame(rec)])


def keyed(p, label: str, pairs, num_shards: int, chunk_records: int):
    chunks = chunks_per_shard(len(pairs), num_shards, chunk_records)
    return p | f"Create{label}" >> beam.Create(range(len(pairs))) | f"Key{label}" >> beam.Map(
        _pick, list(pairs), num_shards, chunks)


def expected_counts(pairs, num_shards: int) -> list[tuple[int, int]]:
    counts = collections.Counter(key % num_shards for key, _ in pairs)
    return [(s, counts[s]) for s in range(num_shards)]


def write(p, label: str, pairs, out: str, num_shards: int,
          chunk_records: int = DEFAULT_CHUNK_RECORDS) -> None:
    written = (keyed(p, label, pairs, num_shards, chunk_records)
               | f"Write{label}" >> WriteShuffledShards(out, {PREFIX: num_shards}))
    counts = [((PREFIX, s), n) for s, n in expected_counts(pairs, num_shards)]
    assert_that(written, equal_to(counts), label=f"Counts{label}")


def read_shards(out: str, num_shards: int, prefix: str = PREFIX) -> list[list[bytes]]:
    return [read_tfrecords(shard_path(out, prefix, s, num_shards)) for s in range(num_shards)]


def file_bytes(out: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(pathlib.Path(out).iterdir())}


def shard_names(num_shards: int, prefix: str = PREFIX) -> list[str]:
    return [f"{prefix}-{s:05d}-of-{num_shards:05d}.tfrecord" for s in range(num_shards)]


# --------------------------------------------------------------------------------------------
# WriteShuffledShards
# --------------------------------------------------------------------------------------------

def pairs(batch: write_module.Framed) -> list[tuple[int, bytes]]:
    """(order, record) of each record of a batch, in batch order."""
    ends = np.frombuffer(batch.ends, "<u8").tolist()
    frames = [batch.frames[start:end] for start, end in zip([0, *ends], ends)]
    records = [frame_data(f) for f in frames]
    assert [frame(r) for r in records] == frames  # each a whole, checksummed frame
    return list(zip(np.frombuffer(batch.orders, "<u8").tolist(), records))


def unframed(batches) -> list:
    return [(key, pairs(batch)) for key, batch in batches]


def test_keyed_batches_bound_records_and_bytes(monkeypatch):
    monkeypatch.setattr(write_module, "_BATCH_RECORDS", 3)
    monkeypatch.setattr(write_module, "_BATCH_BYTES", 100)
    batches = write_module.KeyedBatches()
    out = []
    for i in range(4):  # key a fills a batch of 3; the 4th waits
        out += batches.add(("a",), i, b"x" * 10)  # a frame of 26 bytes
    assert unframed(out) == [(("a",), [(0, b"x" * 10), (1, b"x" * 10), (2, b"x" * 10)])]
    out = batches.add(("b",), 9, b"y" * 58)  # 26 + 74 frame bytes >= 100: everything goes
    assert unframed(out) == [(("a",), [(3, b"x" * 10)]), (("b",), [(9, b"y" * 58)])]
    assert list(batches.flush()) == []
    out = list(batches.add(("c",), 1, b"z"))
    assert out == [] and unframed(batches.flush()) == [(("c",), [(1, b"z")])]


def test_sorted_frames_order_by_key_then_bytes_whatever_the_batch_order():
    records = [(5, b"b"), (2, b"z"), (5, b"a"), (2**63 - 1, b""), (0, b"q"), (5, b"c")]
    expected = [frame(r) for _, r in sorted(records)]
    for cut in range(len(records) + 1):  # in two batches, either one first
        one, two = records[:cut], records[cut:]
        batches = [write_module.framed([o for o, _ in b], [frame(r) for _, r in b])
                   for b in (one, two)]
        for order in (batches, batches[::-1]):
            assert [bytes(f) for f in write_module.sorted_frames(order)] == expected
    assert write_module.sorted_frames([]) == []


def test_sorted_frames_with_many_runs_of_one_key():
    """Duplicate images share their order key: runs of equal keys anywhere in a chunk (first,
    last, next to each other) are ordered by bytes, everything else by key."""
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, 300).tolist()
    keys[10:14] = [keys[10]] * 4  # one run, then another right after it
    keys[14:16] = [keys[14]] * 2
    keys += [keys[0], keys[299], keys[150]] * 2  # three more keys, each now three times
    records = [(k, rng.bytes(int(rng.integers(0, 20)))) for k in keys]
    order = rng.permutation(len(records)).tolist()
    batches = [write_module.framed([records[i][0] for i in part],
                                   [frame(records[i][1]) for i in part])
               for part in (order[:100], order[100:250], order[250:])]
    assert [bytes(f) for f in write_module.sorted_frames(batches)] == [
        frame(r) for _, r in sorted(records)]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Runs the writer on several inputs: {name: (output dir, inputs, num_shards)}."""
    root = tmp_path_factory.mktemp("write")
    cases = {
        "few": (FEW, 8, {}),
        "sorted": (MANY, 4, {}),
        "chunked": (MANY, 4, {"chunk_records": 2}),
        "empty": ([], 3, {}),
        # The same inputs again, in reverse order: must give the same bytes.
        "sorted_again": (MANY[::-1], 4, {}),
        "chunked_again": (MANY[::-1], 4, {"chunk_records": 2}),
    }
    dirs = {}
    with direct_pipeline() as p:
        for name, (pairs, num_shards, kwargs) in cases.items():
            dirs[name] = (str(root / name), pairs, num_shards)
            write(p, name, pairs, dirs[name][0], num_shards, **kwargs)
    return dirs


@pytest.mark.parametrize("name", ["few", "sorted", "chunked", "empty"])
def test_every_record_written_exactly_once(outputs, name):
    out, pairs, num_shards = outputs[name]
    written = [rec for shard in read_shards(out, num_shards) for rec in shard]
    assert sorted(written) == sorted(rec for _, rec in pairs)


@pytest.mark.parametrize("name", ["few", "sorted", "chunked", "empty"])
def test_exactly_the_shards_and_nothing_else(outputs, name):
    # No temp dir, no `.incomplete` file, no stray piece: only the num_shards shard files.
    out, _, num_shards = outputs[name]
    assert sorted(os.listdir(out)) == shard_names(num_shards)


def test_few_records_into_many_shards(outputs):
    out, _, _ = outputs["few"]
    shards = read_shards(out, 8)
    assert shards[2] == [record(2, "c")]
    assert shards[5] == [record(5, "a"), record(13, "b")]
    for s in (0, 1, 3, 4, 6, 7):
        assert shards[s] == []
        assert os.path.getsize(shard_path(out, PREFIX, s, 8)) == 0


def test_empty_input_writes_empty_shards(outputs):
    out, _, _ = outputs["empty"]
    assert [os.path.getsize(os.path.join(out, n)) for n in shard_names(3)] == [0, 0, 0]


@pytest.mark.parametrize("name", ["sorted", "chunked"])
def test_each_record_is_in_shard_key_mod_num_shards(outputs, name):
    out, _, num_shards = outputs[name]
    for s, shard in enumerate(read_shards(out, num_shards)):
        assert shard, "the test data should fill every shard"
        assert {key_of(rec) % num_shards for rec in shard} == {s}


def test_single_chunk_shards_are_sorted_by_key(outputs):
    out, pairs, num_shards = outputs["sorted"]
    for s, shard in enumerate(read_shards(out, num_shards)):
        assert shard == sorted(rec for key, rec in pairs if key % num_shards == s)


def test_small_chunks_are_sorted_runs_in_chunk_order(outputs):
    # With several chunks per shard the documented layout is: the chunk's pieces, each sorted
    # by key, concatenated in chunk order (chunk = (key // num_shards) % chunks).
    out, pairs, num_shards = outputs["chunked"]
    chunks = math.ceil(len(pairs) / num_shards / 2)
    assert chunks > 1
    unchunked = read_shards(outputs["sorted"][0], num_shards)
    for shard, sorted_shard in zip(read_shards(out, num_shards), unchunked):
        assert sorted(shard) == sorted_shard
        assert shard == sorted(shard, key=lambda r: ((key_of(r) // num_shards) % chunks, r))
    # The data really spans several chunks, so the shards differ from the fully sorted ones.
    assert read_shards(out, num_shards) != unchunked


@pytest.mark.parametrize("name", ["sorted", "chunked"])
def test_same_inputs_give_identical_bytes(outputs, name):
    first = file_bytes(outputs[name][0])
    again = file_bytes(outputs[f"{name}_again"][0])
    assert first == again
    assert sum(len(b) for b in first.values()) > 0


def test_write_shuffled_shards_validates():
    with pytest.raises(ValueError, match="num_shards must be >= 1, got 0 for recs"):
        WriteShuffledShards("/unused", {PREFIX: 0})


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_shards=0), "num_shards must be >= 1"),
    (dict(num_shards=2, chunk_records=0), "chunk_records must be >= 1"),
    (dict(num_shards=2, topk=0), "topk must be >= 1"),
])
def test_output_spec_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OutputSpec(label_type="soft", **kwargs)


def test_chunks_and_shard_keys():
    assert chunks_per_shard(0, 4, 10) == 1
    assert chunks_per_shard(40, 4, 10) == 1
    assert chunks_per_shard(41, 4, 10) == 2
    assert shard_key("p", 4 * 7 + 3, 4, 3) == ("p", 3, 7 % 3)


def _rows(*located: tuple[str, int]) -> pa.Table:
    return pa.table({predictions.SOURCE: [s for s, _ in located],
                     predictions.INDEX: pa.array([i for _, i in located], pa.int64())})


def test_a_table_file_must_have_one_row_per_record_of_each_input():
    write_module.check_one_row_per_record(_rows(("b", 1), ("a", 0), ("b", 0), ("a", 1)), "t")
    write_module.check_one_row_per_record(_rows(), "t")
    with pytest.raises(ValueError, match="predictions table t has no row for record 0 of a: "
                                         "the table was edited"):
        write_module.check_one_row_per_record(_rows(("a", 1), ("a", 2), ("b", 0)), "t")
    with pytest.raises(ValueError, match="has two rows for record 1 of b"):
        write_module.check_one_row_per_record(_rows(("a", 0), ("b", 0), ("b", 1), ("b", 1)), "t")
    with pytest.raises(ValueError, match="has no row for record 1 of a"):
        write_module.check_one_row_per_record(_rows(("a", 0), ("a", 2)), "t")


def test_an_input_file_whose_size_and_records_changed_since_the_table_is_refused(tmp_path):
    records = [b"record-%d" % i for i in range(4)]
    source = write_tfrecord(tmp_path / "in.tfrecord", records)
    meta = predictions.TableMetadata(input=source, input_format="tfrecord", num_classes=2,
                                     topk=2)
    recorded = predictions.InputFile(source, 4, os.path.getsize(source))
    rows = _rows(*[(source, i) for i in range(4)]).replace_schema_metadata(
        {predictions.INPUTS_KEY: predictions.InputFile.to_json([recorded])})
    write_module.check_inputs(rows, "t.parquet", meta)  # unchanged
    write_tfrecord(source, records[:3] + [b"record-X"])  # same records, same size: the
    write_module.check_inputs(rows, "t.parquet", meta)  # record checks see the content
    write_tfrecord(source, records[:3] + [b"record-3, longer now"])
    write_module.check_inputs(rows, "t.parquet", meta)  # other size, same records: likewise
    write_tfrecord(source, records + records[:2])
    with pytest.raises(ValueError) as e:
        write_module.check_inputs(rows, "t.parquet", meta)
    assert str(e.value) == (
        f"the input changed since the table was written: {source} had 4 records "
        f"({recorded.size} bytes), now 6 ({os.path.getsize(source)} bytes); rerun "
        "beam_jobs.label_and_balance on it (predictions table file t.parquet)")
    os.remove(source)
    with pytest.raises(ValueError, match=f"^{source}, an input file of the predictions table "
                                         r"t.parquet, cannot be read \(BeamIOError: .*\): the "
                                         "input changed since the table was written$"):
        write_module.check_inputs(rows, "t.parquet", meta)
    write_module.check_inputs(_rows((source, 0)), "t.parquet", meta)  # none recorded: format 1



def test_rows_top1_is_each_rows_argmax_over_its_probability_vector_block_by_block():
    rng = np.random.default_rng(3)
    rows = []
    for i in range(40):
        k = int(rng.integers(1, 13))
        classes = rng.permutation(12)[:k].astype(np.int32)
        probs = rng.random(k).astype(np.float32)
        if i % 5 == 0:  # a tie between two classes: the lower class wins, as np.argmax says
            probs[:2] = probs.max()
        rows.append(Prediction("f", i, b"%d" % i, classes, probs))
    rows.append(Prediction("f", 40, b"40", stage="decode", message="bad"))
    picked = write_module._Rows(predictions.to_table(rows))
    dense = [picked.probabilities(i, 12) for i in range(len(rows))]
    assert dense[3][rows[3].classes].tolist() == rows[3].probs.tolist()
    want_labels = [int(np.argmax(p)) for p in dense]
    want = (want_labels, [float(p[label]) for p, label in zip(dense, want_labels)])
    assert picked.top1(12) == want  # the 41 rows in one block
    # With 2**20 // 3 classes a block is 3 rows; the extra classes' zeros change nothing.
    assert picked.top1((1 << 20) // 3) == want
    assert (want[0][40], want[1][40]) == (0, 0.0)  # a failed row has no classes
