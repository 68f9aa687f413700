"""Tests for `ns_train/evaluate.py`: the job's teacher flags, its checks, one-line errors.

The teacher is a hand-built SavedModel on the toy set (`tests/ns_train/toy.py`, class c lights
quadrant c), made for pixels in 0..255: its logits are the quadrant means / 50 plus a bias of 1
on class 3. Fed the default 0..1 it sees four dark quadrants and answers class 3 for everything.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from ns_data import schema, teacher
from ns_train import evaluate
from tests.data_files import png, write_tfrecord
from tests.ns_train import toy

N = 64  # 16 images of each of the 4 classes


class QuadrantTeacher(tf.Module):
    """float images [N, 8, 8, 1] in 0..255 → quadrant logits (or their softmax)."""

    def __init__(self, softmax: bool):
        super().__init__()
        self.softmax = softmax
        self.bias = tf.Variable([0.0, 0.0, 0.0, 1.0])

    @tf.function(input_signature=[tf.TensorSpec((None, *toy.IMAGE.shape), tf.float32)])
    def serve(self, images):
        means = tf.reshape(tf.nn.avg_pool2d(images, 4, 4, "VALID"), (-1, toy.NUM_CLASSES))
        logits = means / 50.0 + self.bias
        return {"scores": tf.nn.softmax(logits) if self.softmax else logits}


def export(path: str, softmax: bool = False) -> str:
    module = QuadrantTeacher(softmax)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("data") / "test.tfrecord")
    toy.write_labeled(path, N)
    return path


@pytest.fixture(scope="module")
def logits_teacher(tmp_path_factory) -> str:
    return export(str(tmp_path_factory.mktemp("teachers") / "logits"))


@pytest.fixture(scope="module")
def softmax_teacher(tmp_path_factory) -> str:
    return export(str(tmp_path_factory.mktemp("teachers") / "softmax"), softmax=True)


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """(exit status, printed JSON or None, stderr) of `python -m ns_train.evaluate argv`."""
    status = evaluate.main(list(argv))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out else None, err


def test_input_range_flag_serves_a_model_made_for_another_range(logits_teacher, labeled, capsys):
    status, wrong, _ = run_cli(capsys, f"--teacher={logits_teacher}", f"--data={labeled}")
    assert status == 0
    assert wrong["top1"] == 0.25 and wrong["per_class_top1"] == [0.0, 0.0, 0.0, 1.0]
    assert wrong["input_range"] == [0.0, 1.0]
    warning, = wrong["warnings"]
    assert "labels all 64 sampled input images as class 3" in warning
    assert "check --input_range and --teacher_outputs" in warning

    status, right, _ = run_cli(capsys, f"--model={logits_teacher}", f"--data={labeled}",
                               "--input_range=0,255")
    assert status == 0
    assert right["top1"] == 1.0 and right["count"] == N and right["invalid"] == 0
    assert right["input_range"] == [0.0, 255.0] and right["warnings"] == []


def test_flags_override_ns_teacher_json(logits_teacher, labeled, tmp_path, capsys):
    path = export(str(tmp_path / "t"))
    teacher.write_metadata(path, teacher.TeacherMetadata(input_range=(0.0, 255.0),
                                                         outputs="logits"))
    assert evaluate.evaluate_export(path, labeled)["top1"] == 1.0  # the metadata suffices
    status, result, _ = run_cli(capsys, f"--teacher={path}", f"--data={labeled}",
                                "--input_range=0,1")
    assert status == 0 and result["top1"] == 0.25
    override, one_class = result["warnings"]
    assert override == ("--input_range=0,1 overrides 0,255, which the teacher's "
                        "ns_teacher.json records for how it was trained")
    assert "labels all 64 sampled input images as class 3" in one_class


def test_softmax_teacher_read_as_logits_is_warned_about(softmax_teacher, labeled, capsys,
                                                        caplog):
    status, result, _ = run_cli(capsys, f"--teacher={softmax_teacher}", f"--data={labeled}",
                                "--input_range=0,255")
    assert status == 0
    assert result["top1"] == 1.0  # the top-1 survives; the job's confidences would not
    assert result["teacher_outputs"] == "logits"
    warning, = result["warnings"]
    assert warning.startswith("label_and_balance would refuse this teacher: every output row "
                              "on 64 input images is already a probability vector")
    assert warning.endswith("pass --teacher_outputs=probabilities")
    assert any(warning in record.getMessage() for record in caplog.records
               if record.levelname == "WARNING")

    status, result, _ = run_cli(capsys, f"--teacher={softmax_teacher}", f"--data={labeled}",
                                "--input_range=0,255", "--teacher_outputs=probabilities")
    assert status == 0 and result["top1"] == 1.0 and result["warnings"] == []


def test_logits_read_as_probabilities_get_no_label(logits_teacher, labeled, capsys):
    status, result, _ = run_cli(capsys, f"--teacher={logits_teacher}", f"--data={labeled}",
                                "--input_range=0,255", "--teacher_outputs=probabilities")
    assert status == 0
    assert result["top1"] == 0.0 and result["invalid"] == N
    assert result["warnings"][0].startswith(f"{N} of {N} images get no label")
    assert result["warnings"][0].endswith("did you mean --teacher_outputs=logits?")


def test_temperature_is_the_jobs(logits_teacher, labeled):
    spec = teacher.inspect_teacher(logits_teacher, input_range=(0.0, 255.0), temperature=2.0)
    result = evaluate.evaluate_teacher(spec, labeled)
    assert result["top1"] == 1.0 and result["temperature"] == 2.0


@pytest.mark.parametrize("flag, message", [
    ("--input_range=abc",
     "argument --input_range: --input_range takes two values like 224,224, got 'abc'"),
    ("--temperature=inf", "--temperature must be a finite number > 0, got inf"),
    ("--teacher_outputs=softmax", "argument --teacher_outputs: invalid choice: 'softmax' "
     "(choose from 'logits', 'probabilities')"),
    ("--input_rnage=0,255", "unrecognized arguments: --input_rnage=0,255"),
    ("--output_key=probs", "teacher has no output 'probs'; it has ['scores']"),
    ("--data=/nonexistent/*.tfrecord", "--data=/nonexistent/*.tfrecord matches no files"),
])
def test_bad_flag_is_one_line_with_exit_2(logits_teacher, labeled, capsys, flag, message):
    status, result, err = run_cli(capsys, f"--teacher={logits_teacher}", f"--data={labeled}",
                                  flag)
    assert status == 2 and result is None
    assert err == f"python -m ns_train.evaluate: error: {message}\n"


def test_missing_flags_are_named(capsys):
    status, _, err = run_cli(capsys)
    assert status == 2
    assert err == ("python -m ns_train.evaluate: error: missing required flags: --teacher, "
                   "--data (see --help)\n")


def test_help_lists_the_jobs_teacher_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--teacher TEACHER, --model TEACHER", "--input_range", "--teacher_outputs",
                 "--temperature", "--image_size", "--output_key", "--device", "--jit_compile"):
        assert flag in text
    assert "never recompile (default: 256)" in text  # --batch_size


def test_a_file_sorted_by_class_is_not_mistaken_for_a_one_class_teacher(logits_teacher,
                                                                         tmp_path):
    images, labels = toy.toy_images(160)
    order = np.argsort(labels, kind="stable")  # the first 64 records are all class 0
    path = str(tmp_path / "sorted.tfrecord")
    write_tfrecord(path, (schema.image_example(png(images[i]), b"%d" % i, label=int(labels[i]))
                          for i in order))
    spec = teacher.inspect_teacher(logits_teacher, input_range=(0.0, 255.0))
    result = evaluate.evaluate_teacher(spec, path)
    assert result["top1"] == 1.0 and result["count"] == 160 and result["warnings"] == []


def _with(labeled: str, path: str, *records: bytes) -> str:
    with tf.io.TFRecordWriter(path) as w:
        for record in [*(r.numpy() for r in tf.data.TFRecordDataset(labeled)), *records]:
            w.write(record)
    return path


@pytest.mark.parametrize("record, message", [
    (schema.image_example(b"\x89PNG junk", b"bad", label=1), r"record 64 \(id bad\): Unknown "
                                                             "image file format"),
    (schema.image_example(toy.png(toy.toy_images(1)[0][0]), b"nolabel"),
     r"record 64 \(id nolabel\): a record has no 'label'"),
    (schema.image_example(toy.png(toy.toy_images(1)[0][0]), b"l9", label=9),
     r"record 64 \(id l9\): a record's 'label' is not below num_classes=4"),
])
def test_a_record_that_cannot_be_evaluated_is_one_line_naming_it(logits_teacher, labeled,
                                                                  tmp_path, capsys, record,
                                                                  message):
    path = _with(labeled, str(tmp_path / "test.tfrecord"), record)
    status, result, err = run_cli(capsys, f"--teacher={logits_teacher}", f"--data={path}",
                                  "--input_range=0,255")
    assert status == 2 and result is None
    assert re.match(rf"python -m ns_train.evaluate: error: --data: 1 record cannot be "
                    rf"evaluated, e.g. {path} {message}", err)


def test_damaged_files_and_pseudo_labels_are_evaluated_with_a_warning(logits_teacher, labeled,
                                                                      tmp_path, capsys):
    cut = _with(labeled, str(tmp_path / "cut.tfrecord"))
    kept = toy.truncate_in_record(cut, 40) and 40
    status, result, _ = run_cli(capsys, f"--teacher={logits_teacher}", f"--data={cut}",
                                "--input_range=0,255")
    assert status == 0 and result["count"] == kept and result["top1"] == 1.0
    assert result["warnings"][0].startswith(f"damaged file {cut}: record 40 at byte ")
    assert result["warnings"][0].endswith(f"evaluated its first {kept} records")

    pseudo = str(tmp_path / "pseudo.tfrecord")
    toy.write_pseudo_labeled(pseudo, 8, schema.LabelType.HARD)
    status, result, _ = run_cli(capsys, f"--teacher={logits_teacher}", f"--data={pseudo}",
                                "--input_range=0,255")
    assert status == 0 and result["count"] == 8
    assert result["warnings"] == [f"{pseudo} holds pseudo-labels (records with 'confidence', "
                                  "written by label_and_balance): top-1 against them measures "
                                  "agreement with that run's teacher, not accuracy"]
