"""TFRecord files read record by record, with each record's index, on any Beam filesystem.

The predictions table names every image by (input file, record index), and the writing pass finds
its bytes again by that index, so both passes must count records the same way. Beam's
`ReadFromTFRecord` yields records without their position; this reader yields them in file order
and checks each frame's masked CRC-32C like TensorFlow's reader does.

Frame layout: uint64 length, uint32 masked crc32c(length), data, uint32 masked crc32c(data).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(ValueError):
    """A TFRecord frame that cannot be read: truncated, or its checksum does not match.

    Nothing after it can be read either (the next frame's position is unknown), so a reader that
    keeps going keeps the `index` records before it and reports the rest of the file as lost.

    Attributes:
      path: the file.
      index: the damaged record's position, = the number of records read before it.
      offset: its byte offset.
    """

    def __init__(self, path: str, index: int, offset: int, problem: str):
        super().__init__(f"{path}: record {index} at byte {offset} {problem}")
        self.path = path
        self.index = index
        self.offset = offset
        self.problem = problem

    def __reduce__(self):  # pickled by Beam with its own arguments, not the message
        return CorruptRecordError, (self.path, self.index, self.offset, self.problem)


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """`record` as one TFRecord frame: the bytes `tf.io.TFRecordWriter` writes for it.

    Writers that batch records frame them where they are made, so a file is then written with
    a few large writes instead of one writer call per record; frames concatenate into a file.
    """
    size = len(record)
    head = _HEADS.get(size)
    if head is None:  # lengths repeat (small images): their header and its checksum too
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        length = _LENGTH.pack(size)
        head = _HEADS[size] = length + _FOOTER.pack(masked_crc(length))
    return b"".join((head, record, _FOOTER.pack(masked_crc(record))))


def frame_data(framed: bytes | memoryview) -> bytes:
    """The record one whole frame holds (`frame`'s inverse, without checking it)."""
    return bytes(framed[_HEADER.size:len(framed) - _FOOTER.size])


_LENGTH = struct.Struct("<Q")
_HEADS: dict[int, bytes] = {}
_MAX_HEADS = 1 << 16


def iter_records(path: str) -> Iterator[bytes]:
    """Yields the records of one TFRecord file in order (compression from the file suffix).

    The file is read in blocks of `_BLOCK` bytes (a record larger than that in one piece), and
    the frames are cut from the block: a few reads per megabyte rather than three per record.

    Raises:
      CorruptRecordError: naming the file, the record index and the byte offset where the file
        stops being readable.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        buffer, at, index, offset = b"", 0, 0, 0
        while True:
            if len(buffer) - at < _HEADER.size:
                buffer, at = _refill(f, buffer, at, _HEADER.size), 0
                if not buffer:
                    return
                if len(buffer) < _HEADER.size:
                    raise CorruptRecordError(path, index, offset,
                                             "is truncated (incomplete header)")
            length, length_crc = _HEADER.unpack_from(buffer, at)
            if masked_crc(buffer[at:at + 8]) != length_crc:
                raise CorruptRecordError(path, index, offset, "has a corrupt length (checksum "
                                         "mismatch: damaged, or not a TFRecord file)")
            size = _HEADER.size + length + _FOOTER.size
            if len(buffer) - at < size:
                buffer, at = _refill(f, buffer, at, size), 0
                if len(buffer) < size:
                    got = min(length, len(buffer) - _HEADER.size)
                    raise CorruptRecordError(path, index, offset,
                                             f"is truncated ({got} of {length} bytes)")
            data = buffer[at + _HEADER.size:at + _HEADER.size + length]
            if masked_crc(data) != _FOOTER.unpack_from(buffer, at + size - _FOOTER.size)[0]:
                raise CorruptRecordError(path, index, offset,
                                         "is corrupt (data checksum mismatch)")
            yield data
            index += 1
            offset += size
            at += size


_BLOCK = 1 << 20
_MAX_READ = 64 << 20


def _refill(f, buffer: bytes, at: int, wanted: int) -> bytes:
    """`buffer[at:]` and the file's next bytes: `_BLOCK` more, or up to `wanted` bytes in all
    if that is more (a record larger than a block), fewer only where the file ends. Reads at
    most `_MAX_READ` bytes at a time, so a damaged length that passed its checksum (2^62 bytes)
    reads to the end of the file and is reported truncated, not a failed allocation."""
    parts, have = [buffer[at:]], len(buffer) - at
    need = max(wanted - have, _BLOCK)
    while have < wanted:
        block = f.read(min(need, _MAX_READ))
        if not block:
            break
        parts.append(block)
        have += len(block)
        need -= len(block)
    return b"".join(parts)
