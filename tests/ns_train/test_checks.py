"""ns_train.checks: damaged files cost only their unreadable rest; bad records are named; a
finished run's pseudo-label shards are counted from its stats.json, unread."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from ns_data import schema
from ns_train import checks, data
from ns_train.config import TrainConfig
from tests.data_files import png, write_tfrecord
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
    (tmp_path / "d-image.tfrecord").write_bytes(png(toy.toy_images(1)[0][0]))
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
    good = [schema.image_example(png(images[i]), b"ok%d" % i, label=i % 4) for i in range(10)]
    records = good[:4] + [
        schema.image_example(b"\x89PNG broken", b"corrupt", label=1),
        schema.image_example(png(images[5]), b"label9", label=9),
        schema.image_example(png(images[6]), b"unlabeled"),
        b"\x01\x02 not an Example",
        good[8],
        schema.pseudo_label_example(b"soft5", png(images[9]),
                                    np.full(5, 0.2, np.float32), schema.LabelType.SOFT)]
    write_tfrecord(path, records)


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


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The files the scan reads, in the order it starts them."""
    paths = []
    scan_file = checks._scan_file

    def recording(flag, path, *args, **kwargs):
        paths.append(path)
        return scan_file(flag, path, *args, **kwargs)

    monkeypatch.setattr(checks, "_scan_file", recording)
    return paths


def records_read(scan: checks.StreamScan) -> int:
    spec = data.InputSpec("", toy.IMAGE, toy.NUM_CLASSES, batch_size=1, training=False,
                          files=scan.files)
    return sum(1 for _ in data.dataset(spec))


def test_a_finished_runs_shards_are_counted_from_its_stats_without_reading_one(tmp_path, opened):
    run = str(tmp_path / "run")
    paths = toy.write_finished_run(run, (12, 7, 9))
    scan = checks.scan_stream("--unlabeled", f"{run}/pseudo_labels-*", use_run_stats=True)
    assert (scan.files, scan.recorded, scan.damaged, opened) == (
        tuple(zip(paths, (12, 7, 9))), (run,), (), [])
    assert scan.count == records_read(scan) == 28
    # The count is stats.json's: edited (with the marker, which vouches for it), it is what
    # training reads, 5 of the 12 records of shard 0.
    run_stats, marker = (json.loads((tmp_path / "run" / name).read_text())
                         for name in ("stats.json", "_SUCCESS"))
    run_stats["shards"]["records"][0] = 5
    run_stats["totals"]["written"] = marker["totals"]["written"] = 21
    (tmp_path / "run" / "stats.json").write_text(json.dumps(run_stats))
    (tmp_path / "run" / "_SUCCESS").write_text(json.dumps(marker))
    scan = checks.scan_stream("--unlabeled", f"{run}/pseudo_labels-*", use_run_stats=True)
    assert scan.files[0] == (paths[0], 5) and scan.count == records_read(scan) == 21
    assert opened == []
    # Without use_run_stats (and for --labeled and --eval, whose records are all parsed) every
    # file is read.
    assert checks.scan_stream("--unlabeled", f"{run}/pseudo_labels-*").count == 28
    assert checks.scan_stream("--labeled", f"{run}/pseudo_labels-*", PARSER).count == 28


def test_a_glob_that_is_not_exactly_a_runs_shards_is_counted_by_reading(tmp_path, opened):
    run = str(tmp_path / "run")
    paths = toy.write_finished_run(run, (12, 7, 9))
    scan = checks.scan_stream("--unlabeled", f"{run}/pseudo_labels-0000[01]-*",
                              use_run_stats=True)
    assert (scan.files, scan.recorded, opened) == (tuple(zip(paths[:2], (12, 7))), (), paths[:2])


def test_a_glob_over_several_runs_counts_each_finished_one_from_its_stats(tmp_path, opened):
    first = toy.write_finished_run(str(tmp_path / "a"), (4, 6))
    second = toy.write_finished_run(str(tmp_path / "b"), (3,))
    unfinished = str(tmp_path / "c" / "pseudo_labels-00000-of-00001.tfrecord")
    (tmp_path / "c").mkdir()
    toy.write_pseudo_labeled(unfinished, 5, schema.LabelType.SOFT)
    scan = checks.scan_stream("--unlabeled", f"{tmp_path}/*/pseudo_labels-*", use_run_stats=True)
    assert scan.files == (*zip(first, (4, 6)), (second[0], 3), (unfinished, 5))
    assert (scan.recorded, opened) == ((str(tmp_path / "a"), str(tmp_path / "b")), [unfinished])


def test_a_shard_damaged_after_the_run_finished_is_found_by_reading_it(tmp_path):
    run = str(tmp_path / "run")
    paths = toy.write_finished_run(run, (12, 7))
    offset = toy.truncate_in_record(paths[0], 10)
    scan = checks.scan_stream("--unlabeled", f"{run}/pseudo_labels-*", use_run_stats=True)
    assert (scan.files, scan.recorded) == (((paths[0], 10), (paths[1], 7)), ())
    assert [(d.path, d.records_kept, d.offset) for d in scan.damaged] == [(paths[0], 10, offset)]


def test_the_trainers_unlabeled_scan_uses_the_runs_stats(tmp_path):
    labeled = str(tmp_path / "labeled.tfrecord")
    toy.write_labeled(labeled, 12)
    run = str(tmp_path / "run")
    toy.write_finished_run(run, (12, 7))
    (tmp_path / "w").mkdir()
    inputs = checks.scan_inputs(config(tmp_path, labeled=labeled,
                                       unlabeled=f"{run}/pseudo_labels-*"))
    assert (inputs.labeled.recorded, inputs.unlabeled.recorded) == ((), (run,))
    assert inputs.unlabeled.count == 19


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
