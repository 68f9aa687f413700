"""The predictions table: what the teacher said about every input record, as Parquet files.

The teacher pass of `label_and_balance` writes one Parquet file per input file (TFRecord,
Parquet or tar; per bucket of a few thousand files for `--input_format=images`), named
`predictions-<hash>.parquet` after a hash of its input, with one row per input record, sorted by
(source, index):

  id             binary         the image id (`image/id`, else a content hash; a file's path)
  source         string         the input file the record is in
  index          int64          the record's position in `source` (a Parquet row, a tar sample;
                                0 for an image file)
  label          int32          the teacher's argmax (null when the record failed)
  confidence     float32        its probability (null when the record failed)
  topk_classes   list<int32>    the `topk` most probable classes, most probable first (ties:
                                lower class first)
  topk_probs     list<float32>  their probabilities, not renormalised
  error_stage    string         null, or where the record failed: parse, decode, inference,
                                invalid_output
  error_message  string         why it failed
  image_hash     uint64         `content_hash` of the image bytes the teacher was given (null
                                when the record had none: parse failures, damaged files)

The run's settings (`TableMetadata`: teacher, class count, classes stored per row, input
pattern and format) are in every file's key-value metadata under `ns_data.predictions`, and
what each input file held when the teacher read it (`InputFile`: records and bytes; not for
`--input_format=images`, whose files hold one image each) under `ns_data.inputs`. The writing
pass (of `label_and_balance` and of `rebalance`, which may run long after) checks both against
the input before it writes: a file whose size and record count changed is refused, and so is a
selected image whose bytes no longer have its row's hash. Tables of format version 1, written
before these checks, have neither; they are read as they are, unchecked. A row
holds no image bytes, so selection (`select.py`) reads only these small columns, and the writing
pass (`write.py`) pairs each table file with its own input file(s) — no shuffle needed to bring
an image and its prediction together. pandas, DuckDB or BigQuery open the files as they are:
`pd.read_parquet("out/predictions")`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from ns_data.records import STAGE_FILE, STAGE_OUTPUT, Prediction

PREDICTIONS_PREFIX = "predictions"
METADATA_KEY = b"ns_data.predictions"
INPUTS_KEY = b"ns_data.inputs"
# 2: the image_hash column and the input files' records and sizes (INPUTS_KEY).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

ID = "id"
SOURCE = "source"
INDEX = "index"
LABEL = "label"
CONFIDENCE = "confidence"
TOPK_CLASSES = "topk_classes"
TOPK_PROBS = "topk_probs"
ERROR_STAGE = "error_stage"
ERROR_MESSAGE = "error_message"
IMAGE_HASH = "image_hash"

SCHEMA = pa.schema([
    (ID, pa.binary()),
    (SOURCE, pa.string()),
    (INDEX, pa.int64()),
    (LABEL, pa.int32()),
    (CONFIDENCE, pa.float32()),
    (TOPK_CLASSES, pa.list_(pa.int32())),
    (TOPK_PROBS, pa.list_(pa.float32())),
    (ERROR_STAGE, pa.string()),
    (ERROR_MESSAGE, pa.string()),
    (IMAGE_HASH, pa.uint64()),
])
# Encodings measured on 100k rows of 1,000-class top-10 predictions: dictionary codes for the
# low-cardinality integer columns, byte-stream-split for floats (their exponent bytes compress),
# deltas for the sorted record index; zstd on top. ~50 bytes a row without the id, ~58 with
# the image hash (8 random bytes, incompressible).
_DICTIONARY = [SOURCE, LABEL, f"{TOPK_CLASSES}.list.element", ERROR_STAGE]
_ENCODINGS = {INDEX: "DELTA_BINARY_PACKED", CONFIDENCE: "BYTE_STREAM_SPLIT",
              f"{TOPK_PROBS}.list.element": "BYTE_STREAM_SPLIT"}


@dataclasses.dataclass(frozen=True)
class TableMetadata:
    """The settings a predictions table was made with; every file carries them.

    Attributes:
      input: the input pattern the teacher pass read.
      input_format: "tfrecord", "images", "parquet" or "webdataset".
      num_classes: the teacher's class count.
      topk: classes stored per row (`num_classes`: the whole distribution).
      teacher: the teacher's SavedModel path.
      teacher_outputs: "logits" or "probabilities".
      temperature: the softmax temperature baked into the probabilities.
      image_shape: the teacher's input [H, W, C].
      version: the table format version.
      image_column: a Parquet input's image column ("" for other formats).
      id_column: a Parquet input's id column ("": ids are content hashes, or not Parquet).
      class_names: the teacher's class names, in output order (from its ns_teacher.json; empty
        when it names none), carried to every run's stats.json.
    """

    input: str
    input_format: str
    num_classes: int
    topk: int
    teacher: str = ""
    teacher_outputs: str = "logits"
    temperature: float = 1.0
    image_shape: tuple[int, ...] = ()
    version: int = FORMAT_VERSION
    image_column: str = ""
    id_column: str = ""
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if not 1 <= self.topk <= self.num_classes:
            raise ValueError(f"topk must be in 1..num_classes={self.num_classes}, got {self.topk}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} "
                             "classes")

    @property
    def dense(self) -> bool:
        """Whether rows hold every class's probability."""
        return self.topk == self.num_classes

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def checks_input(self) -> bool:
        """Whether the table records what its input held (format 2 on), so a writing pass can
        tell a changed input from the one scored."""
        return self.version >= 2

    @classmethod
    def from_json(cls, text: str | bytes) -> TableMetadata:
        fields = json.loads(text)
        if fields.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"predictions table format version {fields.get('version')} is not "
                             f"one of the supported {READABLE_VERSIONS}")
        fields["image_shape"] = tuple(fields.get("image_shape", ()))
        fields["class_names"] = tuple(fields.get("class_names", ()))
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class InputFile:
    """An input file as the teacher pass read it.

    Attributes:
      path: the file (the table's `source`).
      records: its records read: the table's rows of it, less a `damaged_file` row.
      size: its size in bytes when the run listed its input.
    """

    path: str
    records: int
    size: int

    @staticmethod
    def to_json(files: Sequence[InputFile]) -> str:
        return json.dumps([dataclasses.asdict(f) for f in sorted(files, key=lambda f: f.path)],
                          sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> list[InputFile]:
        return [InputFile(**fields) for fields in json.loads(text)]


def content_hash(data: bytes) -> int:
    """A 64-bit hash of image bytes (`image_hash`): tells a replaced image from the scored one.

    blake2b, 8-byte digest: 235 us for a 90 KB JPEG, ~4% of its 6.4 ms Pillow decode to 224x224
    (one loaded core; SHA-256 with the CPU's SHA extensions took 87 us, but Dataflow's older
    Intel workers lack them, where blake2b is the faster one), 2.6 us for a 400-byte PNG.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def input_files(table: pa.Table) -> list[InputFile] | None:
    """The `InputFile`s a table file's metadata records; None when it records none (format 1,
    or image files)."""
    text = (table.schema.metadata or {}).get(INPUTS_KEY)
    return None if text is None else InputFile.from_json(text)


def table_pattern(table_dir: str) -> str:
    return posixpath.join(table_dir, f"{PREDICTIONS_PREFIX}-*.parquet")


def table_file(table_dir: str, group: str) -> str:
    """The table file holding the predictions of input group `group` (a file, or a bucket)."""
    digest = hashlib.blake2b(group.encode(), digest_size=8).hexdigest()
    return posixpath.join(table_dir, f"{PREDICTIONS_PREFIX}-{digest}.parquet")


def image_bucket(path: str, buckets: int) -> str:
    """The table group of one image file: a stable hash bucket of its path."""
    digest = hashlib.blake2b(path.encode(), digest_size=8).digest()
    return f"images-{int.from_bytes(digest, 'big') % buckets:05d}-of-{buckets:05d}"


def topk(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes (ties: lower class first) and their probabilities, of one
    row [C] or of each row of [N, C].

    The same order as `schema.topk_target`, so a soft_topk record made from a table row equals
    one made from the full distribution.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    classes = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
    return classes.astype(np.int32), np.take_along_axis(probabilities, classes, axis=-1)


def to_table(predictions: Sequence[Prediction]) -> pa.Table:
    """Rows → an Arrow table of `SCHEMA`, sorted by (source, index)."""
    rows = sorted(predictions, key=lambda p: (p.source, p.index))
    ok = [p.ok for p in rows]
    sizes = np.array([len(p.classes) if p.ok else 0 for p in rows], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    mask = pa.array([not o for o in ok])
    classes = [p.classes for p in rows if p.ok]
    probs = [p.probs for p in rows if p.ok]
    flat_classes = np.concatenate(classes).astype(np.int32) if classes else np.zeros(0, np.int32)
    flat_probs = np.concatenate(probs).astype(np.float32) if probs else np.zeros(0, np.float32)
    return pa.table([
        pa.array([p.image_id for p in rows], pa.binary()),
        pa.array([p.source for p in rows], pa.string()),
        pa.array([p.index for p in rows], pa.int64()),
        pa.array([int(p.classes[0]) if p.ok else None for p in rows], pa.int32()),
        pa.array([float(p.probs[0]) if p.ok else None for p in rows], pa.float32()),
        pa.ListArray.from_arrays(offsets, pa.array(flat_classes), mask=mask),
        pa.ListArray.from_arrays(offsets, pa.array(flat_probs), mask=mask),
        pa.array([p.stage for p in rows], pa.string()),
        pa.array([p.message for p in rows], pa.string()),
        pa.array([p.image_hash for p in rows], pa.uint64()),
    ], schema=SCHEMA)


def scored_table(image_ids: Sequence[bytes], sources: Sequence[str], indexes: Sequence[int],
                 classes: np.ndarray, probs: np.ndarray,
                 hashes: Sequence[int | None] | None = None) -> pa.Table:
    """Scored rows in `SCHEMA` (not sorted), from columns: the top classes [n, k] of each image
    and their probabilities [n, k], most probable first, and the `content_hash` of each image
    (None: not known). The teacher pass's fast path: no Python object per image."""
    n, k = classes.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    nulls = pa.nulls(n, pa.string())
    return pa.table([
        pa.array(image_ids, pa.binary()),
        pa.array(sources, pa.string()),
        pa.array(indexes, pa.int64()),
        pa.array(classes[:, 0].astype(np.int32)),
        pa.array(probs[:, 0].astype(np.float32)),
        pa.ListArray.from_arrays(offsets, pa.array(classes.reshape(-1).astype(np.int32))),
        pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1).astype(np.float32))),
        nulls,
        nulls,
        pa.array(hashes, pa.uint64()) if hashes is not None else pa.nulls(n, pa.uint64()),
    ], schema=SCHEMA)


def write_table_file(path: str, predictions: Sequence[Prediction], metadata: TableMetadata,
                     inputs: Sequence[InputFile] | None = None) -> int:
    """Writes one table file (temp name, then renamed); returns its size in bytes."""
    return write_arrow_table(path, to_table(predictions), metadata, inputs)


def write_arrow_table(path: str, table: pa.Table, metadata: TableMetadata,
                      inputs: Sequence[InputFile] | None = None) -> int:
    """Writes rows already in `SCHEMA` (sorted by source, index) as one table file, with what
    its input files held (`inputs`; None: not recorded)."""
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"rows must have the predictions schema, got {table.schema}")
    table = table.replace_schema_metadata({
        METADATA_KEY: metadata.to_json(),
        **({} if inputs is None else {INPUTS_KEY: InputFile.to_json(inputs)})})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=_DICTIONARY,
                   column_encoding=_ENCODINGS, write_statistics=[LABEL, CONFIDENCE])
    data = buffer.getvalue()
    temp = path + ".incomplete"
    with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])
    return len(data)


def read_table_file(path: str, columns: Iterable[str] | None = None) -> pa.Table:
    """Reads the given columns of one table file (all it has when None: a format 1 file has no
    `image_hash`); only their bytes are read.

    A row that says it scored but is not a prediction of the file's teacher — a label outside
    0..num_classes-1, a confidence that is NaN, infinite or outside [0, 1] — comes back as a
    failed row (stage `invalid_output`, label, confidence and top classes null, the reason in
    the message), whatever columns are asked for, so every reader counts, selects and writes it
    the same way: one dead letter, never a selected image or a crash. Our own teacher pass
    writes such outputs as failures already; this guards tables made or edited elsewhere.
    """
    wanted = list(columns) if columns else None
    read = None if wanted is None else wanted + [c for c in (LABEL, CONFIDENCE)
                                                 if c not in wanted]
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        try:
            rows = pq.read_table(f, columns=read)
        except (pa.ArrowException, ValueError) as e:
            raise ValueError(f"{path} is not a predictions table file: {e}") from e
    if wanted is None:
        wanted = rows.column_names
    invalid, messages = _invalid_rows(rows, path)
    if TOPK_PROBS in wanted and TOPK_CLASSES in wanted:
        _check_topk(rows, invalid, path)
    rows = rows.select(wanted)
    return _as_failed(rows, invalid, messages) if len(messages) else rows


def _invalid_rows(rows: pa.Table, path: str) -> tuple[np.ndarray, list[str]]:
    """The rows that scored with a label or confidence no teacher gives: a mask, and why each
    one is invalid (in row order)."""
    text = (rows.schema.metadata or {}).get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path} has no {METADATA_KEY.decode()} metadata; was it written by "
                         "beam_jobs.label_and_balance?")
    num_classes = TableMetadata.from_json(text).num_classes
    labels = rows.column(LABEL)
    scored = labels.is_valid().to_numpy(zero_copy_only=False)
    label = labels.fill_null(0).to_numpy().astype(np.int64)
    confidence = rows.column(CONFIDENCE).to_numpy(zero_copy_only=False).astype(np.float32)
    with np.errstate(invalid="ignore"):
        good = (label >= 0) & (label < num_classes) & (confidence >= 0) & (confidence <= 1)
    invalid = scored & ~good
    messages = [f"predictions table {path} row {i}: label {label[i]}, confidence "
                f"{confidence[i]} is not a prediction of a {num_classes}-class teacher"
                for i in np.flatnonzero(invalid)]
    return invalid, messages


def _check_topk(rows: pa.Table, invalid: np.ndarray, path: str) -> None:
    """Refuses a file whose top classes of a valid row disagree with its label and confidence
    (the selection trusted those) or are not probabilities: the file is corrupt or was not
    made by a teacher pass."""
    n = rows.num_rows
    probs = rows.column(TOPK_PROBS).combine_chunks()
    offsets = probs.offsets.to_numpy()
    values = probs.values.to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(n), np.diff(offsets))
    with np.errstate(invalid="ignore"):
        bad = np.zeros(n, dtype=bool)
        bad[owner[~((values >= 0) & (values <= 1))]] = True
    first = offsets[:-1]
    empty = np.diff(offsets) == 0
    bad |= empty
    classes = rows.column(TOPK_CLASSES).combine_chunks().values.to_numpy()
    at = np.where(empty, 0, first)[~empty]
    labels = rows.column(LABEL).fill_null(-1).to_numpy()[~empty]
    confidence = rows.column(CONFIDENCE).fill_null(np.nan).to_numpy()[~empty]
    bad[~empty] |= (classes[at] != labels) | (values[at] != confidence)
    bad &= rows.column(LABEL).is_valid().to_numpy(zero_copy_only=False) & ~invalid
    if bad.any():
        raise ValueError(f"predictions table {path} row {int(np.flatnonzero(bad)[0])}: its top "
                         "classes and probabilities disagree with its label and confidence, or "
                         f"are not probabilities ({int(bad.sum())} such rows); the file is "
                         "corrupt or was not written by beam_jobs.label_and_balance")


def _as_failed(rows: pa.Table, invalid: np.ndarray, messages: list[str]) -> pa.Table:
    """`rows` with the `invalid` ones turned into `invalid_output` failures."""
    mask = pa.array(invalid)
    columns = []
    for name, column in zip(rows.column_names, rows.columns):
        if name in (LABEL, CONFIDENCE, TOPK_CLASSES, TOPK_PROBS):
            column = pc.if_else(mask, pa.nulls(len(rows), column.type), column)
        elif name == ERROR_STAGE:
            column = pc.if_else(mask, STAGE_OUTPUT, column)
        elif name == ERROR_MESSAGE:
            full = np.array(column.to_pylist(), dtype=object)
            full[invalid] = messages
            column = pa.array(full, pa.string())
        columns.append(column)
    return pa.table(columns, schema=rows.schema)


def read_metadata(path: str) -> TableMetadata:
    """The `TableMetadata` of one table file."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowException, ValueError) as e:
            raise ValueError(f"{path} is not a predictions table file: {e}") from e
    text = (schema.metadata or {}).get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path} has no {METADATA_KEY.decode()} metadata; was it written by "
                         "beam_jobs.label_and_balance?")
    return TableMetadata.from_json(text)


def check_metadata(rows: pa.Table, path: str, expected: TableMetadata) -> None:
    """Refuses a table file written with other settings than the table's first file."""
    text = (rows.schema.metadata or {}).get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path} has no {METADATA_KEY.decode()} metadata")
    actual = TableMetadata.from_json(text)
    if actual != expected:
        raise ValueError(f"{path} was written with other settings than the rest of the table "
                         f"({describe_difference(expected, actual)}); select from one run's table "
                         "at a time")


class _TablePieces(beam.DoFn):
    """Tables of predictions rows → (group, table of a bundle's rows of that group).

    Rows are shuffled to their table file as Arrow tables of up to about `_PIECE_ROWS` rows, not
    one element per image: the per-element cost of a shuffle is paid per piece.
    """

    def __init__(self, input_format: str, image_buckets: int):
        self._input_format = input_format
        self._image_buckets = image_buckets

    def start_bundle(self):
        self._pieces: dict[str, list[pa.Table]] = {}
        self._rows: dict[str, int] = {}

    def process(self, rows: pa.Table):
        for group, part in self._split(rows):
            self._pieces.setdefault(group, []).append(part)
            self._rows[group] = self._rows.get(group, 0) + part.num_rows
            if self._rows[group] >= _PIECE_ROWS:
                del self._rows[group]
                yield group, _one_piece(self._pieces.pop(group))

    def finish_bundle(self):
        for group, pieces in self._pieces.items():
            yield WindowedValue((group, _one_piece(pieces)), MIN_TIMESTAMP, [GlobalWindow()])
        self._pieces, self._rows = {}, {}

    def _split(self, rows: pa.Table):
        """(group, its rows) for each group in `rows` (most often one: a batch of one file)."""
        sources = rows.column(SOURCE)
        if self._input_format == "images":
            groups = np.array([image_bucket(s, self._image_buckets)
                               for s in sources.to_pylist()], dtype=object)
        elif pc.count_distinct(sources).as_py() == 1:
            yield sources[0].as_py(), rows
            return
        else:
            groups = np.array(sources.to_pylist(), dtype=object)
        for group in sorted(set(groups)):
            yield group, rows.filter(pa.array(groups == group))


_PIECE_ROWS = 65_536


def _one_piece(tables: list[pa.Table]) -> pa.Table:
    """Tables → one table of one chunk per column. Copying the rows once is cheap next to
    pickling a table of many small chunks (each one's buffers and metadata on their own): 4x
    faster for a table file's 25 batches of 256 rows, and a piece is pickled at least twice
    on its way to its table file."""
    return pa.concat_tables(tables).combine_chunks()


def inputs_of(rows: pa.Table, sizes: Mapping[str, int]) -> list[InputFile]:
    """The `InputFile` of each source of `rows` (one table file's) whose size is in `sizes`."""
    sources = rows.column(SOURCE).to_numpy(zero_copy_only=False)
    read = rows.column(ERROR_STAGE).to_numpy(zero_copy_only=False) != STAGE_FILE
    names, counts = np.unique(sources[read], return_counts=True)
    records = dict(zip(names.tolist(), counts.tolist()))
    return [InputFile(source, records.get(source, 0), sizes[source])
            for source in sorted(set(sources.tolist())) if source in sizes]


class _WriteTableFile(beam.DoFn):
    """(group, table pieces) → the table file's path, written (with its `InputFile`s when
    given the input's sizes)."""

    def __init__(self, table_dir: str, metadata: TableMetadata):
        self._table_dir = table_dir
        self._metadata = metadata
        self._bytes = beam.metrics.Metrics.counter("ns_data", "predictions_table_bytes")

    def setup(self):
        try:
            FileSystems.mkdirs(self._table_dir)
        except OSError:  # made meanwhile by another worker thread or process
            if not FileSystems.exists(self._table_dir):
                raise

    def process(self, element, sizes: Mapping[str, int] | None = None):
        group, pieces = element
        rows = pa.concat_tables(list(pieces)).sort_by([(SOURCE, "ascending"),
                                                       (INDEX, "ascending")])
        path = table_file(self._table_dir, group)
        inputs = None if sizes is None else inputs_of(rows, sizes)
        self._bytes.inc(write_arrow_table(path, rows, self._metadata, inputs))
        yield path


class WritePredictions(beam.PTransform):
    """Tables of predictions rows (`SCHEMA`, any order: `to_table`, `scored_table`), in one
    PCollection or several (a tuple, flattened after the rows are grouped into a few big pieces
    per input file, not before) → the predictions table; returns the PCollection of its file
    paths.

    Predictions are grouped by input file (by path bucket for image files) — a shuffle of small
    Arrow tables, no image bytes — and each group becomes one Parquet file. With `input_sizes`,
    (path, bytes) of every input file as listed before reading, each file records its inputs'
    `InputFile`s.
    """

    def __init__(self, table_dir: str, metadata: TableMetadata, image_buckets: int = 1,
                 input_sizes: beam.PCollection | None = None):
        super().__init__()
        if image_buckets < 1:
            raise ValueError(f"image_buckets must be >= 1, got {image_buckets}")
        self._table_dir = table_dir
        self._metadata = metadata
        self._image_buckets = image_buckets
        self._input_sizes = input_sizes

    def expand(self, predictions):
        tables = predictions if isinstance(predictions, tuple) else (predictions,)
        pieces = tuple(rows | f"ByInputFile{i or ''}" >> beam.ParDo(
            _TablePieces(self._metadata.input_format, self._image_buckets))
            for i, rows in enumerate(tables))
        return ((pieces | "AllPieces" >> beam.Flatten() if len(pieces) > 1 else pieces[0])
                | "GroupByInputFile" >> beam.GroupByKey()
                | "WriteTableFiles" >> beam.ParDo(
                    _WriteTableFile(self._table_dir, self._metadata),
                    *([] if self._input_sizes is None
                      else [beam.pvalue.AsDict(self._input_sizes)])))


def describe_difference(a: TableMetadata, b: TableMetadata) -> str:
    """The settings two tables differ in, e.g. `num_classes 10 vs 5`."""
    return ", ".join(f"{f.name} {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}"
                     for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name))

