"""The trainer's inputs, checked before the first training step.

Every file of --labeled, --eval and --unlabeled is read once with `ns_data.tfrecord.iter_records`
(framing and checksums). A damaged file (truncated, bit-flipped, not a TFRecord at all) costs
only its unreadable rest: it is logged and reported with its path, the damaged record and byte,
and training reads exactly the records before the damage (`data.InputSpec.files`).

The records of --labeled and --eval also go through the trainer's own parser (`data.parse`: the
schema's Example, `schema.dense_targets`, `decode_and_resize`), so a record training could not
read stops the run here, named by flag, file and index, instead of failing inside tf.data hours
later or, for eval data, after the last step with nothing exported.

The pseudo-labeled --unlabeled stream is label_and_balance's (or rebalance's) own output and
large: only the first `UNLABELED_CHECKED` records of each file go through the parser, enough to
refuse a file of the wrong kind (raw unlabeled images, dead letters, soft labels of another class
count), which is wrong from its first record. A glob that matches a directory is refused. Where
the glob is exactly the shards of a finished run, their record counts come from the run's
stats.json and only those first records are read: the job wrote the shards whole before its
_SUCCESS marker (temp files, then renames), and the marker's shard sizes, compared with a
listing, catch a shard truncated, replaced or appended to since
(`ns_data.completion.recorded_records`). What a size cannot show, a bit flipped in place, would
then stop training at that record (tf.data checks every CRC) instead of costing the file's rest.
Any other --unlabeled file (a subset of a run's shards, an unfinished run, a run that predates
the recorded sizes, a size or total that does not match) is read once and its framing checked,
as every --labeled and --eval file is.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import posixpath
import re
import time
from collections.abc import Iterator, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from ns_data import completion, schema
from ns_data.images import ImageSpec
from ns_data.lazy import tf
from ns_data.tfrecord import CorruptRecordError, iter_records
from ns_train import data
from ns_train.config import TrainConfig

logger = logging.getLogger("ns_train")

BAD_RECORDS_FILE = "bad_records.txt"
# Records parsed per call: large enough that a call costs little per record, small enough that
# a few files checked at once hold little memory with large images.
_BATCH = 256
_PARALLEL_FILES = 8
# Records parsed from the start of each --unlabeled file (all of them for --labeled and --eval).
UNLABELED_CHECKED = 16


@dataclasses.dataclass(frozen=True)
class DamagedFile:
    """The unreadable rest of one input file; its first `records_kept` records are used.

    Attributes:
      flag: the input it belongs to ("--labeled", "--eval" or "--unlabeled").
      path: the file.
      records_kept: records before the damage (= the index of the damaged record).
      offset: byte offset of the damaged record.
      problem: what is wrong there.
    """

    flag: str
    path: str
    records_kept: int
    offset: int
    problem: str


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A readable record the trainer cannot use."""

    flag: str
    path: str
    index: int
    image_id: str
    reason: str

    def describe(self) -> str:
        named = f" (id {self.image_id})" if self.image_id else ""
        return f"{self.path} record {self.index}{named}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class StreamScan:
    """One input as scanned.

    Attributes:
      flag: the flag that named it.
      files: (path, readable records) of every file it matches, sorted by path.
      damaged: the files that are not readable to their end.
      bad: the readable records that failed the record check (none when not checked).
      recorded: the directories whose files were counted from their run's stats.json, unread.
    """

    flag: str
    files: tuple[tuple[str, int], ...]
    damaged: tuple[DamagedFile, ...] = ()
    bad: tuple[BadRecord, ...] = ()
    recorded: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return sum(records for _, records in self.files)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The trainer's scanned inputs; `eval` and `unlabeled` are None when not given."""

    labeled: StreamScan
    eval: StreamScan | None
    unlabeled: StreamScan | None

    @property
    def damaged(self) -> list[DamagedFile]:
        return [d for s in (self.labeled, self.eval, self.unlabeled) if s for d in s.damaged]


class RecordParser:
    """`data.parse` compiled once, on serialized records → numpy (images, targets). Picklable,
    so a Beam DoFn can hold one (the compiled function is made on first use)."""

    def __init__(self, image: ImageSpec, num_classes: int):
        self.image = image
        self.num_classes = num_classes
        self._fn = None

    def __getstate__(self):
        return {"image": self.image, "num_classes": self.num_classes}

    def __setstate__(self, state):
        self.__init__(state["image"], state["num_classes"])

    def __call__(self, records: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Raises tf.errors.InvalidArgumentError when any record cannot be used."""
        if self._fn is None:
            self._fn = tf.function(
                lambda serialized: data.parse(serialized, self.image, self.num_classes),
                input_signature=[tf.TensorSpec([None], tf.string)])
        images, targets = self._fn(tf.constant(list(records), tf.string))
        return images.numpy(), targets.numpy()

    def problems(self, records: Sequence[bytes]) -> list[tuple[int, str]]:
        """(position, reason) of each record the trainer cannot use; [] when all can be used."""
        try:
            self(records)
        except tf.errors.InvalidArgumentError:  # the batch fails as a whole: find which records
            reasons = enumerate(map(self._problem, records))
            return [(position, reason) for position, reason in reasons if reason]
        return []

    def _problem(self, record: bytes) -> str:
        try:
            self([record])
        except tf.errors.InvalidArgumentError as e:
            return _reason(record, e)
        return ""


def _reason(record: bytes, error: tf.errors.InvalidArgumentError) -> str:
    """One line saying what is wrong, without TensorFlow's traceback and node names."""
    try:
        schema.parse_example(record)
    except DecodeError:
        return "not a tf.train.Example"
    lines = [line for line in error.message.splitlines() if line.strip() and not line.startswith(
        ("Graph execution error", "Detected at node", "  File ", "\t"))]
    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*|Name: <unknown>, ", "",
                    lines[0] if lines else error.message)
    asserted = re.search(r"assertion failed: \[(.*?)\.?\s*\]", reason)
    return (asserted.group(1) if asserted else reason).replace("\\'", "'")


def _image_id(record: bytes) -> str:
    try:
        ids = schema.parse_example(record).get(schema.IMAGE_ID) or [b""]
    except DecodeError:
        return ""
    return ids[0].decode("utf-8", "replace") if isinstance(ids[0], bytes) else str(ids[0])


def readable_records(path: str, count: int) -> Iterator[bytes]:
    """The first `count` records of `path`: its readable ones, as `scan_stream` counted them."""
    return itertools.islice(iter_records(path), count)


def _scan_file(flag: str, path: str, parser: RecordParser | None, checked: int | None,
               count_all: bool = True) -> tuple[int, DamagedFile | None, list[BadRecord]]:
    """(readable records, the damage that ends them, records `parser` refuses) of one file;
    without `count_all`, it stops reading after the `checked` records it checks."""
    count, damaged, bad, batch = 0, None, [], []  # batch: (index, record)

    def check():
        for position, reason in parser.problems([record for _, record in batch]):
            index, record = batch[position]
            bad.append(BadRecord(flag, path, index, _image_id(record), reason))
        batch.clear()

    try:
        for record in iter_records(path):
            if not count_all and count == checked:
                break
            if parser and (checked is None or count < checked):
                batch.append((count, record))
                if len(batch) == _BATCH:
                    check()
            count += 1
    except CorruptRecordError as e:
        damaged = DamagedFile(flag, path, e.index, e.offset, e.problem)
        logger.warning("%s: damaged file %s; %s", flag, e,
                       f"training uses its first {e.index} records, the rest of the file is lost"
                       if e.index else "nothing in it can be read, training leaves it out")
    if batch:
        check()
    return count, damaged, bad


def _recorded_counts(flag: str, paths: Sequence[str]) -> dict[str, dict[str, int]]:
    """{directory: {path: records}} of the directories whose finished run vouches for the
    files of `paths` in it (`completion.recorded_records`); the others are logged and left out."""
    by_directory: dict[str, list[str]] = {}
    for path in paths:
        by_directory.setdefault(posixpath.dirname(path), []).append(path)
    recorded = {}
    for directory, files in by_directory.items():
        try:
            recorded[directory] = completion.recorded_records(directory, files)
        except completion.UnrecordedShardsError as e:
            logger.info("%s: counting by reading, as %s", flag, e)
    return recorded


def scan_stream(flag: str, pattern: str, parser: RecordParser | None = None,
                checked: int | None = None, use_run_stats: bool = False) -> StreamScan:
    """Counts the readable records of every file matching `pattern`; checks them with `parser`
    (only the first `checked` of each file when given).

    With `use_run_stats`, files that are exactly the shards of a finished run are counted from
    its stats.json and only their first `checked` records read (module docstring); not when
    every record is to be checked.

    With `use_run_stats`, files that are exactly the shards of a finished run are counted from
    its stats.json and not read (module docstring); not with `parser`, which must read them.

    Raises:
      ValueError: naming `flag`, when the pattern matches no file, matches a directory, or no
        file has a readable record.
    """
    paths = sorted(tf.io.gfile.glob(pattern))
    if not paths:
        raise ValueError(f"{flag}={pattern} matches no files")
    directories = [path for path in paths if tf.io.gfile.isdir(path)]
    if directories:
        raise ValueError(f"{flag}={pattern} matches the directory {directories[0]}; give a glob "
                         "of TFRecord files only (e.g. OUTPUT_DIR/pseudo_labels-*)")
    started = time.monotonic()
    use_stats = use_run_stats and (parser is None or checked is not None)
    recorded = _recorded_counts(flag, paths) if use_stats else {}
    counts = {path: n for files in recorded.values() for path, n in files.items()}

    def scan_one(path: str) -> tuple[int, DamagedFile | None, list[BadRecord]]:
        if path not in counts:
            return _scan_file(flag, path, parser, checked)
        if parser is None:
            return counts[path], None, []
        _, damaged, bad = _scan_file(flag, path, parser, checked, count_all=False)
        return counts[path], damaged, bad

    with concurrent.futures.ThreadPoolExecutor(min(_PARALLEL_FILES, len(paths))) as pool:
        scanned = list(pool.map(scan_one, paths))
    scan = StreamScan(flag, tuple((path, count) for path, (count, _, _) in zip(paths, scanned)),
                      tuple(damaged for _, damaged, _ in scanned if damaged),
                      tuple(bad for _, _, bad_records in scanned for bad in bad_records),
                      tuple(sorted(recorded)))
    logger.info("%s: %d readable records (files: %d, damaged: %d)%s%s, %.1f s", flag, scan.count,
                len(paths), len(scan.damaged),
                "" if not parser else ", each checked" if checked is None else
                f", the first {checked} of each file checked",
                f", {len(counts)} files counted from the stats.json of "
                f"{', '.join(scan.recorded)}" if recorded else "", time.monotonic() - started)
    if not scan.count:
        raise ValueError(f"{flag}={pattern} has no readable record (files: {len(paths)}, "
                         f"damaged: {len(scan.damaged)}; the warnings above name them)")
    return scan


def scan_inputs(config: TrainConfig) -> Inputs:
    """Scans --labeled, --eval and (student) --unlabeled; checks every labeled and eval record
    and the first `UNLABELED_CHECKED` records of each unlabeled file.

    --unlabeled files that are exactly a finished run's shards are counted from its stats.json.

    Writes the records that fail the check to WORKDIR/bad_records.txt (flag, file, record, id,
    reason; tab-separated), or removes that file when none does.

    Raises:
      ValueError: when a stream has no readable record, or a labeled or eval record cannot be
        used, naming the flag, the file and the record.
    """
    parser = RecordParser(config.image, config.num_classes)
    inputs = Inputs(
        labeled=scan_stream("--labeled", config.labeled, parser),
        eval=scan_stream("--eval", config.eval, parser) if config.eval else None,
        unlabeled=(scan_stream("--unlabeled", config.unlabeled, parser, UNLABELED_CHECKED,
                               use_run_stats=True) if config.student else None))
    report = posixpath.join(config.workdir, BAD_RECORDS_FILE)
    checked = [s for s in (inputs.labeled, inputs.eval, inputs.unlabeled) if s]
    bad = [b for s in checked for b in s.bad]
    if not bad:
        if tf.io.gfile.exists(report):
            tf.io.gfile.remove(report)  # from an earlier run, whose records have been fixed
        return inputs
    with tf.io.gfile.GFile(report, "w") as f:
        f.write("flag\tfile\trecord\tid\treason\n" + "".join(
            f"{b.flag}\t{b.path}\t{b.index}\t{b.image_id}\t{b.reason}\n" for b in bad))
    per_flag = "; ".join(
        f"{s.flag}: {len(s.bad)} record{'s' if len(s.bad) > 1 else ''} the trainer cannot use, "
        f"e.g. {s.bad[0].describe()}" for s in checked if s.bad)
    raise ValueError(f"{per_flag}. All are listed in {report}")
