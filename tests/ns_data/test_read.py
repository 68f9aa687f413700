"""ns_data.read: what an input record or file becomes — an image with its id, or a counted
failure naming why."""
from __future__ import annotations

import os
import pickle

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from ns_data import formats, predictions, progress, read, schema
from tests import fakes
from tests.data_files import write_tfrecord
from tests.ns_data import test_formats

PNG = fakes.fake_image(1, 0, 10).encoded


def example(**features) -> bytes:
    def feature(value):
        if isinstance(value[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value))
    return tf.train.Example(features=tf.train.Features(
        feature={name.replace("_", "/"): feature(v) for name, v in features.items()}
    )).SerializeToString()


def test_a_record_gives_its_id_or_a_content_hash_of_its_image():
    assert read.parse_image_record(example(image_encoded=[PNG], image_id=[b"a"])) == (b"a", PNG)
    hashed = (schema.content_id(PNG), PNG)
    assert read.parse_image_record(example(image_encoded=[PNG])) == hashed
    assert read.parse_image_record(example(image_encoded=[PNG], image_id=[b""])) == hashed


@pytest.mark.parametrize("features, message", [
    (dict(image_encoded=[PNG], image_id=[7]), r"'image/id' must be one bytes value, got \[7\]"),
    (dict(image_encoded=[PNG], image_id=[0]), r"'image/id' must be one bytes value, got \[0\]"),
    (dict(image_encoded=[PNG], image_id=[b"a", b"b"]), "must be one bytes value"),
    (dict(image_encoded=[PNG, PNG], image_id=[b"a"]),
     r"record has 2 'image/encoded' values \(one image per record\)"),
    (dict(image_id=[b"a"]), "record has no 'image/encoded' bytes"),
    (dict(image_encoded=[3]), "record has no 'image/encoded' bytes"),
])
def test_a_record_that_is_not_one_image_is_a_parse_failure(features, message):
    with pytest.raises(read.ParseFailure, match=message):
        read.parse_image_record(example(**features))


def test_a_directory_as_input_is_refused_with_the_glob_to_use(tmp_path):
    with pytest.raises(ValueError, match=f"--input={tmp_path} is a directory; give a glob of "
                                         f"its files, e.g. --input='{tmp_path}/\\*', or "
                                         f"--input='{tmp_path}/\\*\\*' with its subfolders"):
        read.check_input_pattern(str(tmp_path))


def test_symlinks_out_of_the_image_folder_are_not_followed(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret.png").write_bytes(PNG)
    (tmp_path / "in" / "a.png").write_bytes(PNG)
    os.symlink(tmp_path / "in" / "a.png", tmp_path / "in" / "inside.png")
    os.symlink(tmp_path / "secret.png", tmp_path / "in" / "outside.png")
    pattern = f"{tmp_path}/in/*.png"
    with TestPipeline(runner="DirectRunner") as p:
        result = p | read.ReadImages(pattern, "images", batch_size=2)
        images = (result.images
                  | "Sources" >> beam.FlatMap(lambda batch: [(im.image_id, im.source)
                                                             for im in batch])
                  | "AllRead" >> beam.combiners.ToList())
        failed = (result.failed | "Rows" >> beam.FlatMap(lambda t: zip(
            t.column(predictions.ID).to_pylist(),
            t.column(predictions.SOURCE).to_pylist(),
            t.column(predictions.ERROR_STAGE).to_pylist(),
            t.column(predictions.ERROR_MESSAGE).to_pylist()))
                  | "AllFailed" >> beam.combiners.ToList())
        assert_that(images, lambda got: _equal(sorted(got[0]), [
            (b"a.png", f"{tmp_path}/in/a.png"), (b"inside.png", f"{tmp_path}/in/inside.png")]),
            label="read")
        assert_that(failed, lambda got: _equal(sorted(got[0]), [
            (b"outside.png", f"{tmp_path}/in/outside.png", "damaged_file",
             f"{tmp_path}/in/outside.png is a symlink to {tmp_path}/secret.png, outside the "
             f"input folder {tmp_path}/in; not followed")]), label="failed")


@pytest.mark.parametrize("input_format, name", [("images", "gone.png"),
                                                 ("tfrecord", "gone.tfrecord")])
def test_a_symlink_to_nothing_is_a_failed_row_not_a_lost_file(tmp_path, input_format, name):
    (tmp_path / "in").mkdir()
    fakes.write_tfrecord(tmp_path / "in" / "a.tfrecord", [schema.image_example(PNG, b"a")])
    (tmp_path / "in" / "a.png").write_bytes(PNG)
    os.symlink(tmp_path / "deleted", tmp_path / "in" / name)
    pattern = f"{tmp_path}/in/*.{name.split('.')[1]}"
    with TestPipeline(runner="DirectRunner") as p:
        result = p | read.ReadImages(pattern, input_format, batch_size=2)
        failed = (result.failed | "Rows" >> beam.FlatMap(lambda t: zip(
            t.column(predictions.SOURCE).to_pylist(),
            t.column(predictions.ERROR_STAGE).to_pylist(),
            t.column(predictions.ERROR_MESSAGE).to_pylist()))
                  | "AllFailed" >> beam.combiners.ToList())
        assert_that(failed, lambda got: _equal(got[0], [
            (f"{tmp_path}/in/{name}", "damaged_file",
             f"{tmp_path}/in/{name} is a symlink to {tmp_path}/deleted, which does not exist. "
             "Nothing in the file can be read.")]))


def _equal(got, want):
    assert got == want


def test_reading_reports_progress_against_the_input_bytes(tmp_path, monkeypatch):
    records = [schema.image_example(fakes.fake_image(i, 0, 10).encoded) for i in range(10)]
    path = write_tfrecord(tmp_path / "in.tfrecord", records)
    seen = []
    monkeypatch.setattr(progress.Progress, "update",
                        lambda self, images, nbytes=0: seen.append((self._total, images, nbytes)))
    with TestPipeline(runner="DirectRunner") as p:
        _ = p | read.ReadImages(path, "tfrecord", batch_size=4)
    size = os.path.getsize(path)
    framed = [len(r) + 16 for r in records]
    assert sum(framed) == size
    assert sorted(seen) == sorted([(size, 4, sum(framed[:4])), (size, 4, sum(framed[4:8])),
                                   (size, 2, sum(framed[8:]))])
    progress.Progress.finish_all()


def read_all(pattern: str, input_format: str, out, **kwargs) -> tuple[list, list]:
    """(sorted (id, source, index, bytes) of the images, sorted (source, index, id, stage,
    message) of the failed rows) that ReadImages reads; passed out through the file `out`."""
    with TestPipeline(runner="DirectRunner") as p:
        result = p | read.ReadImages(pattern, input_format, **kwargs)
        images = (result.images
                  | "Images" >> beam.FlatMap(lambda batch: [
                      (im.image_id, im.source, im.index, im.encoded) for im in batch])
                  | "AllImages" >> beam.combiners.ToList())
        failed = (result.failed
                  | "Rows" >> beam.FlatMap(lambda t: zip(*(t.column(c).to_pylist() for c in (
                      predictions.SOURCE, predictions.INDEX, predictions.ID,
                      predictions.ERROR_STAGE, predictions.ERROR_MESSAGE))))
                  | "AllFailed" >> beam.combiners.ToList())
        _ = (images
             | "Both" >> beam.Map(lambda i, f: (sorted(i), sorted(f)),
                                  beam.pvalue.AsSingleton(failed))
             | "Save" >> beam.Map(_save, str(out)))
    with open(out, "rb") as f:
        return pickle.load(f)


def _save(value, path: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(value, f)


def test_parquet_splits_read_the_same_images_under_the_same_indices(tmp_path):
    path = test_formats.big_parquet(tmp_path)
    columns = formats.Columns(id="id")
    whole = read_all(path, "parquet", tmp_path / "got", columns=columns, batch_size=3)
    split = read_all(path, "parquet", tmp_path / "got", columns=columns, batch_size=3,
                     split_bytes=1)
    assert split == whole
    images, failed = whole
    assert [(i, source, index) for i, source, index, _ in images] == sorted(
        (b"id-%02d" % i, path, i) for i in range(12) if i != 3)
    assert failed == [(path, 3, b"id-03", "parse", f"{path} row 3: a null image cell")]


def test_a_damaged_row_group_in_a_split_file_costs_the_rest_of_its_split(tmp_path):
    path = test_formats.big_parquet(tmp_path)
    test_formats.corrupt_row_group(path, 3)  # rows 6..7
    # Splits of rows 0..3, 4..7 and 8..11.
    images, failed = read_all(path, "parquet", tmp_path / "got",
                              columns=formats.Columns(id="id"), split_bytes=850)
    assert [index for _, _, index, _ in images] == [0, 1, 2, 4, 5, 8, 9, 10, 11]
    (source, index, image_id, stage, message), = [f for f in failed if f[3] == "damaged_file"]
    assert (source, index, image_id, stage) == (path, 6, f"{path}#6".encode(), "damaged_file")
    assert message.startswith(f"{path}: row group 3 (rows 6..7) cannot be read at row 6 (")
    assert message.endswith(". Its records 6..7, the rest of its split, are lost; the file's "
                            "other splits are read on their own.")
    unsplit, unsplit_failed = read_all(path, "parquet", tmp_path / "got",
                                       columns=formats.Columns(id="id"))
    assert [index for _, _, index, _ in unsplit] == [0, 1, 2, 4, 5]  # rows 6..11 are lost
    assert [f[1:4] for f in unsplit_failed if f[3] == "damaged_file"] == [
        (6, f"{path}#6".encode(), "damaged_file")]
