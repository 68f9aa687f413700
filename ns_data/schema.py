"""The one record schema: every feature name and dtype of every record the toolkit reads or writes.

Three kinds of `tf.train.Example` records share these names:

* **Input images** (labeled or unlabeled): `image/encoded` (JPEG/PNG bytes, required),
  `image/id` (bytes, optional) and, for labeled data, `label` (int64, the true class).
* **Pseudo-labeled images** written by `beam_jobs.label_and_balance`: `image/encoded`,
  `image/id`, `label` (teacher argmax), `confidence` (top-1 probability), `copy` (0 for the
  original, 1.. for duplicates), plus the soft target for `--label_type=soft` (`probabilities`)
  or `--label_type=soft_topk` (`topk/classes` + `topk/probs`, renormalised).
* **Dead letters**: `image/id`, `image/encoded` (when there were bytes), `error/stage`,
  `error/message`.

The writer, the trainer's parser and the tests all use this module; nothing else spells a
feature name.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ns_data.lazy import tf

IMAGE_ENCODED = "image/encoded"
IMAGE_ID = "image/id"
LABEL = "label"
CONFIDENCE = "confidence"
COPY = "copy"
PROBABILITIES = "probabilities"
TOPK_CLASSES = "topk/classes"
TOPK_PROBS = "topk/probs"
ERROR_STAGE = "error/stage"
ERROR_MESSAGE = "error/message"


class LabelType(str, enum.Enum):
    """Which target a pseudo-labeled record carries besides its hard `label`."""

    HARD = "hard"
    SOFT = "soft"
    SOFT_TOPK = "soft_topk"


@dataclasses.dataclass(frozen=True)
class PseudoLabel:
    """One pseudo-labeled record, as written and as parsed back."""

    image_id: bytes
    encoded: bytes
    label: int
    confidence: float
    copy: int = 0
    probabilities: tuple[float, ...] | None = None
    topk_classes: tuple[int, ...] | None = None
    topk_probs: tuple[float, ...] | None = None


def content_id(encoded: bytes) -> bytes:
    """The default image id: a content hash, so re-reading the same bytes gives the same id."""
    return b"sha256:" + hashlib.sha256(encoded).hexdigest()[:32].encode()


# Records are written by a protobuf wire encoder of their own: the bytes
# `tf.train.Example(...).SerializeToString(deterministic=True)` gives (map entries sorted by key,
# packed int64 and float lists; tests/ns_data/test_schema.py checks it on random records), at
# under half its cost per record. deterministic=True matters there: the map's wire order is
# otherwise the protobuf backend's iteration order, which differs between processes.
_ONE_BYTE = [bytes((n,)) for n in range(128)]
_UINT64 = (1 << 64) - 1
_FLOAT32 = struct.Struct("<f")
_LEN_1 = b"\x0a"  # field 1, length-delimited: Example.features, Features' map entries, keys,
_LEN_2 = b"\x12"  # BytesList/packed lists' values; field 2: an entry's Feature, float_list;
_LEN_3 = b"\x1a"  # field 3: int64_list
_KEYS: dict[str, bytes] = {}


def _varint(n: int) -> bytes:
    if n < 128:
        return _ONE_BYTE[n]
    if n < 1 << 14:  # most lengths: images up to 16 KiB, the Features of small images
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 1 << 21:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 128 else _varint(size)) + payload


def _bytes(values: Sequence[bytes]) -> bytes:
    """A Feature of a BytesList, encoded."""
    return _field(_LEN_1, b"".join([_field(_LEN_1, v) for v in values]))


def _ints(values: Sequence[int]) -> bytes:
    """A Feature of an Int64List, encoded (negative values as 10-byte varints)."""
    packed = b"".join([_varint(int(v) & _UINT64) for v in values])
    return _field(_LEN_3, _field(_LEN_1, packed) if packed else b"")


def _floats(values: Sequence[float] | np.ndarray) -> bytes:
    """A Feature of a FloatList, encoded (values rounded to float32 as protobuf does)."""
    packed = (_FLOAT32.pack(values[0]) if len(values) == 1
              else np.asarray(values, dtype="<f4").tobytes())
    return _field(_LEN_2, _field(_LEN_1, packed) if packed else b"")


def _entry(name: str, *value: bytes) -> list[bytes]:
    """One entry of the Features map, its encoded Feature given in pieces, as pieces to join."""
    return [*_entry_head(name, sum(map(len, value))), *value]


def _entry_head(name: str, size: int) -> list[bytes]:
    """The pieces of an entry of the Features map that come before its encoded Feature of
    `size` bytes."""
    key = _KEYS.get(name) or _KEYS.setdefault(name, _field(_LEN_1, name.encode()) + _LEN_2)
    value_size = _varint(size)
    return [_LEN_1, _varint(len(key) + len(value_size) + size), key, value_size]


@functools.lru_cache(maxsize=1 << 16)
def _bytes_entry_head(name: str, size: int) -> bytes:
    """The entry of a feature of one bytes value of `size` bytes, but for the value: the value
    follows it (so an image's bytes are copied once, into the record). Cached: ids of one
    length and images of one size repeat."""
    value_size = _varint(size)
    list_size = 1 + len(value_size) + size  # the BytesList: its one value
    list_head = _varint(list_size)
    return b"".join([*_entry_head(name, 1 + len(list_head) + list_size),  # the Feature
                     _LEN_1, list_head, _LEN_1, value_size])


def _example(features: dict[str, bytes]) -> bytes:
    """A serialized tf.train.Example of encoded Features by name, in key order.

    The pieces are joined once, so an image's bytes are copied once into the record.
    """
    pieces: list[bytes] = []
    for name in sorted(features):
        pieces += _entry(name, features[name])
    return _joined(pieces)


def _joined(entries: list[bytes]) -> bytes:
    """The Example whose Features map is these entries' pieces."""
    return b"".join([_LEN_1, _varint(sum(map(len, entries))), *entries])


def image_example(encoded: bytes, image_id: bytes | None = None, label: int | None = None) -> bytes:
    """Serializes an input image record (unlabeled, or labeled when `label` is given)."""
    features = {IMAGE_ENCODED: _bytes([encoded])}
    if image_id is not None:
        features[IMAGE_ID] = _bytes([image_id])
    if label is not None:
        features[LABEL] = _ints([label])
    return _example(features)


def topk_target(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes (ties to the lower class id) and their renormalised probs."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    k = min(k, probabilities.shape[-1])
    classes = np.argsort(-probabilities, kind="stable")[:k]
    probs = probabilities[classes].astype(np.float64)
    total = probs.sum()
    probs = probs / total if total > 0 else np.full(k, 1.0 / k)
    return classes.astype(np.int64), probs.astype(np.float32)


def pseudo_label_example(
    image_id: bytes,
    encoded: bytes,
    probabilities: np.ndarray,
    label_type: LabelType,
    copy: int = 0,
    topk: int = 10,
) -> bytes:
    """Serializes one pseudo-labeled record from the teacher's probabilities.

    Args:
      image_id: the stable image id.
      encoded: the original encoded image bytes (never re-encoded).
      probabilities: the teacher's probability vector for this image.
      label_type: which soft target to add besides the hard label.
      copy: 0 for the original record, 1.. for duplicates made by balancing.
      topk: number of classes kept for `LabelType.SOFT_TOPK`.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    label = int(np.argmax(probabilities))
    return pseudo_label_records(image_id, encoded, label, probabilities[label],
                                soft_target(probabilities, label_type, topk), [copy])[0]


# The features of a pseudo-label record in key order (the order they are serialized in).
_PSEUDO_LABEL_FEATURES = (CONFIDENCE, COPY, IMAGE_ENCODED, IMAGE_ID, LABEL, PROBABILITIES,
                          TOPK_CLASSES, TOPK_PROBS)
assert list(_PSEUDO_LABEL_FEATURES) == sorted(_PSEUDO_LABEL_FEATURES)


def soft_target(probabilities: np.ndarray, label_type: LabelType, topk: int = 10) -> list[bytes]:
    """The encoded soft-target features of a pseudo-label record (none for hard labels), as
    pieces for `pseudo_label_records`."""
    label_type = LabelType(label_type)
    if label_type is LabelType.SOFT:
        return _entry(PROBABILITIES, _floats(np.asarray(probabilities, dtype=np.float32)))
    if label_type is LabelType.SOFT_TOPK:
        classes, probs = topk_target(probabilities, topk)
        return _entry(TOPK_CLASSES, _ints(classes)) + _entry(TOPK_PROBS, _floats(probs))
    return []


def pseudo_label_records(image_id: bytes, encoded: bytes, label: int, confidence: float,
                         target: list[bytes], copies: Iterable[int]) -> list[bytes]:
    """The records of one image's `copies`: for each copy the bytes of `pseudo_label_example`,
    with the features the copies share encoded once and the image's bytes copied once into each
    record.

    Args:
      label, confidence: the teacher's argmax class and its probability.
      target: `soft_target(...)` of the teacher's probabilities.
    """
    first = _CONFIDENCE_ENTRY + _FLOAT32.pack(confidence)
    rest = [_bytes_entry_head(IMAGE_ENCODED, len(encoded)), encoded,
            _bytes_entry_head(IMAGE_ID, len(image_id)) + image_id, _int_entry(LABEL, label),
            *target]
    size = len(first) + sum(map(len, rest))
    records = []
    for copy in copies:
        copy_entry = _int_entry(COPY, copy)
        records.append(b"".join([_LEN_1, _varint(size + len(copy_entry)), first, copy_entry,
                                 *rest]))
    return records


# The confidence entry but for its last 4 bytes, the float32 value.
_CONFIDENCE_ENTRY = b"".join(_entry(CONFIDENCE, _floats([0.0])))[:-4]


@functools.lru_cache(maxsize=1 << 14)
def _int_entry(name: str, value: int) -> bytes:
    """The entry of a one-int64 feature (labels and copy numbers repeat: cached)."""
    return b"".join(_entry(name, _ints([value])))


def dead_letter_example(stage: str, image_id: bytes, encoded: bytes | None, message: str) -> bytes:
    """Serializes a dead-letter record: what failed, where, and the bytes to reproduce it."""
    features = {
        IMAGE_ID: _bytes([image_id]),
        ERROR_STAGE: _bytes([stage.encode()]),
        ERROR_MESSAGE: _bytes([message.encode("utf-8", "replace")]),
    }
    if encoded is not None:
        features[IMAGE_ENCODED] = _bytes([encoded])
    return _example(features)


def parse_example(serialized: bytes) -> dict[str, list[Any]]:
    """Parses any record of this schema into {feature name: list of values} (no TF graph)."""
    example = tf.train.Example.FromString(serialized)
    parsed: dict[str, list[Any]] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        parsed[name] = list(getattr(feature, kind).value) if kind else []
    return parsed


def image_features(serialized: bytes) -> tuple[bytes | None, bytes] | None:
    """(image id or None when the record has no `image/id`, encoded bytes) of an image record
    whose `image/encoded` is one non-empty bytes value and whose `image/id`, if any, is one
    non-empty bytes value; None for any other record (unparsable, or features of another shape),
    which `parse_example` then reads in full. About twice as fast as `parse_example`: only the
    two features are looked at, whatever else the record holds."""
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except Exception:  # noqa: BLE001 - the full parse names the problem
        return None
    encoded = feature.get(IMAGE_ENCODED)
    values = encoded.bytes_list.value if encoded is not None else ()
    if len(values) != 1 or not values[0]:
        return None
    image_id = feature.get(IMAGE_ID)
    if image_id is None:
        return None, values[0]
    ids = image_id.bytes_list.value
    return (ids[0], values[0]) if len(ids) == 1 and ids[0] else None


def parse_pseudo_label(serialized: bytes) -> PseudoLabel:
    """Parses a pseudo-labeled record back into a `PseudoLabel`."""
    f = parse_example(serialized)

    def optional(name: str, cast: type) -> tuple | None:
        return tuple(cast(v) for v in f[name]) if name in f else None

    return PseudoLabel(
        image_id=f[IMAGE_ID][0],
        encoded=f[IMAGE_ENCODED][0],
        label=int(f[LABEL][0]),
        confidence=float(f[CONFIDENCE][0]),
        copy=int(f[COPY][0]),
        probabilities=optional(PROBABILITIES, float),
        topk_classes=optional(TOPK_CLASSES, int),
        topk_probs=optional(TOPK_PROBS, float),
    )


def tf_feature_spec() -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    """Feature spec for `tf.io.parse_example` that reads any image or pseudo-label record.

    Optional scalars get defaults (`label` -1, `confidence` 1, `copy` 0, `image/id` empty); the
    soft targets are ragged so one spec reads hard, soft and soft_topk records alike.
    """
    return {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        CONFIDENCE: tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
        COPY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        PROBABILITIES: tf.io.RaggedFeature(tf.float32),
        TOPK_CLASSES: tf.io.RaggedFeature(tf.int64),
        TOPK_PROBS: tf.io.RaggedFeature(tf.float32),
    }


def dense_targets(parsed: dict[str, tf.Tensor], num_classes: int) -> tf.Tensor:
    """Dense [N, num_classes] training targets from a batch parsed with `tf_feature_spec`.

    Each row uses the richest target its record carries: dense probabilities, else the top-k
    classes scattered into a dense vector, else a one-hot of `label`. Works in-graph.

    Raises:
      tf.errors.InvalidArgumentError: when a record has no label in 0..num_classes-1 (e.g. an
        unlabeled record given as labeled data), or soft targets of another width.
    """
    labels = parsed[LABEL]
    checks = [
        tf.debugging.assert_non_negative(
            labels, message=f"a record has no {LABEL!r}: labeled data must carry the class"),
        tf.debugging.assert_less(
            labels, tf.constant(num_classes, labels.dtype),
            message=f"a record's {LABEL!r} is not below num_classes={num_classes}"),
        tf.debugging.assert_equal(
            tf.reduce_all((parsed[PROBABILITIES].row_lengths() == 0)
                          | (parsed[PROBABILITIES].row_lengths() == num_classes)), True,
            message=f"{PROBABILITIES!r} width differs from num_classes={num_classes}"),
        tf.debugging.assert_less(
            parsed[TOPK_CLASSES].flat_values, tf.constant(num_classes, tf.int64),
            message=f"{TOPK_CLASSES!r} has a class not below num_classes={num_classes}"),
    ]
    with tf.control_dependencies(checks):
        labels = tf.identity(labels)
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    probs = parsed[PROBABILITIES]
    has_probs = probs.row_lengths() > 0
    dense_probs = probs.to_tensor(shape=[None, num_classes])
    classes, topk_probs = parsed[TOPK_CLASSES], parsed[TOPK_PROBS]
    has_topk = classes.row_lengths() > 0
    dense_topk = tf.math.unsorted_segment_sum(
        topk_probs.flat_values,
        tf.cast(classes.value_rowids(), tf.int64) * num_classes + classes.flat_values,
        tf.size(labels, out_type=tf.int64) * num_classes,
    )
    dense_topk = tf.reshape(dense_topk, [-1, num_classes])
    sparse_or_hard = tf.where(has_topk[:, tf.newaxis], dense_topk, one_hot)
    return tf.where(has_probs[:, tf.newaxis], dense_probs, sparse_or_hard)
