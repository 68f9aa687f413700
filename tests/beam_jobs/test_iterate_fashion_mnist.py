"""beam_jobs.iterate on the Fashion-MNIST loop config's `runlocal` variant, over a fake
Fashion-MNIST download: data preparation, teacher, label_and_balance, two students and the
baseline, truth-checked report, resume, and changed settings refused. Its own file so that
pytest-xdist can run it beside test_iterate.py."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from beam_jobs import iterate
from tests.beam_jobs import fake_fashion_mnist
from tests.beam_jobs.fake_fashion_mnist import RUNLOCAL
from tests.beam_jobs.fake_runs import pseudo_labels


@pytest.mark.slow
def test_runlocal_fashion_mnist_loop_runs_end_to_end_and_reports(tmp_path, capsys):
    fake_fashion_mnist.make(str(tmp_path / "idx"))
    workdir = tmp_path / "run"
    quick = [RUNLOCAL, "--teacher_steps=8", "--student_steps=6", "--min_confidence=0.1",
             f"--fashion_mnist_dir={tmp_path}/idx"]
    result = iterate.run([f"--workdir={workdir}", "--ablations=full,hard", *quick])
    assert result["sizes"] == {"labeled": 200, "holdout": 100, "unlabeled": 500, "test": 200}
    assert result["images_per_class"] == 50
    (entry,) = result["rounds"]
    assert set(entry["students"]) == {"full", "hard"}
    for model in [entry["teacher"], *entry["students"].values()]:
        assert 0.0 <= model["test"] <= 1.0 and 0.0 <= model["holdout"] <= 1.0
        assert model["architecture"] == "small_resnet 8/16 x1" and model["parameters"] > 1000
    # The written counts in the report are the records in the shards the student trained on.
    records = {}
    for variant, label_type in (("full", "soft"), ("hard", "hard")):
        records[variant] = pseudo_labels(entry["students"][variant]["pseudo_labels"])
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
    assert summary.startswith("# Noisy Student on Fashion-MNIST\n")
    assert "| teacher | small_resnet 8/16 x1" in summary
    assert "![samples](round0/samples.png)" in summary
    assert json.loads((workdir / "results.json").read_text())["rounds"][0]["students"]["hard"][
        "test"] == entry["students"]["hard"]["test"]
    printed = capsys.readouterr().out
    assert "student hard" in printed and "Report:" in printed
    kept = [w - d for w, d in zip(entry["labeling"]["written"], entry["labeling"]["duplicated"])]
    assert f"kept per class    {kept}" in printed
    assert entry["students"]["hard"]["pseudo_labels_written"] == per_class
    # The labeled set is analysed once, by the teacher; every other model reuses it.
    for model in ("student_full", "student_hard", "baseline"):
        trained = json.loads((workdir / "round0" / model / "config.json").read_text())
        assert trained["transform_from"] == str(workdir / "round0" / "teacher" / "transform")
    assert sorted(p.parent.name for p in workdir.glob("round*/*/transform")) == ["teacher"]

    # Rerunning resumes (the workdir named another way): nothing is retrained.
    student = workdir / "round0" / "student_full"
    trained = (student / "result.json").read_text()
    exported = (student / "export" / "saved_model.pb").stat().st_mtime_ns
    again = iterate.run([f"--workdir={workdir}/../run", "--ablations=full,hard", *quick])
    assert again["rounds"][0]["students"]["full"]["test"] == entry["students"]["full"]["test"]
    assert (student / "result.json").read_text() == trained
    assert (student / "export" / "saved_model.pb").stat().st_mtime_ns == exported

    with pytest.raises(ValueError, match="config.labeling.min_confidence: 0.1 -> 0.5"):
        iterate.run([f"--workdir={workdir}", "--ablations=full,hard", *quick,
                     "--min_confidence=0.5"])
    # The config file's contents are part of the run too, not only the flags.
    edited = tmp_path / "edited.py"
    edited.write_text("import dataclasses\nfrom ns_train import loop_config\n\n\n"
                      "def get_config():\n"
                      "    c = loop_config.load('ns_train/configs/fashion_mnist_loop.py:runlocal')"
                      "\n    return dataclasses.replace(c, teacher={**c.teacher, "
                      "'resnet_blocks': 2}, students=tuple({**s, 'resnet_blocks': 2} "
                      "for s in c.students))\n")
    with pytest.raises(ValueError, match="config.teacher.resnet_blocks: 1 -> 2"):
        iterate.run([f"--workdir={workdir}", "--ablations=full,hard", *quick[1:],
                     f"--config={edited}"])
