"""Issue 11's audit: a hostile new user's bad inputs and flags against the real command lines.

    python -m bench.bad_inputs [--only=SUBSTRING] [--keep] [--spawn]

Every case builds its input in a temp dir — real PNG/JPEG/GIF/BMP/WebP/TIFF images made with
Pillow, TFRecords of `ns_data.schema` examples, Parquet tables edited with pyarrow, tiny teachers
trained on the embedded sample and exported as SavedModels — and runs the command a user types
(`python -m beam_jobs.label_and_balance ...`, `beam_jobs.rebalance`, `ns_train.train`,
`ns_train.evaluate`) in a child process, at most two at a time. The children are forked from a
`bench.preloaded` server that has imported TensorFlow, Keras and Beam once, because that import
costs more than most commands' own work: the ~140 commands took 11 to over 30 minutes with a
fresh interpreter each on this shared 2-core machine, 3 to 5 this way. `--spawn` starts a fresh
interpreter per command instead; it gave the same outcome for every case compared. Trainer
cases run two steps of a tiny ResNet without tensorflow-transform (`train_flags`). What the
user got is classed:

  ok            exit 0 and the output is right (a valid but unusual input, or a control run)
  refused       nonzero exit, an error line naming the problem, no Python traceback
  dead-letter   the bad items are counted in stats.json's totals.failed and in the dead_letters
                shards, the stats reconcile, and the run exits 0, or 1 from
                --max_failure_fraction with no _SUCCESS marker
  warned        exit 0 and a warning naming the problem (ns_train and ns_train.evaluate)
  -- not clean:
  traceback     a Python traceback reached the user (also one Beam logs before a one-line error)
  misleading    nonzero exit without a traceback, but the error line names another problem
  silent        exit 0 but something was lost or wrong without a count: fewer rows than records,
                stats that do not reconcile, output marked complete that should not be
  accepted-bad  bad data or a bad setting went into the output
  timeout       still running after TIMEOUT seconds

Each case names the outcome(s) a careful tool would give; it is handled cleanly when what
happened is one of them. Cases about one bad record (or one edited table row) share a run with
the other cases of their group, marked `*` in the table: each adds its record to the same input
at its own index and is judged by its own table row and dead letter, whose message is the line
shown; the exit code is the shared run's. The table has one row per case, then the totals and
every case not handled cleanly. `--keep` keeps every case's input, output, stdout and stderr.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import gzip
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402 - after the log level, which TensorFlow reads at import
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from bench import preloaded  # noqa: E402
from ns_data import predictions, schema, stats  # noqa: E402
from ns_data.images import ImageSpec, PillowDecoder  # noqa: E402
from ns_data.teacher import TeacherModelHandler, inspect_teacher  # noqa: E402
from ns_data.tfrecord import iter_records, masked_crc  # noqa: E402
from ns_train.tiny_teacher import train_tiny_teacher  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(_ROOT, "ns_data", "sample", "labeled.tfrecord")
MODULES = {"label_and_balance": "beam_jobs.label_and_balance",
           "rebalance": "beam_jobs.rebalance",
           "train": "ns_train.train",
           "evaluate": "ns_train.evaluate"}
GOOD = 64  # good images in every input built around them; held out of the teachers' training
K = 5  # --images_per_class of every run that does not test it: 64 images, 10 classes
PARALLEL = 2  # subprocesses at once (a 2-core machine)
TIMEOUT = 300
TRACEBACK = "Traceback (most recent call last)"
LINE_WIDTH = 150


# ---------------------------------------------------------------------------------------------
# Inputs


def frame(record: bytes) -> bytes:
    """One TFRecord frame: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(record))
    return (length + struct.pack("<I", masked_crc(length)) + record
            + struct.pack("<I", masked_crc(record)))


def write_bytes(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_records(path: str, records: Sequence[bytes], compress: bool = False) -> str:
    """A TFRecord file of `records` (gzip-compressed with `compress`); returns its path."""
    data = b"".join(frame(r) for r in records)
    return write_bytes(path, gzip.compress(data) if compress else data)


def example(features: dict[str, list]) -> bytes:
    """A tf.train.Example of any features, including ones our schema never writes."""
    def feature(values: list) -> tf.train.Feature:
        if all(isinstance(v, bytes) for v in values):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if all(isinstance(v, int) for v in values):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    return tf.train.Example(features=tf.train.Features(
        feature={name: feature(values) for name, values in features.items()})).SerializeToString()


def encode(image: Image.Image | np.ndarray, fmt: str, **save) -> bytes:
    """`image` encoded by Pillow as `fmt` (PNG, JPEG, GIF, BMP, WEBP, TIFF)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height over a few bytes of pixels (a bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def large_image(fmt: str, side: int = 12_000) -> bytes:
    """A side x side black image: over Pillow's default pixel limit, yet small once encoded."""
    return encode(Image.new("L", (side, side)), fmt)


@dataclasses.dataclass(frozen=True)
class Item:
    image_id: bytes
    encoded: bytes
    label: int


class Fixtures:
    """What every case shares: good images (with true labels), teachers, base runs.

    The last GOOD records of the embedded labeled sample are the good images; the teachers are
    trained on the rest, so their accuracy on the good images is a held-out baseline that a run
    with wrong flags is compared with.
    """

    def __init__(self, root: str):
        self.root = root
        records = list(iter_records(SAMPLE))
        train = write_records(self.path("train.tfrecord"), records[:-GOOD])
        self.items = []
        for record in records[-GOOD:]:
            f = schema.parse_example(record)
            self.items.append(Item(f[schema.IMAGE_ID][0], f[schema.IMAGE_ENCODED][0],
                                   int(f[schema.LABEL][0])))
        self.labels = {item.image_id: item.label for item in self.items}
        self.good_records = [schema.image_example(i.encoded, i.image_id) for i in self.items]
        self.good = write_records(self.path("good.tfrecord"), self.good_records)
        self.labeled_records = [schema.image_example(i.encoded, i.image_id, label=i.label)
                                for i in self.items]
        self.labeled = write_records(self.path("labeled.tfrecord"), self.labeled_records)
        self.ref = self.items[0]  # record 0 of every input: the image other formats repeat
        self.pixels = np.asarray(Image.open(io.BytesIO(self.ref.encoded)).convert("L"))
        self.teacher = self.path("teacher-gray")
        train_tiny_teacher(train, self.teacher, epochs=3, seed=1)
        self.teacher_rgb = self.path("teacher-rgb")
        train_tiny_teacher(train, self.teacher_rgb, spec=ImageSpec(28, 28, 3), epochs=3, seed=1)
        self.teacher_softmax = softmax_teacher(self.teacher, self.path("teacher-softmax"))
        self.teacher_bare = self.path("teacher-bare")  # as downloaded: no ns_teacher.json
        shutil.copytree(self.teacher, self.teacher_bare,
                        ignore=shutil.ignore_patterns("assets.extra"))
        self.not_a_model = os.path.dirname(write_bytes(self.path("not-a-model", "README.txt"),
                                                       b"weights are on the shared drive\n"))
        self.baseline = {path: self.teacher_baseline(path)
                         for path in (self.teacher, self.teacher_rgb)}
        self.runs: dict[str, str] = {}  # base run name -> its --output_dir

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def teacher_baseline(self, path: str) -> tuple[float, float]:
        """(top-1 accuracy, mean confidence) of the teacher on the good images, served with the
        job's own handler and decoder and the right flags."""
        spec = inspect_teacher(path, batch_size=GOOD)
        handler = TeacherModelHandler(spec)
        decoder = PillowDecoder(spec.image)
        results = handler.run_inference([decoder(i.encoded) for i in self.items],
                                        handler.load_model())
        probs = np.stack([r.inference[1] for r in results])
        truth = np.array([i.label for i in self.items])
        return float((probs.argmax(1) == truth).mean()), float(probs.max(1).mean())


def softmax_teacher(logits_teacher: str, path: str) -> str:
    """The tiny teacher with a softmax on top and no ns_teacher.json: what a user downloads."""
    inner = tf.saved_model.load(logits_teacher)
    module = tf.Module()
    module.inner = inner
    module.serve = tf.function(
        lambda images: {"probabilities": tf.nn.softmax(inner.serve(images))},
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


# ---------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass
class Ctx:
    """One run's world: the shared fixtures and its own directory."""

    fx: Fixtures
    dir: str
    keys: list = dataclasses.field(default_factory=list)  # a shared run's key of each case

    @property
    def out(self) -> str:
        return os.path.join(self.dir, "out")

    @property
    def workdir(self) -> str:
        return os.path.join(self.dir, "work")

    def path(self, *parts: str) -> str:
        path = os.path.join(self.dir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


@dataclasses.dataclass
class Run:
    code: int | None  # None: killed after TIMEOUT
    stdout: str
    stderr: str
    seconds: float


Verdict = tuple[str, str]  # (outcome, the line the user saw)
Check = Callable[[Ctx, Run], "Verdict | None"]


@dataclasses.dataclass(frozen=True)
class Shared:
    """A run that several one-record cases share (see the module docstring).

    Attributes:
      name: the group, shown in the progress log.
      job: the command.
      make: builds the input from its cases (setting `Ctx.keys`, one per case) and returns the
        flags.
      judge: the verdict of each case from the run's output.
    """

    name: str
    job: str
    make: Callable[[Ctx, Sequence[Case]], list[str]]
    judge: Callable[[Ctx, Run, Sequence[Case]], list[Verdict]]


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input or flag.

    Attributes:
      name: what the user did.
      job: a key of MODULES.
      expect: the outcomes a careful tool would give.
      make: builds the case's input in its Ctx and returns the command's flags (one-run cases).
      says: a refusal must name one of these (case-insensitive), else it is misleading.
      bad: items that should become dead letters (Beam jobs).
      read: records the run should read (table rows); default GOOD + bad.
      check: looks at a run that did not refuse; returns a verdict replacing the generic one.
      needs: base runs of label_and_balance the case reads (`BASE_RUNS`).
      shared: the shared run of a one-record case, which gives `record` or `row`.
      record: builds the case's record (appended to the good records of the shared run).
      row: the values a table-row case writes into one row of a copy of the base table.
      file: writes the case's file(s) into the shared run's input folder, names starting with
        the given path prefix.
      lossless: a record in another image format must score exactly like the same PNG.
      cost: rough run time in units of a short run, to start long runs first.
    """

    name: str
    job: str
    expect: tuple[str, ...]
    make: Callable[[Ctx], list[str]] | None = None
    says: tuple[str, ...] = ()
    bad: int = 0
    read: int | None = None
    check: Check | None = None
    needs: tuple[str, ...] = ()
    shared: Shared | None = None
    record: Callable[[Ctx], bytes] | None = None
    row: dict | None = None
    file: Callable[[Ctx, str], object] | None = None
    lossless: bool = False
    cost: int = 1


def lab(c: Ctx, input_pattern: str, *extra: str, teacher: str | None = None,
        k: int | None = K) -> list[str]:
    """label_and_balance flags as a user writes them, with a small K for 64 images."""
    argv = [f"--input={input_pattern}", f"--teacher={teacher or c.fx.teacher}",
            f"--output_dir={c.out}", "--num_shards=2"]
    if k:
        argv.append(f"--images_per_class={k}")
    return argv + list(extra)


def with_records(c: Ctx, *records: bytes, name: str = "part.tfrecord") -> str:
    """The good records followed by `records`, in one TFRecord file of the case."""
    return write_records(c.path("in", name), c.fx.good_records + list(records))


def image_folder(c: Ctx, n: int = 8) -> str:
    """n good images as PNG files in a folder of the case; returns the folder."""
    for item in c.fx.items[:n]:
        write_bytes(c.path("imgs", item.image_id.decode() + ".png"), item.encoded)
    return os.path.join(c.dir, "imgs")


def replace_flag(argv: list[str], name: str, value: str | None) -> list[str]:
    """`argv` with flag `name` set to `value` (None: removed)."""
    rest = [a for a in argv if not a.startswith(name + "=")]
    return rest if value is None else rest + [f"{name}={value}"]


def damaged(records: list[bytes], damage: Callable[[bytearray, int, int], None],
            at: int = 40) -> bytes:
    """`records` as a TFRecord file with `damage(data, start, end)` done to record `at`'s frame."""
    starts = np.cumsum([0] + [16 + len(r) for r in records])
    data = bytearray(b"".join(frame(r) for r in records))
    damage(data, int(starts[at]), int(starts[at + 1]))
    return bytes(data)


def renamed(c: Ctx, prefix: str) -> list[bytes]:
    """The good images under ids of their own (files of one shared run must not share ids)."""
    return [schema.image_example(i.encoded, prefix.encode() + i.image_id) for i in c.fx.items]


def cut(data: bytearray, start: int, end: int) -> None:
    del data[(start + end) // 2:]


def flip_data(data: bytearray, start: int, end: int) -> None:
    data[start + 20] ^= 4


def flip_length(data: bytearray, start: int, end: int) -> None:
    data[start + 1] ^= 1


def rb(c: Ctx, table: str, *extra: str) -> list[str]:
    return [f"--predictions={table}", f"--output_dir={c.out}", f"--images_per_class={K}",
            "--num_shards=2", *extra]


def train_flags(c: Ctx, *extra: str, labeled: str | None = None, eval_data: str | None = None,
                normalization: str | None = "none") -> list[str]:
    """A two-step run of a small ResNet: the checks and the input pipeline, not the training.

    `--normalization=none` except in the control (None: the default, tft), because
    tensorflow-transform's analysis is a Beam pipeline of its own (~10 s) and the input checks
    must not depend on it.
    """
    argv = [f"--labeled={labeled or c.fx.labeled}", f"--workdir={c.workdir}", "--steps=2",
            "--batch_size=16", "--resnet_widths", "8", "16", "--resnet_blocks=1"]
    if normalization:
        argv.append(f"--normalization={normalization}")
    if eval_data:
        argv.append(f"--eval={eval_data}")
    return argv + list(extra)


def ev(c: Ctx, *extra: str, data: str | None = None, model: str | None = None) -> list[str]:
    return [f"--model={model or c.fx.teacher}", f"--data={data or c.fx.labeled}", *extra]


def table_dir(c: Ctx, run: str = "base") -> str:
    return os.path.join(c.fx.runs[run], "predictions")


def copy_table(c: Ctx, run: str = "base", marker: bool = True, to: str = "table") -> str:
    """A copy of a base run's predictions table in the case's dir (same input files)."""
    target = os.path.join(c.dir, to)
    shutil.copytree(table_dir(c, run), target)
    if not marker:
        os.remove(os.path.join(target, "_SUCCESS"))
    return target


def edit_table(c: Ctx, edit: Callable[[list[dict]], list[dict]]) -> str:
    """A copy of the base table with its rows edited by `edit`; the file's schema and its
    ns_data.predictions metadata are kept, as a user editing it with pyarrow would."""
    target = copy_table(c)
    path, = glob.glob(predictions.table_pattern(target))
    table = pq.read_table(path)
    rows = edit(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return target


def by_confidence(rows: list[dict]) -> list[int]:
    """Row indices, most confident first (the rows selection keeps)."""
    return sorted(range(len(rows)), key=lambda i: -(rows[i][predictions.CONFIDENCE] or -1.0))


def disagree(rows: list[dict]) -> list[dict]:
    """The top row keeps its label and confidence; its top classes name another class first."""
    top = by_confidence(rows)[0]
    classes = list(rows[top][predictions.TOPK_CLASSES])
    classes[0], classes[1] = classes[1], classes[0]
    rows[top][predictions.TOPK_CLASSES] = classes
    return rows


def mangle_table(c: Ctx, mangle: Callable[[bytes], bytes]) -> str:
    target = copy_table(c)
    path, = glob.glob(predictions.table_pattern(target))
    with open(path, "rb") as f:
        data = f.read()
    write_bytes(path, mangle(data))
    return target


def base_input(c: Ctx, run: str) -> str:
    return os.path.join(os.path.dirname(c.fx.runs[run]), "input", "part.tfrecord")


def change_input(run: str, change: Callable[[list[bytes]], list[bytes] | None]
                 ) -> Callable[[Ctx], list[str]]:
    """Changes a base run's input file after its table was written (None: deletes the file);
    returns flags that rebalance that run's table, writing every image once."""
    def make(c: Ctx) -> list[str]:
        path = base_input(c, run)
        records = change(list(iter_records(path)))
        if records is None:
            os.remove(path)
        else:
            write_records(path, records)
        return rb(c, table_dir(c, run), f"--images_per_class={GOOD}", "--min_confidence=0",
                  "--no_duplicate")
    return make


def swapped_image(records: list[bytes]) -> list[bytes]:
    """Record 3 keeps its id, but now holds a different image (an inverted one)."""
    f = schema.parse_example(records[3])
    pixels = 255 - np.asarray(Image.open(io.BytesIO(f[schema.IMAGE_ENCODED][0])))
    records[3] = schema.image_example(encode(pixels, "PNG"), f[schema.IMAGE_ID][0])
    return records


# Base runs of label_and_balance that rebalance, student and evaluate cases read: name -> extra
# flags. The runs whose input a case changes afterwards each have their own.
BASE_RUNS = {"base": [], "topk": ["--label_type=soft_topk", "--topk=3", "--predictions_topk=3"],
             "reorder": [], "truncate": [], "append": [], "delete": [], "swap": []}


# --- reading outputs


def table_rows(out: str) -> list[dict]:
    files = glob.glob(predictions.table_pattern(os.path.join(out, "predictions")))
    return [row for path in sorted(files) for row in pq.read_table(path).to_pylist()]


def count_records(pattern: str) -> int:
    return sum(1 for path in glob.glob(pattern) for _ in iter_records(path))


def dead_letters(out: str) -> dict[bytes, tuple[str, str]]:
    """image id -> (stage, message) of the run's dead letters."""
    letters = {}
    for path in glob.glob(os.path.join(out, "dead_letters-*")):
        for record in iter_records(path):
            f = schema.parse_example(record)
            letters[f[schema.IMAGE_ID][0]] = (f[schema.ERROR_STAGE][0].decode(),
                                              f[schema.ERROR_MESSAGE][0].decode())
    return letters


def read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def eval_result(run: Run) -> dict | None:
    start = run.stdout.find("{")
    try:
        return json.loads(run.stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def scored(row: dict) -> str:
    return f"label {row[predictions.LABEL]} p={row[predictions.CONFIDENCE]:.3f}"


# --- checks on runs that did not refuse


def labels_check(c: Ctx, run: Run) -> Verdict | None:
    """accepted-bad when the good images' labels or confidences are far from what the teacher
    gives with the right flags (a wrong setting that went into the output)."""
    accuracy, confidence = c.fx.baseline[c.fx.teacher]
    rows = [r for r in table_rows(c.out) if r[predictions.ID] in c.fx.labels
            and r[predictions.LABEL] is not None]
    if not rows:
        return None
    got = np.mean([r[predictions.LABEL] == c.fx.labels[r[predictions.ID]] for r in rows])
    mean = np.mean([r[predictions.CONFIDENCE] for r in rows])
    if got < accuracy - 0.15 or abs(mean - confidence) > 0.1:
        return "accepted-bad", (f"exit {run.code}: labels {got:.0%} right, mean confidence "
                                f"{mean:.2f} (right flags: {accuracy:.0%}, {confidence:.2f})")
    return None


def exit0_is(outcome: str, what: str) -> Check:
    """A run that should have been refused exited 0: `what` went wrong."""
    def check(c: Ctx, run: Run) -> Verdict | None:
        return (outcome, f"exit 0: {what}") if run.code == 0 else None
    return check


def copies_check(c: Ctx, run: Run) -> Verdict | None:
    t = stats.read_stats(c.out)["totals"]
    if run.code == 0 and t["max_copies"] > 100:
        marked = os.path.exists(os.path.join(c.out, "_SUCCESS"))
        return "accepted-bad", (f"exit 0: {t['read']} images written as {t['written']} records, "
                                f"up to {t['max_copies']} copies of one image"
                                + ("; marked complete" if marked else ""))
    return None


def swap_check(c: Ctx, run: Run) -> Verdict | None:
    """The changed image written with the label the teacher gave the old one."""
    new = schema.parse_example(list(iter_records(base_input(c, "swap")))[3])
    for path in sorted(glob.glob(os.path.join(c.out, "pseudo_labels-*"))):
        for record in map(schema.parse_pseudo_label, iter_records(path)):
            if record.encoded == new[schema.IMAGE_ENCODED][0]:
                return "accepted-bad", (f"exit 0: the changed image {record.image_id.decode()} "
                                        f"was written with the old image's label {record.label} "
                                        f"(p={record.confidence:.2f})")
    return None


def table_dir_check(c: Ctx, run: Run) -> Verdict | None:
    marker = read_json(os.path.join(c.out, "_SUCCESS")) or {}
    if run.code == 0:
        return "accepted-bad", ("exit 0: shards written into the table's directory; its "
                                f"_SUCCESS now describes the {marker.get('job')} run")
    return None


def train_damage_check(c: Ctx, run: Run) -> Verdict | None:
    """A damaged labeled file: training on its readable part must at least say so."""
    warned = [line for line in user_lines(run.stderr) if "part.tfrecord" in line and any(
        word in line.lower() for word in ("damaged", "truncated", "corrupt", "checksum"))]
    if warned:
        return "warned", warned[0]
    result = read_json(os.path.join(c.workdir, "result.json")) or {}
    return "silent", (f"exit 0: trained on {result.get('num_labeled')} of {GOOD} labeled "
                      "records, no warning")


def eval_check(expected: int | None, what: str) -> Check:
    """evaluate exited 0 without a warning: `what` is accepted-bad, or silent when it did not
    count the `expected` records (None: any count)."""
    def check(c: Ctx, run: Run) -> Verdict | None:
        result = eval_result(run)
        if result is None or result["warnings"]:
            return None
        if expected is not None and result["count"] != expected:
            return "silent", (f"exit 0: top-1 {result['top1']:.3f} on {result['count']} of "
                              f"{expected} records, no warning")
        return "accepted-bad", f"exit 0: {what}, top-1 {result['top1']:.3f} on {result['count']}"
    return check


# --- shared runs


def records_run(name: str, *flags: str, teacher: str = "gray") -> Shared:
    """label_and_balance over the good records followed by one record per case."""
    def make(c: Ctx, cases: Sequence[Case]) -> list[str]:
        c.keys = [GOOD + i for i in range(len(cases))]
        path = with_records(c, *[case.record(c) for case in cases])
        return lab(c, path, *flags, teacher=c.fx.teacher_rgb if teacher == "rgb" else None)
    return Shared(name, "label_and_balance", make, judge_records)


def judge_records(c: Ctx, run: Run, cases: Sequence[Case]) -> list[Verdict]:
    """Each case by its record's table row: a dead letter with its message, or scored."""
    rows = {row[predictions.INDEX]: row for row in table_rows(c.out)}
    letters = dead_letters(c.out)
    ref = rows.get(0)
    verdicts = []
    for case, index in zip(cases, c.keys):
        row = rows.get(index)
        if row is None:
            verdicts.append(("silent", f"record {index} has no table row and no dead letter"))
        elif row[predictions.ERROR_STAGE]:
            letter = letters.get(row[predictions.ID])
            verdicts.append(("dead-letter", "{}: {}".format(*letter)) if letter else (
                "silent", f"failed ({row[predictions.ERROR_STAGE]}) without a dead letter"))
        elif case.lossless and ref and (row[predictions.LABEL] != ref[predictions.LABEL] or abs(
                row[predictions.CONFIDENCE] - ref[predictions.CONFIDENCE]) > 1e-3):
            verdicts.append(("accepted-bad", f"scored as other pixels: {scored(row)}, the same "
                             f"image as PNG {scored(ref)}"))
        elif "ok" in case.expect:
            verdicts.append(("ok", f"scored: {scored(row)}"
                             + (f" (as PNG: {scored(ref)})" if case.lossless and ref else "")))
        else:
            verdicts.append(("accepted-bad", f"scored as an image: {scored(row)}"))
    return verdicts


def files_run(name: str, pattern: str, *flags: str, good_images: int = 0) -> Shared:
    """label_and_balance over a folder where each case writes its file(s), named after it; with
    `good_images`, that many good PNG files are there too."""
    def make(c: Ctx, cases: Sequence[Case]) -> list[str]:
        folder = os.path.join(c.dir, "in")
        os.makedirs(folder)
        for item in c.fx.items[:good_images]:
            write_bytes(os.path.join(folder, f"good-{item.image_id.decode()}.png"), item.encoded)
        c.keys = [f"c{i:02d}-" for i in range(len(cases))]
        for case, key in zip(cases, c.keys):
            case.file(c, os.path.join(folder, key))
        return lab(c, os.path.join(folder, pattern), *flags)
    return Shared(name, "label_and_balance", make, judge_files)


def judge_files(c: Ctx, run: Run, cases: Sequence[Case]) -> list[Verdict]:
    """Each case by the table rows of its own file(s): how many, and their dead letters."""
    rows = table_rows(c.out)
    letters = dead_letters(c.out)
    verdicts = []
    for case, key in zip(cases, c.keys):
        mine = [r for r in rows if os.path.basename(r[predictions.SOURCE]).startswith(key)]
        failed = [r for r in mine if r[predictions.ERROR_STAGE]]
        expected = GOOD + case.bad if case.read is None else case.read
        if len(mine) < expected:
            verdicts.append(("silent", f"{len(mine)} of {expected} records have a table row, "
                             f"{len(failed)} failed: {expected - len(mine)} lost without a count"))
        elif len(failed) < case.bad:
            verdicts.append(("accepted-bad", f"{case.bad - len(failed)} bad item(s) scored"))
        elif any(r[predictions.ID] not in letters for r in failed):
            verdicts.append(("silent", "a failed row without a dead letter"))
        elif failed:
            verdicts.append(("dead-letter", "{}: {}".format(*letters[failed[0][predictions.ID]])
                             + (f" ({len(mine) - len(failed)} records scored)"
                                if len(mine) > len(failed) else "")))
        else:
            verdicts.append(("ok", f"{len(mine)} records scored"))
    return verdicts


def rows_run() -> Shared:
    """rebalance of a copy of the base table whose k-th most confident row carries case k's
    edits, keeping and writing every valid row once."""
    def make(c: Ctx, cases: Sequence[Case]) -> list[str]:
        def edit(rows: list[dict]) -> list[dict]:
            for case, i in zip(cases, by_confidence(rows)):
                rows[i].update(case.row)
                c.keys.append(rows[i][predictions.ID])
            return rows
        return rb(c, edit_table(c, edit), f"--images_per_class={GOOD}", "--min_confidence=0",
                  "--no_duplicate")
    return Shared("edited table rows", "rebalance", make, judge_rows)


def judge_rows(c: Ctx, run: Run, cases: Sequence[Case]) -> list[Verdict]:
    letters = dead_letters(c.out)
    written = {schema.parse_pseudo_label(r).image_id: schema.parse_pseudo_label(r)
               for path in glob.glob(os.path.join(c.out, "pseudo_labels-*"))
               for r in iter_records(path)}
    verdicts = []
    for image_id in c.keys:
        if image_id in letters:
            verdicts.append(("dead-letter", "{}: {}".format(*letters[image_id])))
        elif image_id in written:
            record = written[image_id]
            verdicts.append(("accepted-bad", f"written: label {record.label} "
                             f"confidence {record.confidence}"))
        else:
            verdicts.append(("silent", "neither written nor a dead letter"))
    return verdicts


# --- the case table


def case_maker(job: str, **defaults) -> Callable[..., Case]:
    """`case(name, expect, make=None, **fields)` for one job's cases: `expect` is one outcome or
    a tuple of them, `defaults` are fields every case of the job shares unless it says
    otherwise."""
    def case(name: str, expect: str | tuple[str, ...], make=None, **kw) -> Case:
        return Case(name, job, (expect,) if isinstance(expect, str) else expect, make,
                    **{**defaults, **kw})
    return case


def flag_maker(case: Callable[..., Case], argv: Callable[..., list[str]]
               ) -> Callable[..., Case]:
    """`flag(name, *flags, says=...)`: a case that adds `flags` to a good command line
    (`argv(ctx, *flags)`) and expects a refusal naming one of `says` (or `expect=`)."""
    def flag(name: str, *extra: str, says: Sequence[str], **kw) -> Case:
        return case(name, kw.pop("expect", "refused"), lambda c: argv(c, *extra),
                    says=tuple(says), **kw)
    return flag


def labeled_plus(*records: bytes | Callable[[Ctx], bytes]) -> Callable[[Ctx], str]:
    """The labeled records followed by `records` (or builders of them), in one file."""
    return lambda c: write_records(c.path("in", "part.tfrecord"), c.fx.labeled_records + [
        r(c) if callable(r) else r for r in records])


def lab_cases() -> list[Case]:
    case = case_maker("label_and_balance")
    flag = flag_maker(case, lambda c, *extra: lab(c, c.fx.good, *extra))

    def one(shared: Shared, name: str, record: Callable[[Ctx], bytes] | bytes,
            expect: str | tuple[str, ...] = "dead-letter", **kw) -> Case:
        return case(name, expect, shared=shared, cost=2,
                    record=record if callable(record) else (lambda c: record), **kw)

    def file(shared: Shared, name: str, write: Callable[[Ctx, str], object],
             expect: str = "dead-letter", **kw) -> Case:
        return case(name, expect, shared=shared, file=write, cost=2, **kw)

    def image(shared: Shared, name: str, encoded, **kw) -> Case:
        """A record of `encoded` (bytes, or a builder from the reference image's pixels)."""
        def record(c: Ctx) -> bytes:
            data = encoded(c.fx.pixels) if callable(encoded) else encoded
            return schema.image_example(data, b"case-" + name.encode())
        return one(shared, name, record, **kw)

    def fmt(name: str, **save) -> Callable[[np.ndarray], bytes]:
        return lambda pixels: encode(pixels, name, **save)

    tfrecords = files_run("damaged TFRecord files", "*")
    folder = files_run("image folder", "*", "--input_format=images", good_images=8)
    records = records_run("records")
    images = records_run("undecodable images", "--max_image_pixels=10000")
    large = records_run("12000x12000 images")
    formats = records_run("formats, grayscale teacher")
    rgb = records_run("formats, RGB teacher", teacher="rgb")
    tf_decoder = records_run("formats, --decoder=tf", "--decoder=tf")
    lossless = [("GIF", fmt("GIF")), ("BMP", fmt("BMP")),
                ("WebP (lossless)", fmt("WEBP", lossless=True))]
    junk_png = b"\x89PNG\r\n\x1a\n" + b"junk" * 30
    return [
        case("control: 64 good PNGs, default runner", "ok", lambda c: lab(c, c.fx.good),
             check=labels_check),
        # --- where the input is
        case("--input glob matching nothing", "refused",
             lambda c: lab(c, os.path.join(c.dir, "unlabeled-*.tfrecord")),
             says=("matches no files",)),
        case("--input a directory of TFRecords", "refused",
             lambda c: lab(c, os.path.dirname(with_records(c))), says=("directory",)),
        case("--input a directory, --input_format=images", "refused",
             lambda c: lab(c, image_folder(c), "--input_format=images"), says=("directory",)),
        case("no --input flag", "refused", lambda c: lab(c, c.fx.good)[1:], says=("--input",)),
        case("unquoted glob: the shell expands --input", "refused",
             lambda c: ["--input", write_records(c.path("in", "a.tfrecord"),
                                                 c.fx.good_records[:32]),
                        write_records(c.path("in", "b.tfrecord"), c.fx.good_records[32:]),
                        *lab(c, "")[1:]], says=("b.tfrecord", "argument")),
        # --- damaged files
        file(tfrecords, "truncated TFRecord file (cut in record 40)",
             lambda c, p: write_bytes(p + "part.tfrecord", damaged(renamed(c, p), cut)),
             read=41, bad=1),
        file(tfrecords, "bit-flipped TFRecord file (record 40's data)",
             lambda c, p: write_bytes(p + "part.tfrecord", damaged(renamed(c, p), flip_data)),
             read=41, bad=1),
        file(tfrecords, "bit-flipped TFRecord length header",
             lambda c, p: write_bytes(p + "part.tfrecord", damaged(renamed(c, p), flip_length)),
             read=41, bad=1),
        file(tfrecords, "text file named .tfrecord",
             lambda c, p: write_bytes(p + "notes.tfrecord", b"see the wiki\n" * 40),
             read=1, bad=1),
        file(tfrecords, "empty file", lambda c, p: write_bytes(p + "empty.tfrecord", b""),
             expect="ok", read=0),
        file(tfrecords, "gzip TFRecord named .tfrecord.gz",
             lambda c, p: write_records(p + "part.tfrecord.gz", renamed(c, p), compress=True),
             expect="ok"),
        file(tfrecords, "gzip TFRecord named .tfrecord",
             lambda c, p: write_records(p + "zipped.tfrecord", renamed(c, p), compress=True),
             read=1, bad=1),
        case("only a text file named .tfrecord", "dead-letter",
             lambda c: lab(c, write_bytes(c.path("in", "notes.tfrecord"), b"hello\n" * 40)),
             read=1, bad=1),
        case("only an empty file", "refused",
             lambda c: lab(c, write_bytes(c.path("in", "empty.tfrecord"), b"")), read=0,
             says=("no records", "empty", "no images"),
             check=exit0_is("silent", "no images read; the output is marked complete")),
        case("TFRecords read as --input_format=images", "dead-letter",
             lambda c: lab(c, c.fx.good, "--input_format=images"), read=1, bad=1),
        case("image files without --input_format=images", "dead-letter",
             lambda c: lab(c, os.path.join(image_folder(c), "*.png")), read=8, bad=8),
        # --- records that are not image examples (one shared run)
        one(records, "record that is not an Example", b"\x0a\x05abc"),
        one(records, "record of random bytes", bytes(range(256)) * 3),
        one(records, "Example with no image (id only)", example({schema.IMAGE_ID: [b"x"]})),
        one(records, "Example with an empty image/encoded",
            example({schema.IMAGE_ENCODED: [b""], schema.IMAGE_ID: [b"x"]})),
        one(records, "Example with image/encoded as int64",
            example({schema.IMAGE_ENCODED: [7], schema.IMAGE_ID: [b"x"]})),
        one(records, "int image/id 7", lambda c: example(
            {schema.IMAGE_ENCODED: [c.fx.items[1].encoded], schema.IMAGE_ID: [7]})),
        one(records, "int image/id 0", lambda c: example(
            {schema.IMAGE_ENCODED: [c.fx.items[2].encoded], schema.IMAGE_ID: [0]})),
        one(records, "float image/id 1.5", lambda c: example(
            {schema.IMAGE_ENCODED: [c.fx.items[3].encoded], schema.IMAGE_ID: [1.5]})),
        one(records, "two image/encoded values", lambda c: example({
            schema.IMAGE_ENCODED: [c.fx.ref.encoded, c.fx.items[1].encoded],
            schema.IMAGE_ID: [b"two"]})),
        one(records, "two image/id values", lambda c: example({
            schema.IMAGE_ENCODED: [c.fx.items[4].encoded], schema.IMAGE_ID: [b"a", b"b"]})),
        one(records, "empty image/id (a content hash is used)",
            lambda c: schema.image_example(c.fx.items[5].encoded, b""), expect="ok"),
        one(records, "two images with the same image/id", lambda c: schema.image_example(
            c.fx.items[1].encoded, c.fx.ref.image_id), expect=("ok", "dead-letter")),
        # --- images that do not decode (one shared run, --max_image_pixels=10000)
        image(images, "corrupt PNG (signature, then junk)", junk_png),
        image(images, "PNG with a flipped byte in its pixels",
              lambda p: (lambda d: d[:60] + bytes([d[60] ^ 0x10]) + d[61:])(encode(p, "PNG"))),
        image(images, "truncated PNG", lambda p: encode(p, "PNG")[:200]),
        image(images, "truncated JPEG", lambda p: encode(p, "JPEG", quality=95)[:300]),
        image(images, "text as image bytes", b"this is not an image\n"),
        image(images, "SVG image", b'<svg xmlns="http://www.w3.org/2000/svg" width="28" '
              b'height="28"><rect width="28" height="28"/></svg>'),
        image(images, "PNG header 0x0", png_header_only(0, 0)),
        image(images, "PNG header 100000x100000 (a bomb)", png_header_only(100_000, 100_000)),
        *[image(images, f"200x200 {name} over --max_image_pixels=10000",
                encode(np.zeros((200, 200), np.uint8), name))
          for name in ("PNG", "JPEG", "GIF", "BMP", "WEBP")],
        image(large, "12000x12000 GIF (default limit)", lambda p: large_image("GIF")),
        image(large, "12000x12000 PNG (default limit)", lambda p: large_image("PNG")),
        image(large, "12000x12000 JPEG (default limit)", lambda p: large_image("JPEG")),
        # --- other formats of record 0's image, scored like the PNG (shared runs)
        *[image(formats, f"{name}, grayscale teacher", make, expect="ok", lossless=True)
          for name, make in lossless],
        image(formats, "TIFF, grayscale teacher", fmt("TIFF"), expect="ok", lossless=True),
        image(formats, "16-bit PNG", lambda p: encode(Image.fromarray(p.astype(np.uint16) * 257),
                                                      "PNG"), expect="ok", lossless=True),
        image(formats, "RGBA PNG", lambda p: encode(np.dstack([p, p, p, np.full_like(p, 255)]),
                                                    "PNG"), expect="ok", lossless=True),
        image(formats, "animated GIF (first frame is the image)",
              lambda p: encode(Image.fromarray(p), "GIF", save_all=True,
                               append_images=[Image.fromarray(255 - p)]),
              expect="ok", lossless=True),
        image(formats, "CMYK JPEG", lambda p: encode(Image.fromarray(p).convert("CMYK"), "JPEG",
                                                     quality=95), expect="ok"),
        image(formats, "progressive JPEG", fmt("JPEG", quality=95, progressive=True),
              expect="ok"),
        image(formats, "1x1 PNG", encode(np.zeros((1, 1), np.uint8), "PNG"), expect="ok"),
        *[image(rgb, f"{name}, RGB teacher", make, expect="ok", lossless=True)
          for name, make in lossless],
        *[image(tf_decoder, f"{name}, --decoder=tf", make, expect=("ok", "dead-letter"),
                lossless=True) for name, make in lossless],
        image(tf_decoder, "12000x12000 PNG, --decoder=tf", lambda p: large_image("PNG")),
        # --- image folders
        file(folder, "symlink out of the image folder", lambda c, p: os.symlink(
            write_bytes(c.path("secret.png"), c.fx.ref.encoded), p + "escape.png"),
            read=1, bad=1),
        file(folder, "symlink inside the image folder", lambda c, p: os.symlink(
            os.path.join(os.path.dirname(p), f"good-{c.fx.ref.image_id.decode()}.png"),
            p + "again.png"), expect="ok", read=1),
        file(folder, "dangling symlink in the image folder",
             lambda c, p: os.symlink(c.path("gone.png"), p + "gone.png"), read=1, bad=1),
        file(folder, "corrupt PNG file in the image folder",
             lambda c, p: write_bytes(p + "broken.png", b"\x89PNG\r\n\x1a\nxx"),
             read=1, bad=1),
        file(folder, "text file named .png in the image folder",
             lambda c, p: write_bytes(p + "notes.png", b"see the wiki\n"), read=1, bad=1),
        # --- the teacher
        case("--teacher that does not exist", "refused",
             lambda c: lab(c, c.fx.good, teacher=os.path.join(c.dir, "models", "teacher")),
             says=("--teacher", "saved_model")),
        case("--teacher a directory that is not a SavedModel", "refused",
             lambda c: lab(c, c.fx.good, teacher=c.fx.not_a_model), says=("SavedModel",)),
        case("--teacher its saved_model.pb file", "refused",
             lambda c: lab(c, c.fx.good,
                           teacher=os.path.join(c.fx.teacher, "saved_model.pb")),
             says=("SavedModel",)),
        case("no --teacher flag", "refused",
             lambda c: replace_flag(lab(c, c.fx.good), "--teacher", None), says=("--teacher",)),
        case("softmax teacher run as the default logits", "refused",
             lambda c: lab(c, c.fx.good, teacher=c.fx.teacher_softmax),
             says=("--teacher_outputs",), check=labels_check),
        flag("--teacher_outputs=probabilities on a logits teacher",
             "--teacher_outputs=probabilities", says=("--teacher_outputs", "probabilit"),
             check=labels_check),
        flag("--input_range=0,255 on a [0,1] teacher", "--input_range=0,255",
             says=("--input_range",), check=labels_check),
        flag("--input_range=-1,1 on a [0,1] teacher", "--input_range=-1,1",
             says=("--input_range",), check=labels_check),
        case("--input_range=0,255 on the same teacher without ns_teacher.json", "refused",
             lambda c: lab(c, c.fx.good, "--input_range=0,255", teacher=c.fx.teacher_bare),
             says=("--input_range",), check=labels_check),
        flag("--input_range=1,0 (inverted)", "--input_range=1,0",
             says=("--input_range", "input range"), check=labels_check),
        flag("--input_range=0,0", "--input_range=0,0", says=("--input_range", "input range")),
        flag("--input_range=nan,1", "--input_range=nan,1", says=("--input_range", "input range"),
             check=labels_check),
        flag("--input_range -1,1 (space, not =)", "--input_range", "-1,1",
             says=("--input_range",)),
        flag("--image_size=0,0", "--image_size=0,0", says=("--image_size", "image size")),
        flag("--image_size=56,56 on a 28x28 teacher", "--image_size=56,56",
             says=("--image_size",)),
        flag("--channels=3 on a grayscale teacher", "--channels=3", says=("--channels",)),
        flag("--teacher_signature=bogus", "--teacher_signature=bogus", says=("signature",)),
        flag("--output_key=bogus", "--output_key=bogus", says=("output",)),
        flag("--device=gpu on a machine without one", "--device=gpu", says=("gpu",)),
        flag("--device=tpu on a machine without one", "--device=tpu", says=("tpu",)),
        *[flag(f"--temperature={t}", f"--temperature={t}", says=("--temperature",))
          for t in ("inf", "nan", "0", "-1")],
        # --- selection and output flags
        *[flag(f"--min_confidence={v}", f"--min_confidence={v}", says=("--min_confidence",))
          for v in ("1.5", "-0.1", "nan")],
        *[flag(f"--images_per_class={v}", f"--images_per_class={v}",
               says=("--images_per_class",)) for v in ("0", "-3")],
        # One image: its class alone would be 130,000 records (the whole input, 1.3M, took 5
        # min to write before --max_copies refused it ahead of the writing pass).
        case("--images_per_class left at its default (K=130000), one image", "refused",
             lambda c: lab(c, write_records(c.path("in", "one.tfrecord"),
                                            c.fx.good_records[:1]), k=None),
             says=("--images_per_class", "--max_copies"), read=1, check=copies_check, cost=2),
        flag("--num_shards=0", "--num_shards=0", says=("--num_shards",)),
        flag("--topk=50 with 10 classes", "--label_type=soft_topk", "--topk=50",
             says=("--topk",), expect=("refused", "ok")),
        flag("--label_type=bogus", "--label_type=bogus", says=("--label_type",)),
        flag("--predictions_topk=3 with --label_type=soft", "--label_type=soft",
             "--predictions_topk=3", says=("--predictions_topk", "soft")),
        flag("--seed=2**70", f"--seed={2**70}", says=("--seed",)),
        flag("--max_failure_fraction=2", "--max_failure_fraction=2",
             says=("--max_failure_fraction",)),
        flag("--max_copies=2 exceeded (K=40)", "--images_per_class=40", "--max_copies=2",
             says=("--max_copies",)),
        case("every image fails to decode", "dead-letter",
             lambda c: lab(c, write_records(c.path("in", "part.tfrecord"), [
                 schema.image_example(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 40, b"bad-%d" % i)
                 for i in range(8)])), read=8, bad=8),
        case("--output_dir that is a file", "refused",
             lambda c: replace_flag(lab(c, c.fx.good), "--output_dir",
                                    write_bytes(c.path("out.txt"), b"x")),
             says=("--output_dir",)),
        case("--predictions_dir that is a file", "refused",
             lambda c: lab(c, c.fx.good, "--predictions_dir=" + write_bytes(
                 c.path("predictions.txt"), b"x")), says=("--predictions_dir",)),
        case("existing --output_dir without --overwrite", "refused",
             lambda c: shutil.copytree(c.fx.runs["base"], c.out) and lab(c, c.fx.good),
             says=("--overwrite",), needs=("base",)),
        case("--output_dir under /proc (cannot be written)", "refused",
             lambda c: replace_flag(lab(c, c.fx.good), "--output_dir", "/proc/ns-out"),
             says=("/proc/ns-out",)),
        case("no --output_dir flag", "refused",
             lambda c: replace_flag(lab(c, c.fx.good), "--output_dir", None),
             says=("--output_dir",)),
        # --- the command line itself
        flag("misspelt flag --imags_per_class=5", "--imags_per_class=5",
             says=("--imags_per_class",)),
        flag("--runner=DataflowRunner without a project", "--runner=DataflowRunner",
             says=("project",)),
    ]


def rebalance_cases() -> list[Case]:
    case = case_maker("rebalance", needs=("base",))

    def row(name: str, **values) -> Case:
        return case(name, "dead-letter", shared=rows, row=values, cost=2)

    def bad_table(name: str, edit: Callable[[list[dict]], list[dict]], says=(), **kw) -> Case:
        return case(name, "refused", lambda c: rb(c, edit_table(c, edit)), says=says, **kw)

    def input_change(name: str, run: str, change, says=(), **kw) -> Case:
        return case(name, "refused", change_input(run, change), needs=(run,), says=says,
                    read=GOOD, **kw)

    rows = rows_run()
    return [
        case("control: the base run's table", "ok", lambda c: rb(c, table_dir(c))),
        case("no --predictions flag", "refused", lambda c: rb(c, "x")[1:],
             says=("--predictions",)),
        case("--predictions glob matching nothing", "refused",
             lambda c: rb(c, os.path.join(c.dir, "predictions-*.parquet")),
             says=("--predictions", "matches no")),
        case("--predictions a directory that does not exist", "refused",
             lambda c: rb(c, os.path.join(c.dir, "nowhere")), says=("--predictions",)),
        case("--predictions the run's output dir, not its table", "refused",
             lambda c: rb(c, c.fx.runs["base"]), says=("--predictions", "predictions")),
        case("table directory without _SUCCESS", "refused",
             lambda c: rb(c, copy_table(c, marker=False)), says=("_SUCCESS",)),
        case("pseudo-label shards given as --predictions", "refused",
             lambda c: rb(c, os.path.join(c.fx.runs["base"], "pseudo_labels-*")),
             says=("--predictions", "parquet", "table")),
        case("glob over two runs' tables", "refused",
             lambda c: rb(c, os.path.join(c.fx.root, "runs", "*", "out", "predictions",
                                          "*.parquet")),
             says=("mixes", "two", "one run"), needs=("base", "topk")),
        case("glob over a table and its copy", "refused",
             lambda c: copy_table(c) and copy_table(c, to="copy2") and rb(
                 c, os.path.join(c.dir, "*", "predictions-*.parquet")),
             says=("twice", "one run")),
        row("row edited: confidence 7", confidence=7.0),
        row("row edited: confidence NaN", confidence=float("nan")),
        row("row edited: confidence inf", confidence=float("inf")),
        row("row edited: confidence -0.5", confidence=-0.5),
        row("row edited: label 99", label=99),
        row("row edited: label -1", label=-1),
        bad_table("row edited: top classes disagree with the label", disagree, says=("top",)),
        bad_table("row deleted from the table", lambda rows: rows[1:],
                  says=("record", "row", "index"), read=GOOD),
        bad_table("row duplicated in the table", lambda rows: rows + rows[:1],
                  says=("record", "row", "index", "twice", "duplicate"), read=GOOD),
        bad_table("row's id edited", lambda rows: [{**rows[0], "id": b"someone-else"}]
                  + rows[1:], says=("id",), read=GOOD),
        case("table file truncated", "refused",
             lambda c: rb(c, mangle_table(c, lambda d: d[:len(d) // 2])),
             says=("parquet", "predictions")),
        case("table file replaced by text", "refused",
             lambda c: rb(c, mangle_table(c, lambda d: b"id,label\nx,1\n")),
             says=("parquet", "predictions")),
        case("--label_type=soft from a top-3 table", "refused",
             lambda c: rb(c, table_dir(c, "topk"), "--label_type=soft"),
             says=("--label_type", "soft"), needs=("topk",)),
        case("--topk=5 from a top-3 table", "refused",
             lambda c: rb(c, table_dir(c, "topk"), "--label_type=soft_topk", "--topk=5"),
             says=("--topk",), needs=("topk",)),
        input_change("input file re-ordered since the table", "reorder",
                     lambda records: records[::-1], says=("part.tfrecord",),
                     check=exit0_is("accepted-bad", "images paired with other images' labels")),
        input_change("input file truncated since the table", "truncate",
                     lambda records: records[:40], says=("part.tfrecord",)),
        input_change("records appended to the input since the table", "append",
                     lambda records: records + records[:5], says=("part.tfrecord",),
                     check=exit0_is("silent", "the 5 appended records are neither labeled nor "
                                    "counted")),
        input_change("input file deleted since the table", "delete", lambda records: None,
                     says=("part.tfrecord",)),
        input_change("an image replaced since the table (same id)", "swap", swapped_image,
                     says=("part.tfrecord", "changed", "differs"), check=swap_check),
        case("--output_dir the table's own run, no --overwrite", "refused",
             lambda c: replace_flag(rb(c, table_dir(c)), "--output_dir", c.fx.runs["base"]),
             says=("--overwrite",)),
        case("--output_dir the table directory, --overwrite", "refused",
             lambda c: rb(c, copy_table(c, to="out"), "--overwrite"),
             says=("--output_dir", "--predictions", "table"), check=table_dir_check),
        case("--min_confidence=1.5", "refused",
             lambda c: rb(c, table_dir(c), "--min_confidence=1.5"), says=("--min_confidence",)),
        case("misspelt flag --min_confidance=0.5", "refused",
             lambda c: rb(c, table_dir(c), "--min_confidance=0.5"), says=("--min_confidance",)),
    ]


def train_cases() -> list[Case]:
    case = case_maker("train")
    flag = flag_maker(case, train_flags)

    def damaged_labeled(damage) -> Callable[[Ctx], str]:
        return lambda c: write_bytes(c.path("in", "part.tfrecord"),
                                     damaged(c.fx.labeled_records, damage))

    def bad_labeled(name: str, data: Callable[[Ctx], str], says: Sequence[str], **kw) -> Case:
        return case(name, kw.pop("expect", "refused"),
                    lambda c: train_flags(c, labeled=data(c)), says=tuple(says), **kw)

    def bad_eval(name: str, data: Callable[[Ctx], str], says: Sequence[str]) -> Case:
        return case(name, "refused", lambda c: train_flags(c, eval_data=data(c)),
                    says=tuple(says))

    unlabeled = lambda c: schema.image_example(c.fx.ref.encoded, b"u")  # noqa: E731
    label_12 = lambda c: schema.image_example(c.fx.ref.encoded, b"t", label=12)  # noqa: E731
    corrupt_png = schema.image_example(b"\x89PNG\r\n\x1a\njunk", b"bad", label=3)
    pseudo = lambda c: os.path.join(c.fx.runs["base"], "pseudo_labels-*")  # noqa: E731
    return [
        case("control: teacher on 64 labeled images + eval", "ok",
             lambda c: train_flags(c, eval_data=c.fx.labeled, normalization=None), cost=4),
        case("control: student on a complete run's shards", "ok",
             lambda c: train_flags(c, f"--unlabeled={pseudo(c)}"), needs=("base",), cost=4),
        case("--labeled glob matching nothing", "refused",
             lambda c: train_flags(c, labeled=os.path.join(c.dir, "labeled-*.tfrecord")),
             says=("labeled-*", "--labeled", "matches no")),
        case("no --labeled flag", "refused", lambda c: train_flags(c)[1:], says=("--labeled",)),
        bad_labeled("truncated labeled file", damaged_labeled(cut), says=("part.tfrecord",),
                    expect=("refused", "warned"), check=train_damage_check, cost=4),
        bad_labeled("bit-flipped labeled file", damaged_labeled(flip_data),
                    says=("part.tfrecord",), expect=("refused", "warned"),
                    check=train_damage_check, cost=4),
        bad_labeled("text file as --labeled", lambda c: write_bytes(
            c.path("in", "part.tfrecord"), b"label,path\n3,a.png\n" * 20),
            says=("part.tfrecord",)),
        bad_labeled("labeled record with label 12 (10 classes)", labeled_plus(label_12),
                    says=("label", "12")),
        bad_labeled("labeled record without a label", labeled_plus(unlabeled),
                    says=("label",)),
        bad_labeled("labeled record with a corrupt PNG", labeled_plus(corrupt_png),
                    says=("part.tfrecord", "decode", "image")),
        bad_labeled("labeled record that is not an Example", labeled_plus(b"\x0a\x05abc"),
                    says=("part.tfrecord", "record")),
        bad_eval("eval record with a corrupt PNG", labeled_plus(corrupt_png),
                 says=("--eval", "part.tfrecord")),
        bad_eval("eval record with label 12", labeled_plus(label_12),
                 says=("--eval", "label", "12")),
        case("--eval glob matching nothing", "refused",
             lambda c: train_flags(c, eval_data=os.path.join(c.dir, "eval-*.tfrecord")),
             says=("--eval", "eval-*")),
        case("--unlabeled shards without _SUCCESS", "refused",
             lambda c: [shutil.copy(p, c.path("pl", "")) for p in glob.glob(pseudo(c))]
             and train_flags(c, "--unlabeled=" + os.path.join(c.dir, "pl", "pseudo_labels-*")),
             says=("_SUCCESS",), needs=("base",)),
        case("--unlabeled raw unlabeled images, --allow_incomplete", "refused",
             lambda c: train_flags(c, f"--unlabeled={c.fx.good}", "--allow_incomplete"),
             says=("--unlabeled", "label"), cost=3),
        case("--unlabeled a whole run directory's files", "refused",
             lambda c: train_flags(c, "--unlabeled=" + os.path.join(c.fx.runs["base"], "*")),
             says=("--unlabeled",), needs=("base",), cost=3),
        case("--num_classes=12 with 10-class soft pseudo-labels", "refused",
             lambda c: train_flags(c, f"--unlabeled={pseudo(c)}", "--num_classes=12"),
             says=("num_classes", "probabilities"), needs=("base",), cost=3),
        flag("--num_classes=5 with labels up to 9", "--num_classes=5",
             says=("label", "num_classes")),
        flag("misspelt flag --learning_rat=0.1", "--learning_rat=0.1", says=("--learning_rat",)),
        flag("--batch_size=0", "--batch_size=0", says=("batch_size",)),
        flag("--learning_rate=-1", "--learning_rate=-1", says=("learning_rate",)),
        flag("--num_classes=1", "--num_classes=1", says=("num_classes",)),
        flag("--channels=2", "--channels=2", says=("--channels",)),
        flag("--image_size 0 0", "--image_size", "0", "0", says=("image",)),
        case("--workdir that is a file", "refused",
             lambda c: replace_flag(train_flags(c), "--workdir",
                                    write_bytes(c.path("work.txt"), b"x")),
             says=("--workdir", "work.txt")),
        case("--config file that does not exist", "refused",
             lambda c: train_flags(c, "--config=" + os.path.join(c.dir, "configs", "mine.py")),
             says=("--config", "mine.py")),
    ]


def evaluate_cases() -> list[Case]:
    case = case_maker("evaluate")
    flag = flag_maker(case, ev)

    def bad_data(name: str, data: Callable[[Ctx], str], says: Sequence[str],
                 expect: str | tuple[str, ...] = "refused", **kw) -> Case:
        return case(name, expect, lambda c: ev(c, data=data(c)), says=tuple(says), **kw)

    return [
        case("control: the gray teacher on 64 labeled images", "ok", lambda c: ev(c)),
        case("--model that does not exist", "refused",
             lambda c: ev(c, model=os.path.join(c.dir, "export")),
             says=("--teacher", "--model", "SavedModel")),
        case("--model a directory that is not a SavedModel", "refused",
             lambda c: ev(c, model=c.fx.not_a_model), says=("SavedModel",)),
        case("--model a run's pseudo-label directory", "refused",
             lambda c: ev(c, model=c.fx.runs["base"]), says=("SavedModel",), needs=("base",)),
        case("no flags", "refused", lambda c: [], says=("--teacher", "--data")),
        case("--data glob matching nothing", "refused",
             lambda c: ev(c, data=os.path.join(c.dir, "test-*.tfrecord")), says=("--data",)),
        flag("--input_range=0,255 on a [0,1] teacher", "--input_range=0,255",
             says=("--input_range",), expect=("warned", "refused"),
             check=eval_check(GOOD, "saturated images scored")),
        case("softmax teacher read as logits", ("warned", "refused"),
             lambda c: ev(c, model=c.fx.teacher_softmax), says=("--teacher_outputs",)),
        flag("--input_range=1 (one value)", "--input_range=1", says=("--input_range",)),
        flag("--temperature=0", "--temperature=0", says=("--temperature",)),
        flag("--batch_size=0", "--batch_size=0", says=("--batch_size",)),
        flag("misspelt flag --modle", "--modle=x", says=("--modle",)),
        bad_data("truncated --data file", lambda c: write_bytes(
            c.path("in", "part.tfrecord"),
            b"".join(frame(r) for r in c.fx.labeled_records)[:-100]),
            says=("part.tfrecord",), expect=("refused", "warned"),
            check=eval_check(GOOD, "a truncated file read to its end")),
        bad_data("--data record without a label", labeled_plus(
            lambda c: schema.image_example(c.fx.ref.encoded, b"u")), says=("label",),
            check=eval_check(GOOD + 1, "a record without a label counted")),
        bad_data("--data record with label 12", labeled_plus(
            lambda c: schema.image_example(c.fx.ref.encoded, b"t", label=12)),
            says=("label", "12"), check=eval_check(GOOD + 1, "label 12 counted")),
        bad_data("--data record with a corrupt PNG",
                 labeled_plus(schema.image_example(b"\x89PNG\r\n\x1a\njunk", b"bad", label=3)),
                 says=("part.tfrecord", "decode", "image"), expect=("refused", "warned"),
                 check=eval_check(GOOD + 1, "a corrupt image counted")),
        bad_data("--data pseudo-labels, not labeled data",
                 lambda c: os.path.join(c.fx.runs["base"], "pseudo_labels-*"),
                 says=("label",), expect=("refused", "warned"), needs=("base",),
                 check=eval_check(None, "the teacher's own labels scored as truth")),
    ]


def all_cases() -> list[Case]:
    return lab_cases() + rebalance_cases() + train_cases() + evaluate_cases()


# ---------------------------------------------------------------------------------------------
# Running and classing


NOISE = ("I0000 ", "W0000 ", "E0000 ", "WARNING: All log messages before absl::InitializeLog()")
EXCEPTION = re.compile(r"^([\w.]+\.)?\w*(Error|Exception|Exit)(:|$)")


def user_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's C++ start-up chatter and blank lines."""
    return [line.rstrip() for line in stderr.splitlines()
            if line.strip() and not line.startswith(NOISE)]


def error_line(stderr: str) -> str:
    """The line a user reads: the last error line (with the list a trailing colon announces),
    or after a traceback its exception line."""
    lines = user_lines(stderr)
    if not lines:
        return "(nothing on stderr)"
    for i in reversed(range(len(lines))):
        if ": error:" in lines[i] or lines[i].startswith("error:"):
            return " ".join(lines[i:]) if lines[i].endswith(":") else lines[i]
        if TRACEBACK in stderr and EXCEPTION.match(lines[i]):
            return lines[i]
    return lines[-1]


def refusal(case: Case, run: Run) -> Verdict:
    line = error_line(run.stderr)
    if case.says and not any(word.lower() in line.lower() for word in case.says):
        return "misleading", line
    return "refused", line


def beam_outcome(c: Ctx, run: Run, expected_read: int | None, max_fraction: float
                 ) -> tuple[Verdict | None, str, dict]:
    """What a Beam job's finished run says about all its inputs: a run-level verdict (refused, or
    an output that is inconsistent), else None; the line to show; the stats totals."""
    message = error_line(run.stderr)
    failure_exit = run.code == 1 and "--max_failure_fraction" in message
    if run.code != 0 and not failure_exit:
        return ("refused", message), message, {}
    if not os.path.exists(os.path.join(c.out, stats.STATS_FILE)):
        return ("silent", f"exit {run.code} without {stats.STATS_FILE}: {message}"), message, {}
    run_stats = stats.read_stats(c.out)
    t = run_stats["totals"]
    failed, read = t["failed_total"], t["read"]
    summary = (f"read {read}, failed {failed} ("
               + ", ".join(f"{k} {v}" for k, v in t["failed"].items() if v)
               + f"), scored {t['scored']}, written {t['written']}")
    problems = []
    try:
        stats.check_reconciles(run_stats)
    except AssertionError as e:
        problems.append(str(e))
    letters = count_records(os.path.join(c.out, "dead_letters-*"))
    if letters != failed:
        problems.append(f"{letters} dead letters for {failed} failed")
    if t["written"] <= 100_000:  # the default K writes 1.3M records: not re-read
        written = count_records(os.path.join(c.out, "pseudo_labels-*"))
        if written != t["written"]:
            problems.append(f"{written} records in the shards for {t['written']} written")
    if os.path.isdir(os.path.join(c.out, "predictions")):
        rows = len(table_rows(c.out))
        if rows != read:
            problems.append(f"{rows} table rows for {read} read")
    if problems:
        return ("silent", "; ".join(problems)), summary, t
    marked = os.path.exists(os.path.join(c.out, "_SUCCESS"))
    too_many = read > 0 and failed / read > max_fraction
    if marked and (too_many or failure_exit):
        return ("silent", f"marked complete with {failed} of {read} failed: {summary}"), summary, t
    if failure_exit and not too_many:
        return ("misleading", message), message, t
    if expected_read is not None and read != expected_read:
        lost = (f", {expected_read - read} lost without a count" if read < expected_read
                else "")
        return ("silent", f"exit {run.code}: {read} of {expected_read} records read{lost}: "
                f"{summary}"), summary, t
    return None, message if failure_exit else summary, t


def beam_verdict(case: Case, c: Ctx, run: Run) -> Verdict:
    expected_read = GOOD + case.bad if case.read is None else case.read
    verdict, line, t = beam_outcome(c, run, expected_read, 0.01)
    if verdict and verdict[0] == "refused":
        return refusal(case, run)
    if verdict:
        return verdict
    failed = t["failed_total"]
    if failed < case.bad:
        return "accepted-bad", f"{case.bad - failed} bad item(s) scored as images: {line}"
    if case.check:
        override = case.check(c, run)
        if override:
            return override
    if case.expect == ("refused",) and run.code == 0:
        return "accepted-bad", f"exit 0, the setting was used: {line}"
    return ("dead-letter" if failed else "ok"), line


def shared_verdicts(cases: Sequence[Case], c: Ctx, run: Run) -> list[Verdict]:
    """A shared run: refused or inconsistent as a whole, else each case by its own record."""
    verdict, _, _ = beam_outcome(c, run, None, 0.01)
    if verdict and verdict[0] == "refused":
        return [refusal(case, run) for case in cases]
    if verdict:
        return [verdict] * len(cases)
    return cases[0].shared.judge(c, run, cases)


def train_verdict(case: Case, c: Ctx, run: Run) -> Verdict:
    if run.code != 0:
        return refusal(case, run)
    if read_json(os.path.join(c.workdir, "result.json")) is None:
        return "silent", "exit 0 without result.json"
    line = next((s for s in reversed(run.stdout.splitlines()) if s.startswith("Trained")), "")
    if case.check:
        override = case.check(c, run)
        if override:
            return override
    if "ok" not in case.expect:
        return "accepted-bad", f"exit 0, trained and exported: {line}"
    return "ok", line


def evaluate_verdict(case: Case, c: Ctx, run: Run) -> Verdict:
    if run.code != 0:
        return refusal(case, run)
    result = eval_result(run)
    if result is None:
        return "silent", "exit 0 without a JSON result"
    line = f"top-1 {result['top1']:.3f} on {result['count']} images"
    if case.check:
        override = case.check(c, run)
        if override:
            return override
    if result["warnings"]:
        warning = result["warnings"][0]
        named = not case.says or any(w.lower() in warning.lower() for w in case.says)
        return ("warned" if named else "misleading"), f"{line}; WARNING {warning}"
    if "ok" not in case.expect:
        return "accepted-bad", f"exit 0, no warning: {line}"
    return "ok", line


VERDICTS = {"label_and_balance": beam_verdict, "rebalance": beam_verdict,
            "train": train_verdict, "evaluate": evaluate_verdict}


class Commands:
    """Runs a job's command line as a user types it, `python -m <module> argv` from the
    checkout: in a child of a `bench.preloaded` server (TensorFlow, Keras and Beam imported
    once), or with `spawn` in a fresh interpreter. The command, stdout and stderr are kept in the
    case's log directory."""

    def __init__(self, spawn: bool):
        self.env = {**os.environ, "PYTHONPATH": _ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.server = None if spawn else preloaded.Server(_ROOT, self.env)

    def run(self, job: str, argv: list[str], log_dir: str) -> Run:
        os.makedirs(log_dir)
        out, err = (os.path.join(log_dir, name) for name in ("stdout.txt", "stderr.txt"))
        write_bytes(os.path.join(log_dir, "command.txt"),
                    " ".join([MODULES[job], *argv]).encode())
        start = time.monotonic()
        if self.server:
            code = self.server.run(MODULES[job], argv, out, err, TIMEOUT)
        else:
            code = self._spawn(job, argv, out, err)
        with open(out) as o, open(err) as e:
            return Run(code, o.read(), e.read(), time.monotonic() - start)

    def _spawn(self, job: str, argv: list[str], out: str, err: str) -> int | None:
        with open(out, "w") as o, open(err, "w") as e, subprocess.Popen(
                [sys.executable, "-m", MODULES[job], *argv], cwd=_ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=o, stderr=e, start_new_session=True) as proc:
            try:
                return proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the job's own process group only
                proc.wait()
                return None

    def close(self) -> None:
        if self.server:
            self.server.close()


@dataclasses.dataclass
class Result:
    case: Case
    code: int | None
    outcome: str
    line: str
    seconds: float
    prism: bool = False

    @property
    def clean(self) -> bool:
        return self.outcome in self.case.expect


def run_unit(cases: Sequence[Case], fx: Fixtures, commands: Commands, directory: str
             ) -> list[Result]:
    """Runs one case, or the cases of one shared run, and classes what each user got."""
    c = Ctx(fx, directory)
    os.makedirs(c.dir)
    shared = cases[0].shared
    job = shared.job if shared else cases[0].job
    try:
        argv = shared.make(c, cases) if shared else cases[0].make(c)
    except Exception as e:  # noqa: BLE001 - a broken fixture is reported, not fatal
        return [Result(case, None, "setup-failed", f"{type(e).__name__}: {e}", 0.0)
                for case in cases]
    run = commands.run(job, argv, os.path.join(c.dir, "log"))
    if run.code is None:
        verdicts = [("timeout", f"killed after {TIMEOUT}s")] * len(cases)
    elif TRACEBACK in run.stderr:
        line = error_line(run.stderr)
        if ": error:" in line or line.startswith("error:"):
            line = "a traceback logged, then: " + line
        verdicts = [("traceback", line)] * len(cases)
    else:
        try:
            verdicts = (shared_verdicts(cases, c, run) if shared
                        else [VERDICTS[job](cases[0], c, run)])
        except Exception as e:  # noqa: BLE001 - an output the audit cannot read is a finding
            verdicts = [("silent", f"output unreadable: {type(e).__name__}: {e}")] * len(cases)
    prism = "Downloading prism" in run.stderr
    return [Result(case, run.code, outcome, line, run.seconds, prism)
            for case, (outcome, line) in zip(cases, verdicts)]


def base_run(fx: Fixtures, commands: Commands, name: str) -> str:
    """One label_and_balance run that other cases read, on its own copy of the good input;
    returns its --output_dir."""
    folder = "runs" if name in ("base", "topk") else "mutable"
    base = fx.path(folder, name)
    records = fx.good_records[::-1] if name == "topk" else fx.good_records
    source = write_records(os.path.join(base, "input", "part.tfrecord"), records)
    out = os.path.join(base, "out")
    run = commands.run("label_and_balance", [
        f"--input={source}", f"--teacher={fx.teacher}", f"--output_dir={out}",
        f"--images_per_class={K}", "--num_shards=2", *BASE_RUNS[name]],
        os.path.join(base, "log"))
    if run.code != 0:
        raise RuntimeError(f"base run {name} failed (exit {run.code}): {error_line(run.stderr)}")
    return out


def units_of(cases: Sequence[Case]) -> list[list[Case]]:
    """One unit per one-run case and one per shared run, in table order."""
    units: list[list[Case]] = []
    shared: dict[int, list[Case]] = {}
    for case in cases:
        if case.shared is None:
            units.append([case])
        elif id(case.shared) in shared:
            shared[id(case.shared)].append(case)
        else:
            shared[id(case.shared)] = [case]
            units.append(shared[id(case.shared)])
    return units


def run_all(cases: Sequence[Case], fx: Fixtures, commands: Commands) -> list[Result]:
    """Every case, PARALLEL subprocesses at a time: the base runs first, then the longest."""
    units = sorted(units_of(cases), key=lambda u: -max(case.cost for case in u))
    needed = sorted({name for case in cases for name in case.needs})
    done: dict[int, list[Result]] = {}
    failed_bases: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        bases = {name: pool.submit(base_run, fx, commands, name) for name in needed}
        numbered = {id(unit): i for i, unit in enumerate(units)}

        def submit(unit: list[Case]) -> concurrent.futures.Future:
            return pool.submit(run_unit, unit, fx, commands,
                               fx.path("cases", f"{numbered[id(unit)]:03d}"))

        futures = {submit(u): u for u in units if not any(c.needs for c in u)}
        for name, future in bases.items():
            try:
                fx.runs[name] = future.result()
            except RuntimeError as e:
                failed_bases[name] = str(e)
        for unit in units:
            needs = {name for case in unit for name in case.needs}
            broken = needs & set(failed_bases)
            if broken:
                done[id(unit)] = [Result(case, None, "setup-failed",
                                         failed_bases[sorted(broken)[0]], 0.0) for case in unit]
            elif needs:
                futures[submit(unit)] = unit
        total = len(cases)
        for future in concurrent.futures.as_completed(futures):
            unit = futures[future]
            done[id(unit)] = future.result()
            finished = sum(len(results) for results in done.values())
            for r in done[id(unit)]:
                print(f"[{finished}/{total}] {r.case.job}: {r.case.name}: {r.outcome} "
                      f"({r.seconds:.0f}s)", file=sys.stderr)
    by_case = {id(r.case): r for results in done.values() for r in results}
    return [by_case[id(case)] for case in cases]


def report(results: list[Result], seconds: float) -> None:
    name_width = max(len(r.case.name) for r in results)
    header = (f"{'case':<{name_width}}  {'job':<18} {'exit':>4}  {'outcome':<15} "
              f"{'expected':<20} line the user saw")
    print(header)
    print("-" * len(header))
    for r in results:
        job = r.case.job + ("*" if r.case.shared else "")
        code = "-" if r.code is None else str(r.code)
        outcome = r.outcome + ("" if r.clean else " <-")
        line = r.line if len(r.line) <= LINE_WIDTH else r.line[:LINE_WIDTH - 3] + "..."
        print(f"{r.case.name:<{name_width}}  {job:<18} {code:>4}  {outcome:<15} "
              f"{'|'.join(r.case.expect):<20} {line}")
    not_clean = [r for r in results if not r.clean]
    print("\n* one run shared by the cases of its group; the line is the record's own dead "
          "letter or table row. <- not the expected outcome.")
    print(f"\ncases tried: {len(results)}   handled cleanly (outcome as expected): "
          f"{len(results) - len(not_clean)}   not clean: {len(not_clean)}")
    counts = collections.Counter(r.outcome for r in results)
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for job in MODULES:
        mine = [r for r in results if r.case.job == job]
        if mine:
            print(f"  {job}: {len(mine)} tried, {sum(r.clean for r in mine)} clean")
    if not_clean:
        print("\nnot handled cleanly:")
        for r in not_clean:
            line = r.line if r.line.startswith("exit ") else f"exit {r.code}: {r.line}"
            print(f"  [{r.case.job}] {r.case.name}: {r.outcome} (expected "
                  f"{'|'.join(r.case.expect)}), {line}")
    runs = {id(r.case.shared) if r.case.shared else id(r): r.prism for r in results}
    prism = sum(runs.values())
    if prism:
        print(f"\nnote: in {prism} of the runs above Beam's DirectRunner first tried to download "
              "its Prism runner from GitHub (offline here, so it fell back at once).")
    print(f"\nwall time {seconds:.0f}s ({PARALLEL} subprocesses at a time)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="",
                        help="Run only the cases whose 'job: name' contains this substring.")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the temp dir (inputs, outputs, logs) and print where it is.")
    parser.add_argument("--spawn", action="store_true",
                        help="Start every command in a fresh interpreter instead of a child of "
                        "the bench.preloaded server (slower; checks that the outcomes match).")
    args = parser.parse_args(argv)
    cases = [case for case in all_cases()
             if args.only.lower() in f"{case.job}: {case.name}".lower()]
    if not cases:
        parser.error(f"no case matches --only={args.only}")
    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="ns-bad-inputs-")
    commands = Commands(args.spawn)  # the server imports while the teachers train
    try:
        print(f"building inputs and teachers in {root} ...", file=sys.stderr)
        results = run_all(cases, Fixtures(root), commands)
        report(results, time.monotonic() - started)
    finally:
        commands.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
