"""ns_data.formats: Parquet rows and WebDataset samples, with their indices, ids and failures."""
from __future__ import annotations

import io
import itertools
import tarfile
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ns_data import formats, schema
from tests import fakes

PNG = [fakes.fake_image(i, i % 4, 100).encoded for i in range(10)]


def write_parquet(path, images: Sequence[bytes | None], ids: Sequence | None = None,
                  row_group_size: int = 4, struct: bool = False, image_column: str = "image",
                  id_column: str = "id", id_type: pa.DataType = pa.string()) -> str:
    """Images (None: a null cell) in `image_column`, as binary or Hugging Face's struct."""
    if struct:
        column = pa.array([None if b is None else {"bytes": b, "path": f"{i}.png"}
                           for i, b in enumerate(images)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        column = pa.array(images, pa.binary())
    columns = {"caption": pa.array([f"caption {i}" for i in range(len(images))]),
               image_column: column}
    if ids is not None:
        columns[id_column] = pa.array(ids, id_type)
    pq.write_table(pa.table(columns), str(path), row_group_size=row_group_size)
    return str(path)


def write_webdataset(path, members: Sequence[tuple[str, bytes]], mode: str = "w") -> str:
    with tarfile.open(str(path), mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def corrupt_row_group(path: str, group: int, column: str = "image") -> None:
    """Overwrites the page header of a row group's `column` chunk: unreadable, footer intact."""
    row_group = pq.ParquetFile(path).metadata.row_group(group)
    chunk, = [row_group.column(c) for c in range(row_group.num_columns)
              if row_group.column(c).path_in_schema == column]
    offset = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(open(path, "rb").read())
    data[offset:offset + 24] = b"\xff" * 24
    open(path, "wb").write(data)


def samples(path, input_format, columns=formats.Columns()) -> list[formats.Sample]:
    return list(formats.iter_samples(str(path), input_format, columns))


def test_parquet_rows_in_order_with_ids_and_failed_cells(tmp_path):
    images = [PNG[0], None, PNG[1], b"", PNG[2], PNG[3], PNG[4]]
    path = write_parquet(tmp_path / "a.parquet", images, [f"id-{i}" for i in range(7)],
                         row_group_size=3)
    got = samples(path, "parquet", formats.Columns(id="id"))
    assert [s.index for s in got] == list(range(7))
    assert [s.image_id for s in got] == [b"id-%d" % i for i in range(7)]
    assert [s.encoded for s in got] == [b if b else b"" for b in images]
    assert [s.problem for s in got] == [
        None, f"{path} row 1: a null image cell", None, f"{path} row 3: an empty image cell",
        None, None, None]


def test_hugging_face_struct_images_integer_ids_and_content_hashes(tmp_path):
    path = write_parquet(tmp_path / "hf.parquet", PNG[:5] + [None], list(range(100, 106)),
                         struct=True, image_column="img", id_column="n", id_type=pa.int64())
    got = samples(path, "parquet", formats.Columns("img", "n"))
    assert [s.image_id for s in got] == [b"100", b"101", b"102", b"103", b"104", b"105"]
    assert [s.encoded for s in got[:5]] == PNG[:5] and got[5].problem
    hashed = samples(path, "parquet", formats.Columns("img"))
    assert [s.image_id for s in hashed[:5]] == [schema.content_id(b) for b in PNG[:5]]
    assert hashed[5].image_id == f"{path}#5".encode()  # a null cell has no bytes to hash


def test_missing_or_unusable_columns_are_refused_from_the_first_files_schema(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", PNG[:2], [1.5, 2.5], id_type=pa.float64())
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(ValueError, match=r"^--image_column=img: no such column in "
                       rf"{path} \(columns: caption, image, id\)$"):
        formats.check_input(pattern, "parquet", formats.Columns("img"))
    with pytest.raises(ValueError, match=r"^--image_column=caption: type string in .* is not "
                       "binary or a struct with a 'bytes' field$"):
        formats.check_input(pattern, "parquet", formats.Columns("caption"))
    with pytest.raises(ValueError, match=r"^--id_column=id: type double in .* is not a string, "
                       "binary or integer column$"):
        formats.check_input(pattern, "parquet", formats.Columns(id="id"))
    formats.check_input(pattern, "parquet", formats.Columns())
    formats.check_input(pattern, "webdataset", formats.Columns("img"))  # no columns there


def test_a_damaged_row_group_loses_the_rows_from_it_on(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", PNG[:10], row_group_size=4)
    corrupt_row_group(path, 1)
    got = []
    with pytest.raises(formats.DamagedInput) as error:
        for sample in formats.iter_samples(path, "parquet"):
            got.append(sample)
    assert [s.encoded for s in got] == PNG[:4]
    assert error.value.index == 4
    assert str(error.value).startswith(f"{path}: row group 1 (rows 4..7) cannot be read at row 4")
    corrupt_row_group(path, 0, "caption")  # a column the job does not read
    first = itertools.islice(formats.iter_samples(path, "parquet"), 4)
    assert [s.encoded for s in first] == PNG[:4]


def test_a_parquet_file_without_its_footer_is_damaged_from_row_0(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", PNG[:10])
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with pytest.raises(formats.DamagedInput, match="its footer cannot be read") as error:
        samples(path, "parquet")
    assert error.value.index == 0


def test_the_writing_pass_reads_only_the_row_groups_it_needs(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", PNG[:10], [f"i{i}" for i in range(10)],
                         row_group_size=4)
    corrupt_row_group(path, 1)  # rows 4..7: never read for rows 1, 9
    got = list(formats.read_wanted(path, "parquet", formats.Columns(id="id"), {9: 0, 1: 1},
                                   "table"))
    assert got == [(1, (b"i1", PNG[1])), (9, (b"i9", PNG[9]))]
    with pytest.raises(ValueError, match="has fewer records than the predictions table table"):
        list(formats.read_wanted(path, "parquet", formats.Columns(id="id"), {1: 0, 10: 1},
                                 "table"))


def test_sample_keys_split_at_the_first_dot_of_the_base_name():
    assert formats.sample_key("a/b.c/x.seg.PNG") == ("a/b.c/x", "seg.png")
    assert formats.sample_key("x.jpg") == ("x", "jpg")
    assert formats.sample_key("README") == ("README", "")


WDS_MEMBERS = [("s0.png", PNG[0]), ("s0.json", b"{}"), ("s1.cls", b"3"), ("s1.JPG", PNG[1]),
               ("d/s2.webp", PNG[2]), ("s3.txt", b"no image"), ("s4.png", PNG[4]),
               ("s4.jpg", PNG[5]), ("s5.png", PNG[6])]


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_webdataset_samples_by_key(tmp_path, mode):
    path = write_webdataset(tmp_path / "shard.tar", WDS_MEMBERS, mode)
    got = samples(path, "webdataset")
    assert [(s.index, s.image_id, s.encoded) for s in got] == [
        (0, b"s0", PNG[0]), (1, b"s1", PNG[1]), (2, b"d/s2", PNG[2]), (3, b"s3", b""),
        (4, b"s4", b""), (5, b"s5", PNG[6])]
    assert [s.problem for s in got if s.problem] == [
        f"{path} sample 3 (s3) has no image member (members: s3.txt)",
        f"{path} sample 4 (s4) has 2 image members (one image per sample) (members: s4.png, "
        "s4.jpg)"]
    wanted = list(formats.read_wanted(path, "webdataset", formats.Columns(), {2: 0, 5: 0}, "t"))
    assert wanted == [(2, (b"d/s2", PNG[2])), (5, (b"s5", PNG[6]))]


def test_a_key_met_again_after_other_keys_is_a_duplicate_not_a_second_image(tmp_path):
    # Member: 0 a.png, 1 a.json, 2 b.png, 3 a.jpg, 4 c.txt, 5 b.png, 6 b.json, 7 a.png, 8 d.png.
    path = write_webdataset(tmp_path / "shard.tar", [
        ("a.png", PNG[0]), ("a.json", b"{}"), ("b.png", PNG[1]), ("a.jpg", PNG[2]),
        ("c.txt", b"no image"), ("b.png", PNG[3]), ("b.json", b"{}"), ("a.png", PNG[4]),
        ("d.png", PNG[5])])
    got = samples(path, "webdataset")
    assert [(s.index, s.image_id, s.encoded) for s in got] == [
        (0, b"a", PNG[0]), (1, b"b", PNG[1]), (2, b"a", b""), (3, b"c", b""), (4, b"b", b""),
        (5, b"a", b""), (6, b"d", PNG[5])]
    assert [s.problem for s in got if s.problem] == [
        f"duplicate key a in {path}, first at member 0 (sample 0); this is sample 2 (members: "
        "a.jpg)",
        f"{path} sample 3 (c) has no image member (members: c.txt)",
        f"duplicate key b in {path}, first at member 2 (sample 1); this is sample 4 (members: "
        "b.png, b.json)",
        f"duplicate key a in {path}, first at member 0 (sample 0); this is sample 5 (members: "
        "a.png)"]
    # The writing pass finds the samples after the duplicates at the same indices.
    wanted = list(formats.read_wanted(path, "webdataset", formats.Columns(), {1: 0, 6: 0}, "t"))
    assert wanted == [(1, (b"b", PNG[1])), (6, (b"d", PNG[5]))]
    # Keys are not compared across files: another tar with key a is read as usual.
    other = write_webdataset(tmp_path / "other.tar", [("a.png", PNG[6])])
    assert [(s.image_id, s.encoded, s.problem) for s in samples(other, "webdataset")] == [
        (b"a", PNG[6], None)]


@pytest.mark.parametrize("cut, lost", [(512 * 12 - 3, 5), (512 * 12, 5), (512 * 11, 5),
                                        (512 * 10 + 7, 4), (512 * 10, 4), (512 * 4 + 100, 1),
                                        (100, 0), (0, 0)])
def test_a_truncated_tar_loses_the_samples_from_the_cut_on(tmp_path, cut, lost):
    members = [(f"s{i}.png", bytes(300) + PNG[i]) for i in range(6)]
    path = write_webdataset(tmp_path / "shard.tar", members)
    data = open(path, "rb").read()
    # Sample i is blocks 2i (header) and 2i+1 (data). A cut at a header's start loses the sample
    # before it too: nothing says it had no more members.
    end = cut
    open(path, "wb").write(data[:end])
    got = []
    with pytest.raises(formats.DamagedInput) as error:
        for sample in formats.iter_samples(path, "webdataset"):
            got.append(sample)
    assert error.value.index == lost
    assert [s.encoded for s in got] == [m[1] for m in members[:lost]]
    assert str(error.value).startswith(f"{path}: tar cannot be read from ")


def big_parquet(tmp_path) -> str:
    """12 rows in 6 row groups of 2, about 400 compressed bytes of image and id each (and 100
    of a caption the job does not read); row 3 is a null cell."""
    images = PNG + PNG[:2]
    images[3] = None
    return write_parquet(tmp_path / "big.parquet", images, [f"id-{i:02d}" for i in range(12)],
                         row_group_size=2)


def test_a_big_parquet_file_splits_into_runs_of_row_groups_read_as_the_whole_file(tmp_path):
    path = big_parquet(tmp_path)
    columns = formats.Columns(id="id")
    # Two groups of image and id columns fit 850 bytes; with the caption they would not.
    splits = formats.parquet_splits(path, columns, target_bytes=850)
    assert splits == [formats.ParquetSplit(path, 0, 2, 0, 4),
                      formats.ParquetSplit(path, 2, 2, 4, 4),
                      formats.ParquetSplit(path, 4, 2, 8, 4)]
    whole = samples(path, "parquet", columns)
    assert len(whole) == 12 and whole[3].problem == f"{path} row 3: a null image cell"
    for target in (850, 1):
        split_read = [s for split in formats.parquet_splits(path, columns, target)
                      for s in formats.split_samples(split, columns)]
        assert split_read == whole
    assert len(formats.parquet_splits(path, columns, 1)) == 6  # at least one group per split


def test_a_small_or_damaged_parquet_file_is_one_split_of_the_whole_file(tmp_path):
    path = big_parquet(tmp_path)
    assert formats.parquet_splits(path, formats.Columns(id="id")) == [formats.ParquetSplit(path)]
    assert formats.parquet_splits(path, formats.Columns("no_such")) == [formats.ParquetSplit(path)]
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    assert formats.parquet_splits(path, target_bytes=1) == [formats.ParquetSplit(path)]
    with pytest.raises(formats.DamagedInput, match="its footer cannot be read") as error:
        list(formats.split_samples(formats.ParquetSplit(path)))
    assert (error.value.index, error.value.end) == (0, None)


def test_a_damaged_row_group_costs_only_the_rest_of_its_split(tmp_path):
    path = big_parquet(tmp_path)
    columns = formats.Columns(id="id")
    splits = formats.parquet_splits(path, columns, target_bytes=850)
    corrupt_row_group(path, 3)  # rows 6..7, the second half of split 1 (rows 4..7)
    got = []
    with pytest.raises(formats.DamagedInput) as error:
        for sample in formats.split_samples(splits[1], columns):
            got.append(sample)
    assert [s.image_id for s in got] == [b"id-04", b"id-05"]
    assert (error.value.index, error.value.end) == (6, 8)
    assert str(error.value).startswith(f"{path}: row group 3 (rows 6..7) cannot be read at row 6")
    assert [s.index for split in (splits[0], splits[2])
            for s in formats.split_samples(split, columns)] == [0, 1, 2, 3, 8, 9, 10, 11]
