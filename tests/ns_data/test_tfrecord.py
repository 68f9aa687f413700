"""The indexed TFRecord reader agrees with TensorFlow's and names the file when it cannot read."""
from __future__ import annotations

import gzip
import itertools
import struct

import pytest

from ns_data import tfrecord
from ns_data.tfrecord import CorruptRecordError, frame, frame_data, iter_records, masked_crc
from tests.data_files import write_tfrecord

RECORDS = [b"", b"a", b"record-%d" % 7 * 100, bytes(range(256)) * 40]


def test_reads_what_tensorflow_writes(tmp_path):
    path = write_tfrecord(tmp_path / "a.tfrecord", RECORDS)
    assert list(iter_records(path)) == RECORDS
    assert list(iter_records(write_tfrecord(tmp_path / "empty.tfrecord", []))) == []


def test_reads_gzip_by_suffix(tmp_path):
    path = write_tfrecord(tmp_path / "a.tfrecord.gz", RECORDS, options="GZIP")
    with gzip.open(path) as f:
        assert f.read(1) is not None  # really gzip
    assert list(iter_records(path)) == RECORDS


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-3], r"record 3 at byte 849 is truncated \(10240 of 10240 bytes\)"),
    (lambda b: b[:-5000], r"record 3 at byte 849 is truncated \(5244 of 10240 bytes\)"),
    (lambda b: b[:855], r"record 3 at byte 849 is truncated \(incomplete header\)"),
    (lambda b: b[:5], r"record 0 at byte 0 is truncated \(incomplete header\)"),
    # Records 0 and 1 take 16 and 17 bytes; byte 50 is in record 2's data.
    (lambda b: b[:50] + bytes([b[50] ^ 1]) + b[51:], r"record 2 at byte 33 is corrupt"),
    (lambda b: b"not a tfrecord at all, just text", r"record 0 at byte 0 has a corrupt length"),
])
def test_damage_is_reported_with_path_record_and_offset(tmp_path, damage, match):
    good = write_tfrecord(tmp_path / "ok.tfrecord", RECORDS)
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(damage(open(good, "rb").read()))
    with pytest.raises(CorruptRecordError, match=str(path) + ": " + match):
        list(iter_records(str(path)))


def test_frame_is_what_tensorflow_writes(tmp_path):
    records = RECORDS + [b"x" * 300, b"y" * 300, b"z" * 70_000]  # a repeated length, a long one
    path = write_tfrecord(tmp_path / "a.tfrecord", records)
    assert b"".join(map(frame, records)) == open(path, "rb").read()
    assert [frame_data(memoryview(frame(r))) for r in records] == records


@pytest.mark.parametrize("block", [1, 13, 64, 1 << 20])
def test_every_cut_keeps_the_whole_records_before_it(tmp_path, monkeypatch, block):
    """Cut at every byte, read in blocks of every size: exactly the records wholly before the
    cut are read, and the error names the next one's index and offset."""
    monkeypatch.setattr(tfrecord, "_BLOCK", block)
    records = [b"", b"ab", b"c" * 40, b"d" * 7]
    whole = b"".join(map(frame, records))
    ends = list(itertools.accumulate(len(frame(r)) for r in records))
    path = tmp_path / "cut.tfrecord"
    for cut in range(len(whole) + 1):
        path.write_bytes(whole[:cut])
        n = sum(end <= cut for end in ends)
        got = []
        try:
            for record in iter_records(str(path)):
                got.append(record)
        except CorruptRecordError as e:
            assert (e.index, e.offset) == (n, ([0] + ends)[n]) and "truncated" in e.problem
        else:
            assert cut in (0, *ends)
        assert got == records[:n], cut


@pytest.mark.parametrize("length", [1 << 33, 1 << 62, (1 << 64) - 1])
def test_a_huge_length_with_a_right_checksum_is_a_truncated_record(tmp_path, length):
    """Damage that leaves the length's checksum right (or a file made so) names the record
    instead of failing to allocate the bytes it claims."""
    head = struct.pack("<Q", length)
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(frame(b"abc") + head + struct.pack("<I", masked_crc(head)) + b"xyz" * 10)
    got = []
    with pytest.raises(CorruptRecordError, match=rf"record 1 at byte 19 is truncated "
                                                 rf"\(30 of {length} bytes\)"):
        for record in iter_records(str(path)):
            got.append(record)
    assert got == [b"abc"]
