"""Tests for the record schema in `ns_data/schema.py`: every record kind round-trips."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ns_data import schema

ENCODED = b"\x89PNG fake image bytes"
IMAGE_ID = b"img-0001"


def f32(values) -> tuple[float, ...]:
    """What a float list feature gives back: each value rounded to float32."""
    return tuple(float(v) for v in np.asarray(values, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Input images and dead letters
# --------------------------------------------------------------------------------------------

def test_image_example_round_trip_labeled():
    parsed = schema.parse_example(schema.image_example(ENCODED, IMAGE_ID, label=7))
    assert parsed == {schema.IMAGE_ENCODED: [ENCODED], schema.IMAGE_ID: [IMAGE_ID],
                      schema.LABEL: [7]}


def test_image_example_round_trip_unlabeled_without_id():
    parsed = schema.parse_example(schema.image_example(ENCODED))
    assert parsed == {schema.IMAGE_ENCODED: [ENCODED]}


def test_image_example_keeps_label_zero():
    # 0 is a real class: it must not be dropped as "falsy".
    assert schema.parse_example(schema.image_example(ENCODED, label=0))[schema.LABEL] == [0]


def test_dead_letter_example_fields():
    parsed = schema.parse_example(
        schema.dead_letter_example("decode", IMAGE_ID, ENCODED, "bad PNG: crc ✗"))
    assert parsed == {
        schema.IMAGE_ID: [IMAGE_ID],
        schema.IMAGE_ENCODED: [ENCODED],
        schema.ERROR_STAGE: [b"decode"],
        schema.ERROR_MESSAGE: ["bad PNG: crc ✗".encode("utf-8")],
    }


def test_dead_letter_example_without_bytes_has_no_image_feature():
    parsed = schema.parse_example(schema.dead_letter_example("parse", IMAGE_ID, None, "no image"))
    assert set(parsed) == {schema.IMAGE_ID, schema.ERROR_STAGE, schema.ERROR_MESSAGE}
    assert parsed[schema.ERROR_STAGE] == [b"parse"]
    assert parsed[schema.ERROR_MESSAGE] == [b"no image"]


def test_content_id_is_stable_and_distinct():
    a1, a2 = schema.content_id(b"image a"), schema.content_id(b"image a")
    b = schema.content_id(b"image b")
    assert a1 == a2
    assert a1 != b
    assert a1.startswith(b"sha256:")
    digest = a1[len(b"sha256:"):]
    assert len(digest) == 32
    int(digest, 16)  # hex


# --------------------------------------------------------------------------------------------
# Pseudo labels
# --------------------------------------------------------------------------------------------

PROBS = np.array([0.1, 0.25, 0.05, 0.4, 0.2], dtype=np.float32)


def test_hard_pseudo_label_round_trip():
    record = schema.pseudo_label_example(IMAGE_ID, ENCODED, PROBS, schema.LabelType.HARD, copy=2)
    assert schema.parse_pseudo_label(record) == schema.PseudoLabel(
        image_id=IMAGE_ID, encoded=ENCODED, label=3, confidence=float(np.float32(0.4)), copy=2)


def test_label_type_accepts_its_string_value():
    by_enum = schema.pseudo_label_example(IMAGE_ID, ENCODED, PROBS, schema.LabelType.SOFT)
    by_str = schema.pseudo_label_example(IMAGE_ID, ENCODED, PROBS, "soft")
    assert by_enum == by_str


def test_soft_pseudo_label_round_trip():
    pl = schema.parse_pseudo_label(
        schema.pseudo_label_example(IMAGE_ID, ENCODED, PROBS, schema.LabelType.SOFT))
    assert pl.label == 3
    assert pl.confidence == float(np.float32(0.4))
    assert pl.copy == 0
    assert pl.probabilities == f32(PROBS)
    assert pl.topk_classes is None and pl.topk_probs is None


def test_confidence_is_exactly_the_float32_max_probability():
    probs = np.array([1 / 3, 2 / 3], dtype=np.float64)
    pl = schema.parse_pseudo_label(
        schema.pseudo_label_example(IMAGE_ID, ENCODED, probs, schema.LabelType.HARD))
    assert pl.label == 1
    assert pl.confidence == float(np.float32(2 / 3))


def test_argmax_tie_goes_to_lower_class():
    probs = np.array([0.1, 0.45, 0.45], dtype=np.float32)
    pl = schema.parse_pseudo_label(
        schema.pseudo_label_example(IMAGE_ID, ENCODED, probs, schema.LabelType.HARD))
    assert pl.label == 1


@pytest.mark.parametrize("probs, k, classes", [
    ([0.1, 0.25, 0.05, 0.4, 0.2], 2, (3, 1)),
    ([0.1, 0.25, 0.05, 0.4, 0.2], 3, (3, 1, 4)),
    # Ties break towards the lower class id, also across the k boundary.
    ([0.2, 0.1, 0.2, 0.2, 0.3], 2, (4, 0)),
    ([0.2, 0.1, 0.2, 0.2, 0.3], 3, (4, 0, 2)),
    ([0.25, 0.25, 0.25, 0.25], 2, (0, 1)),
    # k larger than the class count keeps every class.
    ([0.1, 0.6, 0.3], 10, (1, 2, 0)),
])
def test_soft_topk_round_trip(probs, k, classes):
    probs = np.asarray(probs, dtype=np.float32)
    pl = schema.parse_pseudo_label(schema.pseudo_label_example(
        IMAGE_ID, ENCODED, probs, schema.LabelType.SOFT_TOPK, copy=1, topk=k))
    assert pl.label == classes[0]
    assert pl.confidence == float(probs.max())
    assert pl.copy == 1
    assert pl.probabilities is None
    assert pl.topk_classes == classes
    kept = probs[list(classes)].astype(np.float64)
    np.testing.assert_allclose(pl.topk_probs, kept / kept.sum(), rtol=1e-6)
    assert sum(pl.topk_probs) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# The trainer's view: tf.io.parse_example + dense_targets
# --------------------------------------------------------------------------------------------

def test_parse_example_and_dense_targets_on_mixed_batch():
    num_classes = 5
    p_hard = np.array([0.1, 0.6, 0.1, 0.1, 0.1], dtype=np.float32)
    p_soft = np.array([0.05, 0.15, 0.2, 0.5, 0.1], dtype=np.float32)
    p_topk = np.array([0.3, 0.05, 0.1, 0.15, 0.4], dtype=np.float32)
    records = [
        schema.pseudo_label_example(b"hard", b"e0", p_hard, schema.LabelType.HARD, copy=1),
        schema.pseudo_label_example(b"soft", b"e1", p_soft, schema.LabelType.SOFT),
        schema.pseudo_label_example(b"topk", b"e2", p_topk, schema.LabelType.SOFT_TOPK, topk=3),
        schema.image_example(b"e3", label=2),
    ]
    parsed = tf.io.parse_example(tf.constant(records), schema.tf_feature_spec())

    assert parsed[schema.IMAGE_ENCODED].numpy().tolist() == [b"e0", b"e1", b"e2", b"e3"]
    assert parsed[schema.IMAGE_ID].numpy().tolist() == [b"hard", b"soft", b"topk", b""]
    assert parsed[schema.LABEL].numpy().tolist() == [1, 3, 4, 2]
    assert parsed[schema.COPY].numpy().tolist() == [1, 0, 0, 0]
    np.testing.assert_array_equal(parsed[schema.CONFIDENCE].numpy(),
                                  np.float32([0.6, 0.5, 0.4, 1.0]))

    targets = schema.dense_targets(parsed, num_classes).numpy()
    expected = np.zeros((4, num_classes), dtype=np.float32)
    expected[0, 1] = 1.0
    expected[1] = p_soft
    top = np.array([0.4, 0.3, 0.15], dtype=np.float64)  # classes 4, 0, 3
    expected[2, [4, 0, 3]] = top / top.sum()
    expected[3, 2] = 1.0
    assert targets.shape == (4, num_classes)
    assert targets.dtype == np.float32
    np.testing.assert_allclose(targets, expected, atol=1e-7)
    np.testing.assert_allclose(targets.sum(axis=1), np.ones(4), atol=1e-6)


def test_dense_targets_on_batch_without_soft_targets():
    records = [schema.image_example(b"a", label=0), schema.image_example(b"b", label=3)]
    parsed = tf.io.parse_example(tf.constant(records), schema.tf_feature_spec())
    np.testing.assert_array_equal(schema.dense_targets(parsed, 4).numpy(),
                                  np.eye(4, dtype=np.float32)[[0, 3]])


def test_dense_targets_works_in_graph():
    p_topk = np.array([0.5, 0.2, 0.3], dtype=np.float32)
    records = tf.constant([
        schema.pseudo_label_example(b"t", b"e", p_topk, schema.LabelType.SOFT_TOPK, topk=2),
        schema.image_example(b"x", label=1),
    ])

    @tf.function
    def targets(serialized):
        return schema.dense_targets(tf.io.parse_example(serialized, schema.tf_feature_spec()), 3)

    np.testing.assert_allclose(targets(records).numpy(),
                               [[0.625, 0.0, 0.375], [0.0, 1.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("record, message", [
    (schema.image_example(b"u"), "has no 'label'"),
    (schema.image_example(b"x", label=4), "not below num_classes=4"),
    (schema.pseudo_label_example(b"p", b"e", np.full(5, 0.2, np.float32), schema.LabelType.SOFT),
     "width differs from num_classes=4"),
])
def test_dense_targets_refuses_records_it_cannot_turn_into_targets(record, message):
    parsed = tf.io.parse_example(tf.constant([record]), schema.tf_feature_spec())
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        schema.dense_targets(parsed, 4)


# --------------------------------------------------------------------------------------------
# The wire encoder: protobuf's own deterministic bytes
# --------------------------------------------------------------------------------------------

def proto_example(features: dict[str, tuple[str, list]]) -> bytes:
    """What protobuf serializes for {name: (kind, values)}, kind one of bytes/int64/float."""
    lists = {"bytes": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)),
             "int64": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v)),
             "float": lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))}
    return tf.train.Example(features=tf.train.Features(feature={
        name: lists[kind](values) for name, (kind, values) in features.items()})
    ).SerializeToString(deterministic=True)


def test_the_encoder_writes_protobufs_own_bytes_for_every_kind_of_value():
    rng = np.random.default_rng(0)
    encoders = {"bytes": schema._bytes, "int64": schema._ints, "float": schema._floats}
    for _ in range(300):
        features = {}
        for n in range(int(rng.integers(1, 6))):
            kind = ("bytes", "int64", "float")[int(rng.integers(3))]
            count = int(rng.integers(0, 4))
            # Sizes across the one-, two- and three-byte length varints; ints of every width.
            values = ([rng.bytes(int(rng.choice([0, 5, 127, 128, 300, 20_000])))
                       for _ in range(count)] if kind == "bytes"
                      else [int(v) for v in rng.integers(-2**63, 2**63 - 1, count)]
                      + [0, 1, 127, 128, -1][:count] if kind == "int64"
                      else [float(v) for v in rng.normal(0, 1e3, count).astype(np.float32)])
            features[f"{'kzab'[n % 4]}/feature{int(rng.integers(100))}"] = (kind, values)
        ours = schema._example({name: encoders[kind](values)
                                for name, (kind, values) in features.items()})
        assert ours == proto_example(features)


@pytest.mark.parametrize("label_type", list(schema.LabelType))
def test_every_record_the_toolkit_writes_is_byte_identical_to_protobufs(label_type):
    rng = np.random.default_rng(1)
    # Copies, image sizes and id lengths on each side of a varint's 1-, 2- and 3-byte sizes.
    for copy, size, id_size in ((0, 1, 1), (1, 127, 127), (127, 128, 128), (128, 16_383, 200),
                                (100_000, 16_384, 16_384), (3, 2_097_152, 5)):
        probabilities = rng.random(int(rng.integers(2, 30))).astype(np.float32)
        probabilities /= probabilities.sum()
        encoded, image_id = rng.bytes(size), rng.bytes(id_size)
        label = int(np.argmax(probabilities))
        want = {schema.IMAGE_ENCODED: ("bytes", [encoded]), schema.IMAGE_ID: ("bytes", [image_id]),
                schema.LABEL: ("int64", [label]), schema.COPY: ("int64", [copy]),
                schema.CONFIDENCE: ("float", [float(probabilities[label])])}
        if label_type is schema.LabelType.SOFT:
            want[schema.PROBABILITIES] = ("float", probabilities.tolist())
        if label_type is schema.LabelType.SOFT_TOPK:
            classes, probs = schema.topk_target(probabilities, 5)
            want[schema.TOPK_CLASSES] = ("int64", classes.tolist())
            want[schema.TOPK_PROBS] = ("float", probs.tolist())
        assert schema.pseudo_label_example(image_id, encoded, probabilities, label_type,
                                           copy=copy, topk=5) == proto_example(want)
    assert schema.dead_letter_example("decode", b"i", None, "bad \u00e9") == proto_example({
        schema.IMAGE_ID: ("bytes", [b"i"]), schema.ERROR_STAGE: ("bytes", [b"decode"]),
        schema.ERROR_MESSAGE: ("bytes", ["bad \u00e9".encode()])})
    assert schema.image_example(b"", b"x", label=0) == proto_example({
        schema.IMAGE_ENCODED: ("bytes", [b""]), schema.IMAGE_ID: ("bytes", [b"x"]),
        schema.LABEL: ("int64", [0])})


@pytest.mark.parametrize("label_type", list(schema.LabelType))
def test_an_images_copies_are_each_the_record_pseudo_label_example_writes(label_type):
    rng = np.random.default_rng(2)
    for size in (0, 100, 127, 128, 16_383, 16_384, 2_000_000):
        probabilities = rng.random(12).astype(np.float32)
        encoded = rng.bytes(size)
        label = int(np.argmax(probabilities))
        records = schema.pseudo_label_records(
            b"img", encoded, label, probabilities[label],
            schema.soft_target(probabilities, label_type, 4), range(3))
        assert records == [schema.pseudo_label_example(b"img", encoded, probabilities,
                                                       label_type, copy=c, topk=4)
                           for c in range(3)]
        assert [schema.parse_pseudo_label(r).copy for r in records] == [0, 1, 2]
