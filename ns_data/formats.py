"""Corpora as people keep them: Parquet tables of images, and WebDataset tar shards.

Both passes of `label_and_balance` read these through `iter_samples` (`split_samples` for a part
of a Parquet file), which yields every sample of one input file in file order with its index, so
the predictions table can name an image by (input file, index) as it does a TFRecord: the teacher
pass streams a whole tar or a split of a Parquet file, the writing pass (`read_wanted`) reads
again only what it needs — the Parquet row groups that hold wanted rows (split as the teacher
pass splits the file), or the tar streamed up to the last wanted sample.

Parquet: one image per row, in `Columns.image` (binary, or a struct with a `bytes` field as
Hugging Face datasets store images); the id in `Columns.id` (string or binary as bytes, an
integer as its decimal string), or a content hash of the bytes without one. Only those columns
are read, one row group at a time, never the whole file. A big file is cut into `ParquetSplit`s,
runs of consecutive row groups planned from its footer alone (`parquet_splits`), so several
workers read it at once; a row keeps its index in the whole file whichever split reads it.

WebDataset: a tar whose members `key.jpg` (`jpeg`, `png`, `webp`, `gif`, `bmp`) are the images;
consecutive members sharing a key (the member path up to the first dot of its base name) are one
sample, whose id is the key. Other members (`.json`, `.txt`, `.cls`, ...) are skipped unread.
A key met again after other keys would be a second sample with the same id: every such sample
after the first is a problem sample ("duplicate key K in FILE, first at member N (sample S)";
members are numbered from 0 in tar order, as `tar tf` lists them), its images unread. Keys are
not compared across tars, as ids are not across TFRecord files: two tars holding one key give
two images with one id. The tar is streamed (`tarfile` mode `r|*`, compressed or not), never
held in memory; only its keys are, to find duplicates.
"""
from __future__ import annotations

import bisect
import dataclasses
import posixpath
import tarfile
import zlib
from collections.abc import Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from ns_data import globs, schema
from ns_data.tfrecord import CorruptRecordError

PARQUET = "parquet"
WEBDATASET = "webdataset"
FORMATS = (PARQUET, WEBDATASET)
DEFAULT_IMAGE_COLUMN = "image"
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp"})
# Rows per Arrow batch within a row group: bounds the image bytes held at once.
_BATCH_ROWS = 256
# Compressed bytes of the image and id columns one reader reads of a big Parquet file: enough
# that a split's start-up (opening the file, reading its footer) is noise, small enough that a
# file of a few GB spreads over dozens of workers.
DEFAULT_SPLIT_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where a Parquet input keeps its images and ids.

    Attributes:
      image: the image column: binary, or a struct with a `bytes` field.
      id: the id column (string, binary or integer); "" for a content hash of the bytes.
    """

    image: str = DEFAULT_IMAGE_COLUMN
    id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One input sample as read.

    Attributes:
      index: its position in the file (Parquet row, tar sample).
      image_id: its id.
      encoded: the image bytes; b"" when `problem` is set.
      size: bytes read for it (progress).
      problem: why it is not an image (a `parse` failure), else None.
    """

    index: int
    image_id: bytes
    encoded: bytes
    size: int
    problem: str | None = None


@dataclasses.dataclass(frozen=True)
class ParquetSplit:
    """Consecutive row groups of one Parquet file, read by one DoFn call: a reader's share of a
    big file.

    Attributes:
      path: the file.
      first_group: its first row group.
      num_groups: how many row groups; None for the whole file, read exactly as an unsplit file.
      first_row: the index in the file of its first row.
      num_rows: how many rows; None for the whole file.
    """

    path: str
    first_group: int = 0
    num_groups: int | None = None
    first_row: int = 0
    num_rows: int | None = None

    @property
    def whole_file(self) -> bool:
        return self.num_groups is None


class DamagedInput(CorruptRecordError):
    """A Parquet footer or row group, or a part of a tar, that cannot be read: the samples from
    `index` on are lost, those before it are read.

    `end` is the first sample after the lost ones when a split of the file lost only its own
    rest (other splits read the rest of the file), None when the rest of the file is lost.
    """

    def __init__(self, path: str, index: int, problem: str, end: int | None = None):
        ValueError.__init__(self, f"{path}: {problem}")
        self.path = path
        self.index = index
        self.offset = None
        self.problem = problem
        self.end = end

    def __reduce__(self):
        return DamagedInput, (self.path, self.index, self.problem, self.end)


def table_columns(metadata) -> Columns:
    """The `Columns` a predictions table's `TableMetadata` records."""
    return Columns(metadata.image_column or DEFAULT_IMAGE_COLUMN, metadata.id_column)


def iter_samples(path: str, input_format: str, columns: Columns = Columns()) -> Iterator[Sample]:
    """The samples of one Parquet or WebDataset file, in file order.

    Raises:
      DamagedInput: where the file stops being readable (`index`: the first sample lost).
    """
    if input_format == PARQUET:
        return split_samples(ParquetSplit(path), columns)
    if input_format == WEBDATASET:
        return _webdataset_samples(path)
    raise ValueError(f"not a sample format: {input_format!r} (one of {FORMATS})")


def count_samples(path: str, input_format: str, columns: Columns = Columns()) -> int:
    """The samples of one Parquet or WebDataset file a reader finds now: a Parquet file's rows
    (its footer's count, no column read), a tar's samples up to where it stops being readable;
    0 for a file that cannot be opened as one."""
    if input_format == PARQUET:
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return _ParquetFile(path, f, columns).starts[-1]
        except DamagedInput:
            return 0
    count = 0
    try:
        for _ in iter_samples(path, input_format, columns):
            count += 1
    except DamagedInput:
        pass
    return count


def parquet_splits(path: str, columns: Columns = Columns(),
                   target_bytes: int = DEFAULT_SPLIT_BYTES) -> list[ParquetSplit]:
    """The splits one Parquet file is read in: consecutive row groups packed up to about
    `target_bytes` of compressed image and id column bytes (at least one group per split),
    planned from the footer alone.

    A file of one split, or whose footer or columns cannot be read, is `[ParquetSplit(path)]`:
    it is read, and reported damaged, as a whole, exactly as without splitting.
    """
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be >= 1, got {target_bytes}")
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            parquet = _ParquetFile(path, f, columns)
    except DamagedInput:
        return [ParquetSplit(path)]  # the reader fails the same way, with one dead letter
    sizes = parquet.group_bytes()
    bounds, size = [0], 0
    for group, group_size in enumerate(sizes):
        if group > bounds[-1] and size + group_size > target_bytes:
            bounds.append(group)
            size = 0
        size += group_size
    bounds.append(len(sizes))
    if len(bounds) == 2:  # [0, n], or [0, 0] for a file of no row groups: one split
        return [ParquetSplit(path)]
    starts = parquet.starts
    return [ParquetSplit(path, first, end - first, starts[first], starts[end] - starts[first])
            for first, end in zip(bounds, bounds[1:])]


def split_samples(split: ParquetSplit, columns: Columns = Columns()) -> Iterator[Sample]:
    """The samples of one split of a Parquet file, in file order, indexed in the whole file.

    Raises:
      DamagedInput: where the split stops being readable; for a split of part of a file, `end`
        says where its lost rows end (the file's other splits are read on their own).
    """
    end = None if split.whole_file else split.first_row + split.num_rows
    with FileSystems.open(split.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        try:
            parquet = _ParquetFile(split.path, f, columns)
        except DamagedInput as e:  # changed since it was split: every split loses its rows
            raise DamagedInput(split.path, split.first_row, e.problem, end) from e
        groups = (range(len(parquet.starts) - 1) if split.whole_file
                  else range(split.first_group, split.first_group + split.num_groups))
        for group in groups:
            try:
                yield from parquet.samples(group)
            except DamagedInput as e:
                raise DamagedInput(e.path, e.index, e.problem, end) from e


def read_wanted(source: str, input_format: str, columns: Columns, wanted: Mapping[int, object],
                table_path: str) -> Iterator[tuple[int, tuple[bytes, bytes]]]:
    """(index, (image id, encoded bytes)) of the `wanted` samples of one file, in file order
    (b"" bytes for a sample that is not an image): the writing pass's read.

    Raises:
      ValueError: when the file has fewer samples than the predictions table names.
    """
    last, found = max(wanted), 0
    if input_format == PARQUET:
        samples = _parquet_rows_at(source, columns, sorted(wanted))
    else:
        samples = iter_samples(source, input_format, columns)
    for sample in samples:
        if sample.index in wanted:
            found += 1
            yield sample.index, (sample.image_id, sample.encoded)
        if sample.index >= last:
            break
    if found < len(wanted):
        raise ValueError(f"{source} has fewer records than the predictions table {table_path} "
                         "names: the input changed since the table was written")


def check_input(pattern: str, input_format: str, columns: Columns) -> None:
    """Refuses, before any work, Parquet columns the first readable input file does not have or
    cannot serve (`--image_column=img: no such column in x.parquet (columns: ...)`)."""
    if input_format != PARQUET:
        return
    for path in (m.path for m in globs.match(pattern)):
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                arrow_schema = pq.read_schema(f)
        except (pa.ArrowException, ValueError, OSError):
            continue  # damaged: the job reports it as a dead letter
        _resolve(arrow_schema, columns, path)
        return


def _resolve(arrow_schema: pa.Schema, columns: Columns, path: str) -> tuple[list[str], bool]:
    """The Parquet column paths to read, and whether the image column is a struct."""
    def field(flag: str, name: str) -> pa.Field:
        if name not in arrow_schema.names:
            raise ValueError(f"{flag}={name}: no such column in {path} "
                             f"(columns: {', '.join(arrow_schema.names)})")
        return arrow_schema.field(name)

    image = field("--image_column", columns.image)
    is_struct = pa.types.is_struct(image.type)
    if is_struct:
        if image.type.get_field_index("bytes") < 0 or not _is_binary(
                image.type.field("bytes").type):
            raise ValueError(f"--image_column={columns.image}: struct {image.type} in {path} has "
                             "no binary 'bytes' field")
    elif not _is_binary(image.type):
        raise ValueError(f"--image_column={columns.image}: type {image.type} in {path} is not "
                         "binary or a struct with a 'bytes' field")
    read = [f"{columns.image}.bytes" if is_struct else columns.image]
    if columns.id:
        id_type = field("--id_column", columns.id).type
        if not (_is_binary(id_type) or pa.types.is_string(id_type)
                or pa.types.is_large_string(id_type) or pa.types.is_integer(id_type)):
            raise ValueError(f"--id_column={columns.id}: type {id_type} in {path} is not a "
                             "string, binary or integer column")
        read.append(columns.id)
    return read, is_struct


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type))


class _ParquetFile:
    """One open Parquet input: its row groups, read into samples."""

    def __init__(self, path: str, f, columns: Columns):
        self.path = path
        try:
            self._file = pq.ParquetFile(f)
        except (pa.ArrowException, ValueError, OSError) as e:
            raise DamagedInput(path, 0, f"its footer cannot be read ({type(e).__name__}: {e})"
                               ) from e
        try:
            self._read, self._is_struct = _resolve(self._file.schema_arrow, columns, path)
        except ValueError as e:
            raise DamagedInput(path, 0, str(e)) from e
        self.starts = [0]
        for group in range(self._file.num_row_groups):
            self.starts.append(self.starts[-1] + self._file.metadata.row_group(group).num_rows)

    def group_bytes(self) -> list[int]:
        """Each row group's compressed bytes of the columns read."""
        sizes = []
        for group in range(self._file.num_row_groups):
            row_group = self._file.metadata.row_group(group)
            sizes.append(sum(row_group.column(c).total_compressed_size
                             for c in range(row_group.num_columns)
                             if row_group.column(c).path_in_schema in self._read))
        return sizes

    def samples(self, group: int) -> Iterator[Sample]:
        index = self.starts[group]
        batches = self._file.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group],
                                          columns=self._read, use_threads=False)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, ValueError, OSError) as e:
                raise DamagedInput(
                    self.path, index, f"row group {group} (rows {self.starts[group]}.."
                    f"{self.starts[group + 1] - 1}) cannot be read at row {index} "
                    f"({type(e).__name__}: {e})") from e
            if batch is None:
                return
            for image, image_id in zip(self._images(batch.column(0)), self._ids(batch)):
                yield self._sample(index, image, image_id)
                index += 1

    def _images(self, column: pa.Array) -> list[bytes | None]:
        if self._is_struct:
            present = column.is_valid().to_pylist()
            values = column.field("bytes").to_pylist()
            return [v if p else None for v, p in zip(values, present)]
        return column.to_pylist()

    def _ids(self, batch: pa.RecordBatch) -> list:
        return batch.column(1).to_pylist() if len(self._read) > 1 else [None] * batch.num_rows

    def _sample(self, index: int, image: bytes | None, image_id) -> Sample:
        if isinstance(image_id, int):
            image_id = str(image_id).encode()
        elif isinstance(image_id, str):
            image_id = image_id.encode()
        if not image:
            return Sample(index, image_id or b"%s#%d" % (self.path.encode(), index), b"", 0,
                          f"{self.path} row {index}: {'an empty' if image == b'' else 'a null'} "
                          "image cell")
        return Sample(index, image_id or schema.content_id(image), image, len(image))


def _parquet_rows_at(path: str, columns: Columns, indices: list[int]) -> Iterator[Sample]:
    """The samples of the row groups holding `indices`, in file order; no other row group is
    read."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        parquet = _ParquetFile(path, f, columns)
        groups = {bisect.bisect_right(parquet.starts, i) - 1 for i in indices}
        for group in sorted(g for g in groups if g < len(parquet.starts) - 1):
            yield from parquet.samples(group)


def sample_key(name: str) -> tuple[str, str]:
    """A tar member's (key, extension): WebDataset splits at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, dot, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower() if dot else ""


def _webdataset_samples(path: str) -> Iterator[Sample]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        index, key, images, names, size = 0, None, [], [], 0
        # key -> (its sample, its first member): a key met again after other keys is a second
        # sample with the same id; it is a problem sample, its images unread.
        seen: dict[str, tuple[int, int]] = {}
        first = None
        try:
            tar = tarfile.open(fileobj=f, mode="r|*")
            for member_index, member in enumerate(tar):
                if not member.isfile():
                    continue
                member_key, extension = sample_key(member.name)
                if member_key != key:
                    if key is not None:
                        yield _tar_sample(path, index, key, images, names, size, first)
                        index += 1
                    first = seen.setdefault(member_key, (index, member_index))
                    key, images, names, size = member_key, [], [], 0
                names.append(member.name)
                size += member.size + tarfile.BLOCKSIZE
                if extension in IMAGE_EXTENSIONS and first[0] == index:
                    images.append(tar.extractfile(member).read())
            # tarfile ends quietly at a header cut short; a whole tar ends with a zero block.
            if tar.fileobj.tell() - tar.offset < tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"truncated at byte {tar.fileobj.tell()}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            lost = f"sample {index} ({key})" if key is not None else "its first sample"
            raise DamagedInput(path, index, f"tar cannot be read from {lost} on "
                               f"({type(e).__name__}: {e})") from e
        if key is not None:
            yield _tar_sample(path, index, key, images, names, size, first)


def _tar_sample(path: str, index: int, key: str, images: list[bytes], names: list[str],
                size: int, first: tuple[int, int]) -> Sample:
    """Sample `index` of members `names` with key `key`, whose first sample and member are
    `first`: another sample's when the key is a duplicate."""
    image_id = key.encode()
    if first[0] != index:
        return Sample(index, image_id, b"", size,
                      f"duplicate key {key} in {path}, first at member {first[1]} (sample "
                      f"{first[0]}); this is sample {index} (members: {', '.join(names)})")
    if len(images) != 1:
        problem = ("no image member" if not images else f"{len(images)} image members "
                   "(one image per sample)")
        return Sample(index, image_id, b"", size,
                      f"{path} sample {index} ({key}) has {problem} (members: {', '.join(names)})")
    if not images[0]:
        return Sample(index, image_id, b"", size, f"{path} sample {index} ({key}): an empty image")
    return Sample(index, image_id, images[0], size)
