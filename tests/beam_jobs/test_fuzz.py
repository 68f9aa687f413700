"""Fuzz: hundreds of randomly corrupted records and files through label_and_balance.

Every record is accounted for: a good record in the readable part of a file is scored with its
label, a corrupted one is scored as it still decodes or is a dead letter, the unreadable rest
of a damaged file is one `damaged_file` dead letter, and the stats reconcile. No exception
escapes the job. The corruption is random but seeded, so a failure reproduces.
"""
from __future__ import annotations

import collections
import os

import numpy as np
import pyarrow.parquet as pq

from ns_data import predictions, read, schema, stats
from tests import fakes
from tests.beam_jobs.fake_runs import read_records, run_fake
from tests.data_files import write_tfrecord

FILES = 24
RECORDS_PER_FILE = 20
_HEADER, _FOOTER = 12, 4


def corrupt_record(record: bytes, image: bytes, rng: np.random.Generator) -> bytes | None:
    """A corrupted version of one input record, or None to keep it as it is."""
    kind = rng.integers(8)
    if kind == 0:  # flip a few bits anywhere in the Example
        data = bytearray(record)
        for at in rng.integers(len(data), size=rng.integers(1, 5)):
            data[at] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == 1:  # a cut Example
        return record[:rng.integers(len(record))]
    if kind == 2:  # random bytes
        return rng.bytes(int(rng.integers(1, 200)))
    if kind == 3:  # random bytes as the image
        return schema.image_example(rng.bytes(int(rng.integers(0, 200))), rng.bytes(6))
    if kind == 4:  # a truncated PNG
        return schema.image_example(image[:rng.integers(len(image))], rng.bytes(6))
    if kind == 5:  # bit flips in the PNG only
        data = bytearray(image)
        data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        return schema.image_example(bytes(data), rng.bytes(6))
    return None


def frames(records: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record's frame in a TFRecord file."""
    bounds, at = [], 0
    for record in records:
        bounds.append((at, at + _HEADER + len(record) + _FOOTER))
        at = bounds[-1][1]
    return bounds


def damage_file(path: str, records: list[bytes], rng: np.random.Generator) -> int | None:
    """Truncates the file inside a frame or flips one of its bytes; returns the first record
    that cannot be read (None: the file is left whole)."""
    kind = rng.integers(3)
    if kind == 0:
        return None
    bounds = frames(records)
    k = int(rng.integers(len(records)))
    start, end = bounds[k]
    at = int(rng.integers(start + 1, end)) if kind == 1 else int(rng.integers(start, end))
    data = bytearray(open(path, "rb").read())
    if kind == 1:
        del data[at:]
    else:
        data[at] ^= 1 << int(rng.integers(8))
    open(path, "wb").write(data)
    return k


def test_corrupted_records_and_files_are_all_accounted_for(tmp_path):
    rng = np.random.default_rng(20261201)
    (tmp_path / "in").mkdir()
    labels: dict[tuple[str, int], int] = {}  # (file, index) -> the class of a good image
    good: set[tuple[str, int]] = set()  # records left as they were
    expected_rows, damaged = {}, 0
    for f in range(FILES):
        path = str(tmp_path / "in" / f"part-{f:03d}.tfrecord")
        records = []
        for i in range(RECORDS_PER_FILE):
            image = fakes.fake_image(f * 1000 + i, int(rng.integers(fakes.NUM_CLASSES)),
                                     int(rng.integers(256)))
            record = schema.image_example(image.encoded, image.image_id)
            corrupted = corrupt_record(record, image.encoded, rng)
            labels[(path, i)] = image.label
            if corrupted is None:
                good.add((path, i))
            records.append(record if corrupted is None else corrupted)
        write_tfrecord(path, records)
        broken_at = damage_file(path, records, rng)
        readable = RECORDS_PER_FILE if broken_at is None else broken_at
        expected_rows[path] = readable + (broken_at is not None)
        damaged += broken_at is not None
        good -= {(path, i) for i in range(readable, RECORDS_PER_FILE)}
    (tmp_path / "in" / "empty.tfrecord").write_bytes(b"")
    (tmp_path / "in" / "notes.tfrecord").write_text("not a tfrecord at all\n" * 50)
    expected_rows[str(tmp_path / "in" / "notes.tfrecord")] = 1
    damaged += 1
    corrupted = FILES * RECORDS_PER_FILE - len(good)
    assert corrupted >= 200 and damaged >= 8  # what this test promises to cover

    output_dir, run_stats = run_fake(tmp_path, [], f"--input={tmp_path}/in/*",
                                     "--images_per_class=10000", "--min_confidence=0",
                                     "--no_duplicate", "--label_type=hard")

    table = pq.read_table(os.path.join(output_dir, "predictions")).to_pylist()
    assert collections.Counter(r[predictions.SOURCE] for r in table) == expected_rows
    failed_by_stage = collections.Counter(r[predictions.ERROR_STAGE] for r in table
                                          if r[predictions.ERROR_STAGE])
    assert failed_by_stage["damaged_file"] == damaged
    for r in table:
        key = (r[predictions.SOURCE], r[predictions.INDEX])
        if key in good:  # a good record is never lost, and keeps its label
            assert r[predictions.ERROR_STAGE] is None and r[predictions.LABEL] == labels[key]
        elif r[predictions.ERROR_STAGE] is None:  # a corrupted one that still decodes
            assert r[predictions.LABEL] == labels[key]
        assert r[predictions.ERROR_STAGE] is not None or r[predictions.ERROR_MESSAGE] is None
    totals = run_stats["totals"]
    assert totals["read"] == len(table) == sum(expected_rows.values())
    assert totals["failed"] == {stage: failed_by_stage[stage] for stage in totals["failed"]}
    assert totals["scored"] >= len(good)
    stats.check_reconciles(run_stats)
    letters = [schema.parse_example(r) for r in read_records(output_dir, "dead_letters")]
    assert len(letters) == totals["failed_total"]
    assert all(d[schema.ERROR_MESSAGE][0] for d in letters)
    written = [schema.parse_pseudo_label(r) for r in read_records(output_dir)]
    assert len(written) == totals["written"] == totals["scored"]  # min_confidence 0, no cap
    # The launch check's sample reader walks the same damage without raising.
    sample = list(read.encoded_images(f"{tmp_path}/in/*", "tfrecord"))
    assert len(sample) == totals["read"] - totals["failed"]["parse"] - damaged
