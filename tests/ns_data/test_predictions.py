"""The predictions table: rows, order, metadata and size on disk."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from ns_data import predictions as table
from ns_data import schema
from ns_data.records import Prediction

META = table.TableMetadata(input="/data/*.tfrecord", input_format="tfrecord", num_classes=4,
                           topk=2, teacher="/t", temperature=2.0, image_shape=(8, 8, 1))


def ok(source, index, probs, k=2):
    classes, top = table.topk(np.float32(probs), k)
    return Prediction(source, index, b"id-%s-%d" % (source.encode(), index), classes, top)


def test_rows_round_trip_sorted_by_source_and_index(tmp_path):
    rows = [ok("b", 1, [0.1, 0.2, 0.3, 0.4]), ok("a", 5, [0.7, 0.1, 0.1, 0.1]),
            Prediction("a", 2, b"bad", stage="decode", message="Invalid PNG"),
            ok("a", 0, [0.25, 0.25, 0.25, 0.25])]
    path = str(tmp_path / "predictions-x.parquet")
    size = table.write_table_file(path, rows, META)
    assert os.path.getsize(path) == size and not os.path.exists(path + ".incomplete")
    t = table.read_table_file(path).to_pydict()
    assert t[table.SOURCE] == ["a", "a", "a", "b"]
    assert t[table.INDEX] == [0, 2, 5, 1]
    assert t[table.LABEL] == [0, None, 0, 3]
    assert t[table.CONFIDENCE] == pytest.approx([0.25, None, 0.7, 0.4])
    assert t[table.TOPK_CLASSES] == [[0, 1], None, [0, 1], [3, 2]]  # ties: lower class first
    assert t[table.ERROR_STAGE] == [None, "decode", None, None]
    assert t[table.ERROR_MESSAGE] == [None, "Invalid PNG", None, None]
    assert t[table.ID][1] == b"bad"
    assert table.read_metadata(path) == META
    assert pq.read_schema(path).field(table.TOPK_PROBS).type.value_type == "float"


def test_topk_order_is_the_soft_topk_target_order():
    probs = np.float32([0.1, 0.3, 0.3, 0.05, 0.25])
    classes, top = table.topk(probs, 3)
    want_classes, want_probs = schema.topk_target(probs, 3)
    assert classes.tolist() == want_classes.tolist() == [1, 2, 4]
    np.testing.assert_array_equal((top / top.sum(dtype=np.float64)).astype(np.float32), want_probs)


def test_metadata_round_trip_and_refusals(tmp_path):
    assert table.TableMetadata.from_json(META.to_json()) == META
    assert not META.dense and table.TableMetadata("i", "images", 3, 3).dense
    with pytest.raises(ValueError, match="format version 99"):
        table.TableMetadata.from_json(META.to_json().replace('"version": 2', '"version": 99'))
    # Format 1 (no image hashes, no input records) is still read, and says it checks nothing.
    old = table.TableMetadata.from_json(META.to_json().replace('"version": 2', '"version": 1'))
    assert old.version == 1 and not old.checks_input and META.checks_input
    with pytest.raises(ValueError, match="topk must be in 1..num_classes=4"):
        table.TableMetadata("i", "tfrecord", num_classes=4, topk=5)
    path = str(tmp_path / "p.parquet")
    table.write_table_file(path, [ok("a", 0, [0.5, 0.2, 0.2, 0.1])], META)
    other = table.TableMetadata(**{**table.dataclasses.asdict(META), "num_classes": 5})
    with pytest.raises(ValueError, match="num_classes 5 vs 4"):
        table.check_metadata(table.read_table_file(path), path, other)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="is not a predictions table file"):
        table.read_metadata(str(tmp_path / "junk.parquet"))


def test_file_names_are_stable_per_group():
    assert table.table_file("d", "gs://b/x.tfrecord") == table.table_file("d", "gs://b/x.tfrecord")
    assert table.table_file("d", "a") != table.table_file("d", "b")
    buckets = {table.image_bucket(f"/img/{i}.png", 4) for i in range(100)}
    assert buckets == {f"images-{b:05d}-of-00004" for b in range(4)}


@pytest.mark.slow
def test_top10_of_1000_classes_costs_under_64_bytes_a_row(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 20_000, 1000
    logits = rng.normal(size=(n, c)).astype(np.float32) * 3
    logits[np.arange(n), rng.integers(0, c, n)] += rng.uniform(0, 12, n)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    meta = table.TableMetadata(input="i", input_format="tfrecord", num_classes=c, topk=10)
    hashes = rng.integers(0, 2**63, n)  # random, as image hashes are: 8 bytes that do not shrink
    rows = [Prediction("gs://bucket/unlabeled-00001-of-01024.tfrecord", i, b"", *table.topk(p, 10),
                       image_hash=int(h)) for i, (p, h) in enumerate(zip(probs, hashes))]
    path = str(tmp_path / "p.parquet")
    table.write_table_file(path, rows, meta)
    metadata = pq.ParquetFile(path).metadata
    data = sum(metadata.row_group(g).column(i).total_compressed_size
               for g in range(metadata.num_row_groups) for i in range(metadata.num_columns)
               if metadata.row_group(g).column(i).path_in_schema != table.ID)
    print(f"{data / n:.1f} bytes a row without its id")
    assert data / n <= 64, data / n


@pytest.mark.parametrize("inputs", [1, 3])
@pytest.mark.parametrize("piece_rows", [3, 65_536])
def test_write_predictions_one_sorted_file_per_input_whatever_the_pieces(
        tmp_path, monkeypatch, piece_rows, inputs):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    monkeypatch.setattr(table, "_PIECE_ROWS", piece_rows)
    rng = np.random.default_rng(0)
    rows = [ok(source, index, rng.dirichlet(np.ones(4)))
            for source in ("f1", "f2") for index in range(10)]
    rows.append(Prediction("f2", 10, b"broken", stage="parse", message="not an Example"))
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    out = str(tmp_path / "table")
    with TestPipeline() as p:
        # Batches of rows of both files, as tables: the step splits them by input file. With
        # several PCollections (as the teacher pass gives them), each has some of the batches.
        batches = [table.to_table(shuffled[i:i + 4]) for i in range(0, len(shuffled), 4)]
        tables = tuple(p | f"Create{k}" >> beam.Create(batches[k::inputs], reshuffle=False)
                       for k in range(inputs))
        paths = (tables if inputs > 1 else tables[0]) | table.WritePredictions(out, META)
        assert_that(paths, equal_to([table.table_file(out, "f1"), table.table_file(out, "f2")]))
    for source in ("f1", "f2"):
        got = table.read_table_file(table.table_file(out, source)).to_pydict()
        want = [r for r in rows if r.source == source]
        assert got[table.INDEX] == [r.index for r in want]
        assert got[table.ID] == [r.image_id for r in want]
        assert got[table.LABEL] == [int(r.classes[0]) if r.ok else None for r in want]


def test_scored_table_equals_rows_made_one_by_one():
    rng = np.random.default_rng(1)
    rows = [ok(source, index, rng.dirichlet(np.ones(4)), k=3)
            for source, index in (("b", 4), ("a", 1), ("a", 0))]
    columns = table.scored_table([r.image_id for r in rows], [r.source for r in rows],
                                 [r.index for r in rows], np.stack([r.classes for r in rows]),
                                 np.stack([r.probs for r in rows]))
    assert columns.schema.equals(table.SCHEMA)
    want = table.to_table(rows)
    assert columns.sort_by([(table.SOURCE, "ascending"), (table.INDEX, "ascending")]).equals(want)


def test_write_predictions_groups_image_files_into_buckets(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    meta = table.TableMetadata(input="/img/*", input_format="images", num_classes=4, topk=2)
    rows = [ok(f"/img/{i}.png", 0, [0.4, 0.3, 0.2, 0.1]) for i in range(12)]
    buckets = {table.image_bucket(r.source, 3) for r in rows}
    out = str(tmp_path / "table")
    with TestPipeline() as p:
        paths = (p | beam.Create([table.to_table(rows[:7]), table.to_table(rows[7:])],
                                 reshuffle=False)
                 | table.WritePredictions(out, meta, image_buckets=3))
        assert_that(paths, equal_to([table.table_file(out, b) for b in buckets]))
    written = {}
    for bucket in buckets:
        for source in table.read_table_file(table.table_file(out, bucket))[table.SOURCE]:
            written[source.as_py()] = bucket
    assert written == {r.source: table.image_bucket(r.source, 3) for r in rows}


def test_content_hash_is_a_stable_64_bit_hash_of_the_bytes():
    assert table.content_hash(b"png bytes") == table.content_hash(b"png bytes")
    assert table.content_hash(b"png bytes") != table.content_hash(b"png bytez")
    # blake2b-64 of nothing, its published value: the hash is fixed, tables outlive processes
    assert table.content_hash(b"") == 0xE4A6A0577479B2B4
    assert all(0 <= table.content_hash(bytes([i])) < 2**64 for i in range(256))


def test_a_table_file_records_its_inputs_and_each_images_hash(tmp_path):
    rows = [Prediction("a", 0, b"i0", *table.topk(np.float32([0.7, 0.1, 0.1, 0.1]), 2),
                       image_hash=2**64 - 1),
            Prediction("a", 1, b"bad", stage="decode", message="x", image_hash=5),
            Prediction("a", 2, b"a#2", stage="damaged_file", message="truncated"),
            Prediction("b", 0, b"p", stage="parse", message="not an Example"),
            Prediction("c", 0, b"c", stage="parse", message="not listed")]
    inputs = table.inputs_of(table.to_table(rows), {"a": 300, "b": 40})
    # A damaged file's last row stands for its unreadable rest, not a record; a file the run
    # did not list (a broken symlink) has no size to record.
    assert inputs == [table.InputFile("a", 2, 300), table.InputFile("b", 1, 40)]
    path = str(tmp_path / "predictions-x.parquet")
    table.write_table_file(path, rows, META, inputs)
    read = table.read_table_file(path)
    assert table.input_files(read) == inputs
    assert read.column(table.IMAGE_HASH).to_pylist() == [2**64 - 1, 5, None, None, None]
    table.write_table_file(path, rows, META)
    assert table.input_files(table.read_table_file(path)) is None


def test_a_format_1_table_without_hashes_is_read_as_it_is(tmp_path):
    path = str(tmp_path / "predictions-x.parquet")
    table.write_table_file(path, [ok("a", 0, [0.5, 0.2, 0.2, 0.1])], META)
    old_meta = table.dataclasses.replace(META, version=1)
    rows = pq.read_table(path).drop_columns([table.IMAGE_HASH])
    pq.write_table(rows.replace_schema_metadata({table.METADATA_KEY: old_meta.to_json()}), path)
    read = table.read_table_file(path)
    assert read.column_names == table.SCHEMA.names[:-1]
    assert read.column(table.LABEL).to_pylist() == [0]
    assert table.read_metadata(path) == old_meta and table.input_files(read) is None
