"""beam_jobs.iterate: the whole loop (data, teacher, label_and_balance, students, evaluation,
report) on a dataset it has never seen and on a tiny real Fashion-MNIST subset; every setting of
every step refused before any work."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from PIL import Image

from beam_jobs import iterate, seeds_table
from ns_data import schema, stats
from tests.beam_jobs import fake_fashion_mnist, fake_shapes

SHAPES_CONFIG = os.path.join(os.path.dirname(__file__), "shapes_loop.py")
RUNLOCAL = "--config=ns_train/configs/fashion_mnist_loop.py:runlocal"
SHAPES_SIZES = {"labeled": 60, "holdout": 30, "unlabeled": 150}


def _records(pseudo_labels_dir: str) -> list[schema.PseudoLabel]:
    return [schema.parse_pseudo_label(s) for path in glob.glob(
        f"{pseudo_labels_dir}/pseudo_labels-*") for s in
        tf.data.TFRecordDataset(path).as_numpy_iterator()]


@pytest.fixture(name="shapes")
def _shapes(tmp_path) -> list[str]:
    fake_shapes.make(str(tmp_path / "shapes"), SHAPES_SIZES)
    return [f"--{flag}={tmp_path}/shapes/{split}-*" for flag, split in
            (("labeled", "labeled"), ("unlabeled", "unlabeled"), ("eval", "holdout"))]


@pytest.mark.slow
def test_the_loop_runs_on_a_dataset_it_has_never_seen(tmp_path, shapes, capsys):
    workdir = tmp_path / "run"
    result = iterate.run([f"--workdir={workdir}", f"--config={SHAPES_CONFIG}", *shapes])
    assert result["name"] == "shapes"
    assert result["sizes"] == SHAPES_SIZES  # counted: this data has no splits.json
    assert result["images_per_class"] == 50  # 150 unlabeled images / 3 classes
    first, second = result["rounds"]
    # Students grow per round and the report states each model's size.
    teacher, student, grown = (first["teacher"], first["students"]["full"],
                               second["students"]["full"])
    assert [m["architecture"] for m in (teacher, student, grown)] == [
        "small_resnet 4/8 x1", "small_resnet 4/8 x1", "small_resnet 6/12 x1"]
    assert teacher["parameters"] == student["parameters"] < grown["parameters"]
    assert [m["steps"] for m in (teacher, student, grown)] == [60, 60, 60]
    assert second["teacher"] == {key: student[key] for key in second["teacher"]}
    assert second["teacher"]["export"] == student["export"]
    # The paper's baseline: each round's student model, for its steps, on the labeled data only.
    for entry, architecture in zip(result["rounds"], ("4/8", "6/12")):
        baseline = entry["baseline"]
        assert baseline["architecture"] == f"small_resnet {architecture} x1"
        assert baseline["parameters"] == entry["students"]["full"]["parameters"]
        assert baseline["steps"] == 60 and 0.0 <= baseline["holdout"] <= 1.0
        trained = json.loads((workdir / f"round{entry['round']}" / "baseline" / "config.json")
                             .read_text())
        assert trained["unlabeled"] == "" and trained["labeled"] == f"{tmp_path}/shapes/labeled-*"
        assert trained["randaugment_ops"] == 1 and baseline["export"].startswith(str(workdir))
    for entry in result["rounds"]:
        (name, model), = entry["students"].items()
        assert name == "full" and "test" not in model and 0.0 <= model["holdout"] <= 1.0
        # No truth was given: the report has no pseudo-label accuracy, and still works.
        assert "pseudo_label_accuracy" not in entry["labeling"]
        # The counts reported are stats.json's and the records the student trained on.
        run_stats = stats.read_stats(model["pseudo_labels"])
        assert run_stats["config"]["images_per_class"] == 50
        assert run_stats["config"]["min_confidence"] == 0.35
        assert entry["labeling"]["written"] == [c["written"] for c in run_stats["classes"]]
        assert model["pseudo_labels_written"] == entry["labeling"]["written"]
        records = _records(model["pseudo_labels"])
        assert [sum(r.label == c for r in records) for c in range(3)] == entry["labeling"][
            "written"]
        assert all(r.image_id.startswith(b"shape-unlabeled-") for r in records)
        assert all(n in (0, 50) for n in entry["labeling"]["written"]) and records
    saved = json.loads((workdir / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["config"]["students[1].resnet_widths"] == [6, 12]
    assert saved["data"]["labeled"] == f"{tmp_path}/shapes/labeled-*"
    summary = (workdir / "report" / "summary.md").read_text()
    assert summary.startswith("# Noisy Student on shapes\n")
    assert ("| model | size | holdout top-1 | holdout gain | holdout gain over baseline | "
            "pseudo-labeled records |") in summary
    assert "| baseline (the student's model and steps, labeled data only) |" in summary
    assert "| red square |" in summary and "![samples](round1/samples.png)" in summary
    assert "small_resnet 6/12 x1" in summary
    printed = capsys.readouterr().out
    assert "pseudo-label accuracy unknown (no truth given)" in printed
    gain = 100 * (second["students"]["full"]["holdout"] - second["baseline"]["holdout"])
    assert f"{gain:+.2f}p" in printed and "vs baseline" in printed
    assert f"{teacher['parameters'] / 1e3:.1f}k" in printed


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
        records[variant] = _records(entry["students"][variant]["pseudo_labels"])
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

    # More ablations and a second round only add work; round 1's teacher is round 0's student,
    # and round 1's student is wider.
    two = iterate.run([f"--workdir={workdir}", "--rounds=2",
                       "--ablations=full,no_noise,hard,no_balance", *quick])
    first, second = two["rounds"]
    assert first["students"]["hard"]["test"] == entry["students"]["hard"]["test"]
    assert set(first["students"]) == {"full", "no_noise", "hard", "no_balance"}
    assert set(second["students"]) == {"full"}
    assert second["teacher"]["export"] == first["students"]["full"]["export"]
    assert second["teacher"]["test"] == first["students"]["full"]["test"]
    assert second["students"]["full"]["architecture"] == "small_resnet 12/24 x1"
    assert second["students"]["full"]["parameters"] > second["teacher"]["parameters"]
    # Each round's baseline is that round's student architecture on the labeled data alone.
    assert [r["baseline"]["architecture"] for r in two["rounds"]] == [
        "small_resnet 8/16 x1", "small_resnet 12/24 x1"]
    assert (workdir / "round1" / "baseline" / "export" / "saved_model.pb").exists()
    baseline = json.loads((workdir / "round1" / "baseline" / "config.json").read_text())
    assert baseline["unlabeled"] == "" and baseline["resnet_widths"] == [12, 24]
    # The labeled set is analysed once, by the teacher; every other model reuses it.
    assert baseline["transform_from"] == str(workdir / "round0" / "teacher" / "transform")
    assert sorted(p.parent.name for p in workdir.glob("round*/*/transform")) == ["teacher"]
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
    labeled_twice = _records(second["students"]["full"]["pseudo_labels"])
    assert [sum(r.label == c for r in labeled_twice) for c in range(10)] == second["labeling"][
        "written"]
    summary = (workdir / "report" / "summary.md").read_text()
    assert "## Round 1" in summary and "![samples](round1/samples.png)" in summary
    assert set(two["seconds"]) >= {"round1 label_and_balance", "round1 student full", "total"}


def _fake_result(config, data) -> dict:
    """What run_loop returns and writes for one seed, with top-1s that depend on the seed."""
    model = {"architecture": "small_resnet 4/8 x1", "export": f"{data.workdir}/export"}
    result = {"config": {"seed": config.seed}, "rounds": [{
        "round": 0,
        "teacher": {**model, "holdout": 0.80 + config.seed / 100},
        "baseline": {**model, "holdout": 0.81 + config.seed / 100},
        "students": {"full": {**model, "holdout": 0.83 + config.seed / 50}}}]}
    with open(os.path.join(data.workdir, "results.json"), "w") as f:
        json.dump(result, f)
    return result


def test_seeds_run_one_loop_each_and_are_tabled(tmp_path, shapes, capsys, monkeypatch):
    # run_loop itself is what the other tests here run; this checks what --seeds adds.
    calls = []

    def run_loop(config, data):
        calls.append((config.seed, data.workdir))
        os.makedirs(data.workdir)
        return _fake_result(config, data)

    monkeypatch.setattr(iterate, "run_loop", run_loop)
    workdir = tmp_path / "seeds"
    table = iterate.run([f"--workdir={workdir}", f"--config={SHAPES_CONFIG}", "--seeds=3,4",
                         *shapes])
    assert calls == [(3, f"{workdir}/seed-3"), (4, f"{workdir}/seed-4")]
    assert table["seeds"] == [3, 4]
    (entry,) = table["rounds"]
    assert entry["split"] == "holdout"
    expected = {"teacher": [0.83, 0.84], "baseline": [0.84, 0.85], "student full": [0.89, 0.91]}
    assert entry["top1"].keys() == expected.keys()
    for name, top1 in expected.items():
        assert entry["top1"][name] == pytest.approx(top1)
    assert entry["gains"]["student - teacher"] == pytest.approx([6.0, 7.0])
    assert entry["gains"]["student - baseline"] == pytest.approx([5.0, 6.0])
    text = (workdir / "seeds.md").read_text()
    assert text.startswith("Seeds 3, 4: mean ± sample standard deviation over 2 runs")
    assert "| student - baseline | | +5.50 ± 0.71 | +5.00 | +6.00 |" in text
    assert text.strip() in capsys.readouterr().out
    assert json.loads((workdir / "seeds.json").read_text()) == json.loads(json.dumps(table))
    # The same table from the kept results.json files.
    paths = [str(workdir / f"seed-{seed}" / "results.json") for seed in (3, 4)]
    assert seeds_table.main(paths) == text.strip()


def test_seeds_check_every_seeds_workdir_before_the_first_runs(tmp_path, shapes, monkeypatch):
    monkeypatch.setattr(iterate, "run_loop", lambda config, data: pytest.fail("a loop ran"))
    workdir = tmp_path / "seeds"
    # Seed 4's workdir holds a run with other teacher steps.
    args = iterate.parse_args([f"--workdir={workdir}/seed-4", f"--config={SHAPES_CONFIG}",
                               "--seed=4", "--teacher_steps=7", *shapes])
    data = iterate.LoopData(workdir=args.workdir, labeled=args.labeled,
                            unlabeled=args.unlabeled, eval=args.eval)
    iterate._record_workdir(iterate.loop_config(args), data)
    with pytest.raises(ValueError, match="config.teacher.steps: 7 -> 60"):
        iterate.run([f"--workdir={workdir}", f"--config={SHAPES_CONFIG}", "--seeds=3,4",
                     *shapes])
    assert not (workdir / "seed-3").exists()


@pytest.mark.parametrize("flags, message", [
    (["--seeds=1,x"], "--seeds=1,x: expected comma-separated integers"),
    (["--seeds=1,2,1"], "--seeds=1,2,1: a seed is repeated"),
    (["--seeds=1,2", "--seed=3"], "--seed and --seeds: give one"),
])
def test_bad_seeds_are_refused_naming_the_flag(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        iterate.parse_args([f"--workdir={tmp_path}", f"--config={SHAPES_CONFIG}", *flags])
    assert message in capsys.readouterr().err


def test_a_failed_start_does_not_lock_the_workdir(tmp_path):
    for seed in (0, 1):
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            iterate.run([f"--workdir={tmp_path}/run", RUNLOCAL, f"--seed={seed}",
                         f"--fashion_mnist_dir={tmp_path}/nowhere"])
    assert not (tmp_path / "run" / "iterate.json").exists()


def _edited_config(tmp_path, change: str) -> str:
    """A config file that is shapes_loop.py with `change` made to its LoopConfig `c`."""
    path = tmp_path / "edited.py"
    path.write_text("import dataclasses\nfrom ns_train import loop_config\n\n\n"
                    f"def get_config():\n    c = loop_config.load({SHAPES_CONFIG!r})\n"
                    f"    return {change}\n")
    return f"--config={path}"


STEP = r" \(a setting of the loop's steps; nothing was run\)"


@pytest.mark.parametrize("flags, message", [
    # label_and_balance's and rebalance's own messages
    (["--min_confidence=1.5"], r"argument --min_confidence: must be in \[0, 1\], got 1.5" + STEP),
    (["{config}dataclasses.replace(c, labeling=dataclasses.replace(c.labeling, "
      "label_type='soft_top'))"], r"argument --label_type: invalid choice: 'soft_top'"),
    (["{config}dataclasses.replace(c, labeling=dataclasses.replace(c.labeling, batch_size=0))"],
     r"argument --batch_size: must be >= 1, got 0" + STEP),
    (["{config}dataclasses.replace(c, labeling=dataclasses.replace(c.labeling, "
      "num_shards=0))"], r"argument --num_shards: must be >= 1, got 0" + STEP),
    # the trainer's messages, for the teacher and every student
    (["--unlabeled_ratio=-2"], r"unlabeled_ratio must be > 0, got -2.0"),
    (["--randaugment_magnitude=99"], r"randaugment_magnitude must be in \[0, 30\], got 99.0"),
    (["--student_steps=-5"], r"steps must be >= 0, got -5"),
    (["{config}dataclasses.replace(c, students=(c.students[0], {{**c.students[1], "
      "'learning_rate': 0}}))"], "learning_rate must be > 0, got 0"),
    # the loop's own
    (["--images_per_class=-1"], "images_per_class must be >= 0"),
    (["--rounds=3"], r"rounds must be in \[1, 2\]: the config has students for 2 rounds"),
    (["--ablations=full,more_noise"], r"\(unknown \['more_noise'\]\)"),
    (["--rounds=2", "--ablations=hard"], "needs the 'full' student"),
    (["--seed=-3"], "seed must be >= 0, got -3"),
    (["{config}dataclasses.replace(c, students=({{'resnet_widths': (2, 8)}}, "
      "c.students[1]))"], r"students\[0\] is smaller than the teacher"),
])
def test_a_bad_setting_of_any_step_is_refused_before_training(tmp_path, shapes, flags,
                                                              message):
    flags = [flag.replace("{config}", "") if "{config}" not in flag
             else _edited_config(tmp_path, flag.replace("{config}", "").format())
             for flag in flags]
    if not any(flag.startswith("--config") for flag in flags):
        flags.append(f"--config={SHAPES_CONFIG}")
    with pytest.raises(ValueError, match=message):
        iterate.run([f"--workdir={tmp_path}/run", *shapes, *flags])
    assert not (tmp_path / "run" / "round0" / "teacher").exists()
    assert not (tmp_path / "run" / "iterate.json").exists()


@pytest.mark.parametrize("flags, message", [
    ([], "--labeled, --unlabeled and --eval are required: the config prepares no data"),
    (["--labeled=x"], "missing --unlabeled, --eval: the loop needs"),
    (["--labeled={shapes}/labeled-*", "--unlabeled={shapes}/unlabeled-*",
      "--eval={shapes}/nothing-*"], r"--eval=.*/nothing-\* matches no files"),
    (["--labeled={shapes}/labeled-*", "--unlabeled={shapes}/unlabeled-*",
      "--eval={shapes}/holdout-*", "--unlabeled_truth={shapes}/truth.csv"],
     "--unlabeled_truth=.*/truth.csv does not exist"),
])
def test_missing_data_is_refused_before_any_work(tmp_path, shapes, flags, message):
    flags = [flag.format(shapes=f"{tmp_path}/shapes") for flag in flags]
    with pytest.raises(ValueError, match=message):
        iterate.run([f"--workdir={tmp_path}/run", f"--config={SHAPES_CONFIG}", *flags])
    assert not (tmp_path / "run").exists()


def test_help_needs_no_tensorflow():
    code = ("import sys\nfrom beam_jobs import iterate\ntry:\n    iterate.parse_args(['--help'])"
            "\nexcept SystemExit:\n    pass\nprint('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))).stdout
    assert "--unlabeled_truth" in out and "--config" in out
    assert out.strip().splitlines()[-1] == "False"
