"""beam_jobs.iterate --quick: the whole loop (prepare, teacher, label_and_balance, students,
evaluation, report) on a tiny real subset."""
from __future__ import annotations

import dataclasses
import glob
import json
import re

import pytest
import tensorflow as tf
from PIL import Image

from beam_jobs import iterate
from ns_data import schema
from tests.beam_jobs import fake_fashion_mnist


@pytest.mark.slow
def test_quick_loop_runs_end_to_end_and_reports(tmp_path, capsys, monkeypatch):
    fake_fashion_mnist.make(str(tmp_path / "idx"))
    workdir = tmp_path / "run"
    result = iterate.run([f"--workdir={workdir}", "--quick", f"--fashion_mnist_dir={tmp_path}/idx",
                          "--teacher_steps=8", "--student_steps=6", "--ablations=full,hard",
                          "--min_confidence=0.1"])
    assert result["sizes"] == {"labeled": 200, "holdout": 100, "unlabeled": 500, "test": 200}
    assert result["images_per_class"] == 50
    (entry,) = result["rounds"]
    assert set(entry["students"]) == {"full", "hard"}
    for model in [entry["teacher"], *entry["students"].values()]:
        assert 0.0 <= model["test"] <= 1.0 and 0.0 <= model["holdout"] <= 1.0
    # The written counts in the report are the records in the shards the student trained on.
    records = {}
    for variant, label_type in (("full", "soft"), ("hard", "hard")):
        records[variant] = [schema.parse_pseudo_label(s) for path in glob.glob(
            f"{entry['students'][variant]['pseudo_labels']}/pseudo_labels-*")
            for s in tf.data.TFRecordDataset(path).as_numpy_iterator()]
        per_class = [sum(r.label == c for r in records[variant]) for c in range(10)]
        assert per_class == entry["labeling"]["written"]
        assert sum(per_class) > 0 and all(n in (0, 50) for n in per_class)
        assert all((r.probabilities is not None) == (label_type == "soft")
                   for r in records[variant])
    truth = {line.split(",")[0]: int(line.split(",")[1]) for line in
             open(workdir / "data" / "unlabeled_truth.csv").read().split()[1:]}
    originals = [r for r in records["full"] if r.copy == 0]
    accuracy = sum(truth[r.image_id.decode()] == r.label for r in originals) / len(originals)
    assert entry["labeling"]["pseudo_label_accuracy"] == pytest.approx(accuracy)
    for name in ("counts", "confidence", "samples"):
        with Image.open(workdir / "report" / "round0" / f"{name}.png") as image:
            assert image.size[0] > 100 and image.size[1] > 100
            low, high = image.convert("L").getextrema()
            assert high - low > 100, f"{name}.png is blank"
    summary = (workdir / "report" / "summary.md").read_text()
    assert "| teacher |" in summary and "![samples](round0/samples.png)" in summary
    assert json.loads((workdir / "results.json").read_text())["rounds"][0]["students"]["hard"][
        "test"] == entry["students"]["hard"]["test"]
    printed = capsys.readouterr().out
    assert "student hard" in printed and "Report:" in printed
    kept = [w - d for w, d in zip(entry["labeling"]["written"], entry["labeling"]["duplicated"])]
    assert f"kept per class    {kept}" in printed
    assert entry["students"]["hard"]["pseudo_labels_written"] == per_class

    # Rerunning resumes (the workdir named another way): nothing is retrained.
    quick = ["--quick", "--teacher_steps=8", "--student_steps=6", "--min_confidence=0.1",
             f"--fashion_mnist_dir={tmp_path}/idx"]
    student = workdir / "round0" / "student_full"
    trained = (student / "result.json").read_text()
    exported = (student / "export" / "saved_model.pb").stat().st_mtime_ns
    again = iterate.run([f"--workdir={workdir}/../run", "--ablations=full,hard", *quick])
    assert again["rounds"][0]["students"]["full"]["test"] == entry["students"]["full"]["test"]
    assert (student / "result.json").read_text() == trained
    assert (student / "export" / "saved_model.pb").stat().st_mtime_ns == exported

    with pytest.raises(ValueError, match="min_confidence: 0.1 -> 0.5"):
        iterate.run([f"--workdir={workdir}", "--ablations=full,hard", *quick,
                     "--min_confidence=0.5"])
    # Built-in sizes are part of the run too, not only the flags.
    monkeypatch.setattr(iterate, "QUICK", dataclasses.replace(iterate.QUICK, blocks=2))
    with pytest.raises(ValueError, match="blocks: 1 -> 2"):
        iterate.run([f"--workdir={workdir}", "--ablations=full,hard", *quick])
    monkeypatch.undo()

    # More ablations and a second round only add work; round 1's teacher is round 0's student.
    two = iterate.run([f"--workdir={workdir}", "--rounds=2",
                       "--ablations=full,no_noise,hard,no_balance", *quick])
    first, second = two["rounds"]
    assert first["students"]["hard"]["test"] == entry["students"]["hard"]["test"]
    assert set(first["students"]) == {"full", "no_noise", "hard", "no_balance"}
    assert set(second["students"]) == {"full"}
    assert second["teacher"]["export"] == first["students"]["full"]["export"]
    assert second["teacher"]["test"] == first["students"]["full"]["test"]
    # Without balancing the student sees every image above the threshold, once.
    assert first["students"]["no_balance"]["pseudo_labels_written"] == first["labeling"][
        "above_threshold"]
    assert first["students"]["no_noise"]["pseudo_labels_written"] == first["labeling"]["written"]
    configs = {variant: json.loads((workdir / "round0" / f"student_{variant}" / "config.json")
                                   .read_text()) for variant in ("full", "no_noise")}
    assert (configs["full"]["randaugment_ops"], configs["full"]["dropout"],
            configs["full"]["stochastic_depth"]) == (2, 0.2, 0.8)
    assert (configs["no_noise"]["randaugment_ops"], configs["no_noise"]["dropout"],
            configs["no_noise"]["stochastic_depth"]) == (0, 0.0, 1.0)
    labeled_twice = [schema.parse_pseudo_label(s) for path in glob.glob(
        f"{second['students']['full']['pseudo_labels']}/pseudo_labels-*")
        for s in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert [sum(r.label == c for r in labeled_twice) for c in range(10)] == second["labeling"][
        "written"]
    summary = (workdir / "report" / "summary.md").read_text()
    assert "## Round 1" in summary and "![samples](round1/samples.png)" in summary
    assert set(two["seconds"]) >= {"round1 label_and_balance", "round1 student full", "total"}


def test_a_failed_start_does_not_lock_the_workdir(tmp_path):
    for seed in (0, 1):
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            iterate.run([f"--workdir={tmp_path}/run", "--quick", f"--seed={seed}",
                         f"--fashion_mnist_dir={tmp_path}/nowhere"])
    assert not (tmp_path / "run" / "iterate.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--ablations=full,more_noise"], "unknown ablations ['more_noise']"),
    (["--rounds=2", "--ablations=hard"], "needs the 'full' student"),
    (["--student_steps=-5"], "--student_steps must be >= 0"),
    (["--student_widths", "24", "32", "48"], "equal to or larger than the teacher"),
    (["--quick", "--student_widths", "8"], "equal to or larger than the teacher"),
    (["--seed=-3"], "argument --seed: must be >= 0, got -3"),
])
def test_impossible_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        iterate.parse_args(["--workdir=x"] + flags)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag, message", [
    ("--min_confidence=1.5", "argument --min_confidence: must be in [0, 1], got 1.5"),
    ("--unlabeled_ratio=-2", "unlabeled_ratio must be > 0, got -2.0"),
    ("--randaugment_magnitude=99", "randaugment_magnitude must be in [0, 30], got 99.0"),
])
def test_a_bad_setting_of_any_step_is_refused_before_any_work(tmp_path, flag, message):
    with pytest.raises(ValueError, match=re.escape(message) + r" \(a setting of the loop's "
                                         r"steps; nothing was run\)"):
        iterate.run([f"--workdir={tmp_path}/run", "--quick", flag,
                     f"--fashion_mnist_dir={tmp_path}/idx"])
    assert not (tmp_path / "run").exists()
