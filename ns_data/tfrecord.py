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


def iter_records(path: str) -> Iterator[bytes]:
    """Yields the records of one TFRecord file in order (compression from the file suffix).

    Raises:
      CorruptRecordError: naming the file, the record index and the byte offset where the file
        stops being readable.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        index = offset = 0
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise CorruptRecordError(path, index, offset, "is truncated (incomplete header)")
            length, length_crc = _HEADER.unpack(header)
            if masked_crc(header[:8]) != length_crc:
                raise CorruptRecordError(path, index, offset, "has a corrupt length (checksum "
                                         "mismatch: damaged, or not a TFRecord file)")
            data = f.read(length)
            footer = f.read(_FOOTER.size)
            if len(data) < length or len(footer) < _FOOTER.size:
                raise CorruptRecordError(path, index, offset,
                                         f"is truncated ({len(data)} of {length} bytes)")
            if masked_crc(data) != _FOOTER.unpack(footer)[0]:
                raise CorruptRecordError(path, index, offset,
                                         "is corrupt (data checksum mismatch)")
            yield data
            index += 1
            offset += _HEADER.size + length + _FOOTER.size
