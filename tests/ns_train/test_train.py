"""ns_train.train: teacher and student steps, losses, noise, evaluation, input checks, resume, and
the same code path under MirroredStrategy."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ns_data import completion, schema
from ns_train import train
from ns_train.config import TrainConfig
from tests.data_files import png, write_tfrecord
from tests.ns_train import toy


def test_a_student_refuses_pseudo_labels_of_an_unfinished_run(toy_files, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shard = str(unfinished / "pseudo_labels-00000-of-00002.tfrecord")
    toy.write_pseudo_labeled(shard, 16, schema.LabelType.HARD)
    config = toy.train_config(tmp_path / "w", toy_files["labeled"], steps=2,
                              unlabeled=str(unfinished / "pseudo_labels-*"))
    with pytest.raises(completion.IncompleteOutputError,
                       match=f"--unlabeled: {unfinished} has no _SUCCESS marker.*"
                             "pass --allow_incomplete"):
        train.train(config)
    assert not (tmp_path / "w").exists()  # refused before any work
    result = train.train(dataclasses.replace(config, allow_incomplete=True))
    assert result["step"] == 2


def logged_losses(config: TrainConfig) -> list[dict[str, float]]:
    trainer = train.Trainer(config, config.steps, 1.0, None)
    logs = []
    trainer.train(train.training_dataset(config), on_log=lambda step, m: logs.append(m))
    return logs


def test_teacher_mode_loss_is_finite_and_decreases(toy_files, tmp_path):
    logs = logged_losses(toy.train_config(tmp_path, toy_files["labeled"], **toy.QUIET))
    losses = [m["loss"] for m in logs]
    assert len(logs) == 3
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] * 0.8
    assert "unlabeled_loss" not in logs[0]


@pytest.mark.parametrize("label_type", list(schema.LabelType))
def test_student_mode_each_target_type_loss_decreases(toy_files, tmp_path, label_type):
    config = toy.train_config(tmp_path, toy_files["labeled"],
                              unlabeled=toy_files["pseudo"][label_type], unlabeled_ratio=2,
                              **toy.QUIET)
    assert config.unlabeled_batch_size == 32
    logs = logged_losses(config)
    first, last = logs[0], logs[-1]
    for m in logs:
        assert math.isfinite(m["loss"]) and math.isfinite(m["unlabeled_loss"])
    assert last["unlabeled_loss"] < first["unlabeled_loss"]
    assert last["loss"] < first["loss"]
    # The total is the batch-size weighted mean of the two parts.
    expected = (16 * last["labeled_loss"] + 32 * last["unlabeled_loss"]) / 48
    assert last["loss"] == pytest.approx(expected, rel=1e-5)


def test_one_noisy_step_with_every_noise_on(toy_files, tmp_path):
    config = toy.train_config(tmp_path, toy_files["labeled"],
                              unlabeled=toy_files["pseudo"][schema.LabelType.SOFT_TOPK],
                              steps=1, log_every=1, randaugment_ops=2, randaugment_magnitude=15,
                              dropout=0.3, stochastic_depth=0.8)
    (metrics,) = logged_losses(config)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0


def test_per_example_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    y_l = np.eye(3, dtype=np.float32)[[0, 2]]
    y_u = np.array([[0.2, 0.5, 0.3], [1, 0, 0], [0, 0.5, 0.5]], dtype=np.float32)
    labeled, unlabeled = train.per_example_losses(tf.constant(logits), tf.constant(y_l),
                                                  tf.constant(y_u), 0.1)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    smoothed = y_l * 0.9 + 0.1 / 3
    np.testing.assert_allclose(labeled.numpy(), -(smoothed * log_p[:2]).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(unlabeled.numpy(), -(y_u * log_p[2:]).sum(-1), rtol=1e-5)


def test_randaugment_only_on_training_batches(toy_files, tmp_path):
    images, labels = toy.toy_images(64)
    noisy = toy.train_config(tmp_path, toy_files["labeled"], randaugment_ops=2,
                             randaugment_magnitude=20, shuffle_buffer=1, batch_size=64)
    clean = toy.train_config(tmp_path, toy_files["labeled"], randaugment_ops=0, shuffle_buffer=1,
                             batch_size=64)
    (noisy_batch, _), = next(iter(train.training_dataset(noisy)))
    (clean_batch, _), = next(iter(train.training_dataset(clean)))
    np.testing.assert_array_equal(clean_batch.numpy(), images)
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(noisy_batch.numpy(), images)])
    assert changed > 0.5
    eval_images, _, mask = next(iter(train.eval_dataset(
        toy.train_config(tmp_path, "", eval=toy_files["labeled"], randaugment_ops=2,
                         batch_size=64))))
    np.testing.assert_array_equal(eval_images.numpy(), images)
    assert float(tf.reduce_sum(mask)) == 64


def test_eval_pads_the_last_batch_and_counts_every_image(toy_files, tmp_path):
    config = toy.train_config(tmp_path, toy_files["labeled"], eval=toy_files["eval"], batch_size=16)
    batches = list(train.eval_dataset(config))
    assert [int(tf.reduce_sum(m)) for _, _, m in batches] == [16, 16, 8]
    assert all(images.shape[0] == 16 for images, _, _ in batches)
    trainer = train.Trainer(config, 1, 1.0, None)
    result = trainer.evaluate(train.eval_dataset(config))
    assert result["count"] == 40
    images, labels = toy.toy_images(40, seed=7)
    predicted = np.argmax(trainer.ema_model(images.astype(np.float32) / 255.0), axis=-1)
    assert result["top1"] == pytest.approx(np.mean(predicted == labels))


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_the_step_count_from_the_checkpoint(toy_files, tmp_path):
    config = toy.train_config(tmp_path, toy_files["labeled"], steps=9, log_every=3,
                              checkpoint_every=3)
    train.check_workdir_config(config)
    first = train.Trainer(config, 9, 1.0, None)
    at_step_3 = []

    def crash(step, _):
        if step == 3:
            at_step_3.extend(w.numpy() for w in first.model.weights)
        if step == 6:
            raise Interrupted  # after the checkpoint of step 3, before the one of step 6

    with pytest.raises(Interrupted):
        first.train(train.training_dataset(config), on_log=crash)
    resumed = train.Trainer(config, 9, 1.0, None)
    assert resumed.restore() == 3
    for a, b in zip(at_step_3, resumed.model.weights):
        np.testing.assert_array_equal(a, b.numpy())

    result = train.train(config)
    assert (result["resumed_from"], result["step"]) == (3, 9)
    assert json.loads((tmp_path / "result.json").read_text())["step"] == 9
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.index")) == [
        "ckpt-3.index", "ckpt-6.index", "ckpt-9.index"]

    # Rerunning a finished run does nothing, unless it must export somewhere else.
    exported = (tmp_path / "export" / "saved_model.pb").stat().st_mtime_ns
    assert train.train(config) == result
    assert (tmp_path / "export" / "saved_model.pb").stat().st_mtime_ns == exported
    elsewhere = train.train(dataclasses.replace(config, export_dir=str(tmp_path / "other")))
    assert (elsewhere["resumed_from"], elsewhere["export_dir"]) == (9, str(tmp_path / "other"))
    assert (tmp_path / "other" / "saved_model.pb").exists()


def test_a_damaged_input_file_costs_only_its_unreadable_rest(toy_files, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    toy.write_labeled(str(data_dir / "labeled-0.tfrecord"), 64)
    truncated = str(data_dir / "labeled-1.tfrecord")
    toy.write_labeled(truncated, 20, seed=3)
    offset = toy.truncate_in_record(truncated, 12)
    toy.write_pseudo_labeled(str(data_dir / "pseudo-0.tfrecord"), 48, schema.LabelType.HARD)
    not_a_tfrecord = data_dir / "pseudo-1.tfrecord"
    not_a_tfrecord.write_bytes(png(toy.toy_images(1)[0][0]))
    config = toy.train_config(tmp_path / "w", str(data_dir / "labeled-*"), steps=2, log_every=1,
                              unlabeled=str(data_dir / "pseudo-*"), allow_incomplete=True,
                              eval=toy_files["eval"], batch_size=8)
    result = train.train(config)
    assert (result["step"], result["num_labeled"], result["num_unlabeled"]) == (2, 76, 48)
    assert result["eval"]["count"] == 40
    damaged = [{key: d[key] for key in ("flag", "path", "records_kept", "offset")}
               for d in result["damaged_files"]]
    assert damaged == [
        {"flag": "--labeled", "path": truncated, "records_kept": 12, "offset": offset},
        {"flag": "--unlabeled", "path": str(not_a_tfrecord), "records_kept": 0, "offset": 0}]
    assert "truncated" in result["damaged_files"][0]["problem"]
    saved = json.loads((tmp_path / "w" / "result.json").read_text())
    assert saved["damaged_files"] == result["damaged_files"]


@pytest.mark.parametrize("flag", ["eval", "labeled"])
def test_a_bad_eval_or_labeled_record_fails_before_the_first_step(toy_files, tmp_path, flag):
    bad = str(tmp_path / "bad.tfrecord")
    images, _ = toy.toy_images(8)
    labels = [9 if i == 5 else i % toy.NUM_CLASSES for i in range(len(images))]  # 4 classes
    write_tfrecord(bad, (schema.image_example(png(image), b"img-%d" % i, label=label)
                         for i, (image, label) in enumerate(zip(images, labels))))
    inputs = {"labeled": toy_files["labeled"], "eval": toy_files["eval"], flag: bad}
    config = toy.train_config(tmp_path / "w", inputs["labeled"], eval=inputs["eval"], steps=2)
    assert config.normalization == "none"  # checked whatever the normalisation
    with pytest.raises(ValueError, match=rf"^--{flag}: 1 record the trainer cannot use, e.g. "
                                         rf"{bad} record 5 \(id img-5\): a record's 'label' is "
                                         r"not below num_classes=4\. All are listed in "):
        train.train(config)
    assert (tmp_path / "w" / "bad_records.txt").read_text().splitlines()[1].startswith(
        f"--{flag}\t{bad}\t5\timg-5\t")
    assert not (tmp_path / "w" / "checkpoints").exists()
    assert not (tmp_path / "w" / "export").exists()


def test_a_workdir_that_is_a_file_is_refused(toy_files, tmp_path):
    (tmp_path / "w").write_text("notes")
    with pytest.raises(ValueError, match=r"^--workdir=.*/w is a file, not a directory$"):
        train.train(toy.train_config(tmp_path / "w", toy_files["labeled"], steps=2))


def test_a_workdir_refuses_to_resume_under_other_settings(toy_files, tmp_path):
    train.check_workdir_config(toy.train_config(tmp_path, toy_files["labeled"]))
    train.check_workdir_config(toy.train_config(tmp_path, toy_files["labeled"], log_every=2,
                                                eval=toy_files["eval"]))
    with pytest.raises(ValueError, match=r"steps: 12 -> 20, learning_rate: 0.01 -> 0.02"):
        train.check_workdir_config(toy.train_config(tmp_path, toy_files["labeled"],
                                                    learning_rate=0.02, steps=20))


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ns_train import train
from ns_train.config import TrainConfig
config = TrainConfig(**json.loads(sys.argv[1]))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, **train.train(config, strategy)}))
"""


@pytest.mark.slow
def test_the_same_code_path_runs_under_mirrored_strategy(toy_files, tmp_path):
    config = dict(workdir=str(tmp_path), labeled=toy_files["labeled"], eval=toy_files["eval"],
                  unlabeled=toy_files["pseudo"][schema.LabelType.SOFT], num_classes=4,
                  image_size=[8, 8], channels=1, resnet_widths=[8], resnet_blocks=1,
                  batch_size=16, steps=4, log_every=2, normalization="none",
                  randaugment_ops=1, randaugment_magnitude=10)
    out = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(config)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["step"] == 4 and result["eval"]["count"] == 40
    assert math.isfinite(result["train"]["loss"]) and result["train"]["unlabeled_loss"] > 0
