"""ns_train.checks: damaged files cost only their unreadable rest; bad records are named."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ns_data import schema
from ns_train import checks, data
from ns_train.config import TrainConfig
from tests.ns_train import toy

PARSER = checks.RecordParser(toy.IMAGE, toy.NUM_CLASSES)


@pytest.fixture
def damaged_glob(tmp_path):
    """Five files: intact (10), cut in record 6, a bit flipped in record 3, not a TFRecord,
    empty."""
    for name, seed in (("a-intact", 0), ("b-truncated", 1), ("c-flipped", 2)):
        toy.write_labeled(str(tmp_path / f"{name}.tfrecord"), 10, seed=seed)
    offsets = {"b-truncated": toy.truncate_in_record(str(tmp_path / "b-truncated.tfrecord"), 6),
               "c-flipped": toy.flip_bit_in_record(str(tmp_path / "c-flipped.tfrecord"), 3)}
    (tmp_path / "d-image.tfrecord").write_bytes(toy.png(toy.toy_images(1)[0][0]))
    (tmp_path / "e-empty.tfrecord").write_bytes(b"")
    return str(tmp_path / "*.tfrecord"), offsets


def test_a_damaged_file_keeps_its_records_before_the_damage(damaged_glob, tmp_path):
    pattern, offsets = damaged_glob
    scan = checks.scan_stream("--labeled", pattern, PARSER)
    path = str(tmp_path)
    assert scan.files == ((f"{path}/a-intact.tfrecord", 10), (f"{path}/b-truncated.tfrecord", 6),
                          (f"{path}/c-flipped.tfrecord", 3), (f"{path}/d-image.tfrecord", 0),
                          (f"{path}/e-empty.tfrecord", 0))
    assert scan.count == 19 and scan.bad == ()
    assert [(d.flag, d.path, d.records_kept, d.offset) for d in scan.damaged] == [
        ("--labeled", f"{path}/b-truncated.tfrecord", 6, offsets["b-truncated"]),
        ("--labeled", f"{path}/c-flipped.tfrecord", 3, offsets["c-flipped"]),
        ("--labeled", f"{path}/d-image.tfrecord", 0, 0)]
    assert offsets["b-truncated"] > 0 and offsets["c-flipped"] > 0
    assert "truncated" in scan.damaged[0].problem and "checksum" in scan.damaged[1].problem

    # tf.data reads exactly those records (files interleaved) and never reaches a damaged byte.
    spec = data.InputSpec(pattern, toy.IMAGE, toy.NUM_CLASSES, batch_size=8, training=False,
                          files=scan.files)
    images = np.concatenate([batch[0].numpy() for batch in data.dataset(spec)])
    expected = np.concatenate([toy.toy_images(10, seed)[0][:n]
                               for seed, n in ((0, 10), (1, 6), (2, 3))])
    assert sorted(map(np.ndarray.tobytes, images)) == sorted(map(np.ndarray.tobytes, expected))
    with pytest.raises(tf.errors.DataLossError):  # what training did before: read to the end
        list(data.dataset(data.InputSpec(pattern, toy.IMAGE, toy.NUM_CLASSES, batch_size=8,
                                         training=False)))


def test_training_batches_from_scanned_files_repeat_with_the_seed(damaged_glob):
    pattern, _ = damaged_glob
    scan = checks.scan_stream("--unlabeled", pattern)

    def batches(seed):
        spec = data.InputSpec(pattern, toy.IMAGE, toy.NUM_CLASSES, batch_size=8, seed=seed,
                              shuffle_buffer=32, files=scan.files)
        return [images.numpy() for images, _ in data.dataset(spec).take(6)]

    first, again, other = batches(1), batches(1), batches(2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_a_stream_with_no_readable_record_fails_naming_the_flag(tmp_path):
    (tmp_path / "junk.tfrecord").write_bytes(b"not a tfrecord at all")
    (tmp_path / "junk-empty.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match=r"^--unlabeled=.*/junk\* has no readable record "
                                         r"\(files: 2, damaged: 1;"):
        checks.scan_stream("--unlabeled", str(tmp_path / "junk*"))
    with pytest.raises(ValueError, match=r"--eval=.*none-\* matches no files"):
        checks.scan_stream("--eval", str(tmp_path / "none-*"))


def write_with_bad_records(path: str) -> None:
    """Records 0..3 good; 4 a broken PNG, 5 label 9, 6 no label, 7 not an Example, 8 good,
    9 soft targets of 5 classes."""
    images, _ = toy.toy_images(10)
    good = [schema.image_example(toy.png(images[i]), b"ok%d" % i, label=i % 4) for i in range(10)]
    records = good[:4] + [
        schema.image_example(b"\x89PNG broken", b"corrupt", label=1),
        schema.image_example(toy.png(images[5]), b"label9", label=9),
        schema.image_example(toy.png(images[6]), b"unlabeled"),
        b"\x01\x02 not an Example",
        good[8],
        schema.pseudo_label_example(b"soft5", toy.png(images[9]),
                                    np.full(5, 0.2, np.float32), schema.LabelType.SOFT)]
    with tf.io.TFRecordWriter(path) as w:
        for record in records:
            w.write(record)


def test_the_record_check_names_every_record_the_trainer_cannot_use(tmp_path):
    path = str(tmp_path / "labeled.tfrecord")
    write_with_bad_records(path)
    scan = checks.scan_stream("--labeled", path, PARSER)
    assert scan.count == 10
    assert [(b.flag, b.path, b.index, b.image_id, b.reason) for b in scan.bad] == [
        ("--labeled", path, 4, "corrupt",
         "Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required."),
        ("--labeled", path, 5, "label9", "a record's 'label' is not below num_classes=4"),
        ("--labeled", path, 6, "unlabeled",
         "a record has no 'label': labeled data must carry the class"),
        ("--labeled", path, 7, "", "not a tf.train.Example"),
        ("--labeled", path, 9, "soft5", "'probabilities' width differs from num_classes=4")]
    # Framing only: the same file is whole.
    assert checks.scan_stream("--unlabeled", path).bad == ()


def config(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig(**{"workdir": str(tmp_path / "w"), "num_classes": toy.NUM_CLASSES,
                          "image_size": (8, 8), "channels": 1, "normalization": "none",
                          **overrides})


def test_bad_labeled_and_eval_records_fail_the_scan_and_are_listed(tmp_path):
    good, bad = str(tmp_path / "good.tfrecord"), str(tmp_path / "bad.tfrecord")
    toy.write_labeled(good, 12)
    write_with_bad_records(bad)
    (tmp_path / "w").mkdir()
    report = tmp_path / "w" / checks.BAD_RECORDS_FILE
    with pytest.raises(ValueError) as raised:
        checks.scan_inputs(config(tmp_path, labeled=bad, eval=bad))
    assert str(raised.value) == (
        f"--labeled: 5 records the trainer cannot use, e.g. {bad} record 4 (id corrupt): "
        "Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.; "
        f"--eval: 5 records the trainer cannot use, e.g. {bad} record 4 (id corrupt): "
        "Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.. "
        f"All are listed in {report}")
    lines = report.read_text().splitlines()
    assert lines[0] == "flag\tfile\trecord\tid\treason"
    assert [line.split("\t")[:4] for line in lines[1:]] == [
        [flag, bad, str(i), image_id] for flag in ("--labeled", "--eval")
        for i, image_id in ((4, "corrupt"), (5, "label9"), (6, "unlabeled"), (7, ""),
                            (9, "soft5"))]

    with pytest.raises(ValueError, match=rf"^--eval: 5 records .* {bad} record 4 \(id corrupt\)"):
        checks.scan_inputs(config(tmp_path, labeled=good, eval=bad))
    inputs = checks.scan_inputs(config(tmp_path, labeled=good, eval=good))
    assert (inputs.labeled.count, inputs.eval.count, inputs.unlabeled) == (12, 12, None)
    assert not report.exists()  # the fixed records leave no stale list behind


def test_each_unlabeled_file_is_checked_from_its_first_records(tmp_path):
    labeled, pseudo = str(tmp_path / "labeled.tfrecord"), str(tmp_path / "pl" / "a.tfrecord")
    (tmp_path / "pl").mkdir()
    toy.write_labeled(labeled, 12)
    toy.write_pseudo_labeled(pseudo, 8, schema.LabelType.SOFT)
    (tmp_path / "w").mkdir()
    inputs = checks.scan_inputs(config(tmp_path, labeled=labeled, unlabeled=pseudo))
    assert (inputs.unlabeled.count, inputs.unlabeled.bad) == (8, ())
    raw = str(tmp_path / "pl" / "b.tfrecord")  # unlabeled images given as pseudo-labels
    with tf.io.TFRecordWriter(raw) as w:
        for image in toy.toy_images(checks.UNLABELED_CHECKED + 5)[0]:
            w.write(schema.image_example(toy.png(image), b"raw"))
    with pytest.raises(ValueError, match=rf"^--unlabeled: {checks.UNLABELED_CHECKED} records "
                       rf"the trainer cannot use, e.g. {raw} record 0 \(id raw\): a record has "
                       "no 'label'"):
        checks.scan_inputs(config(tmp_path, labeled=labeled, unlabeled=str(tmp_path / "pl/*")))
    with pytest.raises(ValueError, match=r"^--unlabeled: 8 records .*pl/a.tfrecord record 0 "
                       r"\(id u0\): 'probabilities' width differs from num_classes=5"):
        checks.scan_inputs(config(tmp_path, labeled=labeled, unlabeled=pseudo, num_classes=5))


def test_a_glob_matching_a_directory_is_refused(tmp_path):
    toy.write_pseudo_labeled(str(tmp_path / "pseudo_labels-0.tfrecord"), 4, schema.LabelType.HARD)
    (tmp_path / "predictions").mkdir()
    with pytest.raises(ValueError, match=rf"^--unlabeled={tmp_path}/\* matches the directory "
                                         rf"{tmp_path}/predictions; give a glob of TFRecord"):
        checks.scan_stream("--unlabeled", str(tmp_path / "*"))
