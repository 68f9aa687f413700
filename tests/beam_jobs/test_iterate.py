"""beam_jobs.iterate --quick: the whole loop (prepare, teacher, label_and_balance, students,
evaluation, report) on a tiny real subset."""
from __future__ import annotations

import glob
import json

import pytest
import tensorflow as tf
from PIL import Image

from beam_jobs import iterate
from ns_data import schema
from tests.beam_jobs import fake_fashion_mnist


@pytest.mark.slow
def test_quick_loop_runs_end_to_end_and_reports(tmp_path, capsys):
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
    for variant, label_type in (("full", "soft"), ("hard", "hard")):
        records = [schema.parse_pseudo_label(s) for path in glob.glob(
            f"{entry['students'][variant]['pseudo_labels']}/pseudo_labels-*")
            for s in tf.data.TFRecordDataset(path).as_numpy_iterator()]
        per_class = [sum(r.label == c for r in records) for c in range(10)]
        assert per_class == entry["labeling"]["written"]
        assert all(n in (0, 50) for n in per_class)
        assert all((r.probabilities is not None) == (label_type == "soft") for r in records)
    truth = {line.split(",")[0]: int(line.split(",")[1]) for line in
             open(workdir / "data" / "unlabeled_truth.csv").read().split()[1:]}
    originals = [r for r in records if r.copy == 0]
    accuracy = sum(truth[r.image_id.decode()] == r.label for r in originals) / len(originals)
    assert entry["labeling"]["pseudo_label_accuracy"] == pytest.approx(accuracy)
    for name in ("counts", "confidence", "samples"):
        with Image.open(workdir / "report" / "round0" / f"{name}.png") as image:
            assert image.size[0] > 100 and image.size[1] > 100
    summary = (workdir / "report" / "summary.md").read_text()
    assert "| teacher |" in summary and "![samples](round0/samples.png)" in summary
    assert json.loads((workdir / "results.json").read_text())["rounds"][0]["students"]["hard"][
        "test"] == entry["students"]["hard"]["test"]
    printed = capsys.readouterr().out
    assert "student hard" in printed and "Report:" in printed

    # Rerunning resumes: nothing is retrained, the same numbers come back.
    again = iterate.run([f"--workdir={workdir}", "--quick", "--teacher_steps=8",
                         "--student_steps=6", "--ablations=full,hard", "--min_confidence=0.1",
                         f"--fashion_mnist_dir={tmp_path}/idx"])
    assert again["rounds"][0]["students"]["full"]["test"] == entry["students"]["full"]["test"]
    trained = json.loads((workdir / "round0" / "student_full" / "result.json").read_text())
    assert trained["resumed_from"] == 6


    with pytest.raises(ValueError, match="min_confidence: 0.1 -> 0.5"):
        iterate.run([f"--workdir={workdir}", "--quick", "--teacher_steps=8",
                     "--student_steps=6", "--ablations=full,hard", "--min_confidence=0.5",
                     f"--fashion_mnist_dir={tmp_path}/idx"])


@pytest.mark.parametrize("flags, message", [
    (["--ablations=full,more_noise"], "unknown ablations ['more_noise']"),
    (["--rounds=2", "--ablations=hard"], "needs the 'full' student"),
])
def test_impossible_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit):
        iterate.parse_args(["--workdir=x"] + flags)
    assert message in capsys.readouterr().err
