"""beam_jobs.iterate: the whole loop (data, teacher, label_and_balance, students, evaluation,
report) on a dataset it has never seen; the plan of every training; seeds; every setting of
every step refused before any work. test_iterate_fashion_mnist.py runs the Fashion-MNIST config."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from beam_jobs import iterate, seeds_table
from ns_data import stats
from ns_train import loop_config
from tests.beam_jobs import fake_shapes
from tests.beam_jobs.fake_fashion_mnist import RUNLOCAL
from tests.beam_jobs.fake_runs import pseudo_labels

SHAPES_CONFIG = os.path.join(os.path.dirname(__file__), "shapes_loop.py")
SHAPES_SIZES = {"labeled": 60, "holdout": 30, "unlabeled": 150}


@pytest.fixture(name="shapes")
def _shapes(tmp_path) -> list[str]:
    fake_shapes.make(str(tmp_path / "shapes"), SHAPES_SIZES)
    return [f"--{flag}={tmp_path}/shapes/{split}-*" for flag, split in
            (("labeled", "labeled"), ("unlabeled", "unlabeled"), ("eval", "holdout"))]


@pytest.mark.slow
def test_the_loop_runs_on_a_dataset_it_has_never_seen(tmp_path, shapes, capsys):
    workdir = tmp_path / "run"
    result = iterate.run([f"--workdir={workdir}", f"--config={SHAPES_CONFIG}", *shapes,
                          "--ablations=full,no_balance"])
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
    # Round 0's student is the teacher's model, steps and noise: the teacher is its baseline, as
    # in the paper's same-size setting, and is not trained twice.
    assert {key: first["baseline"][key] for key in teacher} == teacher
    assert first["baseline"]["description"].endswith("; the round-0 teacher")
    assert not (workdir / "round0" / "baseline").exists()
    assert second["baseline"]["export"] == str(workdir / "round1" / "baseline" / "export")
    for entry, architecture, trained_as in zip(result["rounds"], ("4/8", "6/12"),
                                               ("round0/teacher", "round1/baseline")):
        baseline = entry["baseline"]
        assert baseline["architecture"] == f"small_resnet {architecture} x1"
        assert baseline["parameters"] == entry["students"]["full"]["parameters"]
        assert baseline["steps"] == 60 and 0.0 <= baseline["holdout"] <= 1.0
        trained = json.loads((workdir / trained_as / "config.json").read_text())
        assert trained["unlabeled"] == "" and trained["labeled"] == f"{tmp_path}/shapes/labeled-*"
        assert trained["randaugment_ops"] == 1 and baseline["export"].startswith(str(workdir))
    # Round 0 trains the ablations too; round 1 only the full student.
    assert [list(entry["students"]) for entry in result["rounds"]] == [
        ["full", "no_balance"], ["full"]]
    for entry in result["rounds"]:
        model = entry["students"]["full"]
        assert "test" not in model and 0.0 <= model["holdout"] <= 1.0
        # No truth was given: the report has no pseudo-label accuracy, and still works.
        assert "pseudo_label_accuracy" not in entry["labeling"]
        # The counts reported are stats.json's and the records the student trained on.
        run_stats = stats.read_stats(model["pseudo_labels"])
        assert run_stats["config"]["images_per_class"] == 50
        assert run_stats["config"]["min_confidence"] == 0.35
        assert entry["labeling"]["written"] == [c["written"] for c in run_stats["classes"]]
        assert model["pseudo_labels_written"] == entry["labeling"]["written"]
        records = pseudo_labels(model["pseudo_labels"])
        assert [sum(r.label == c for r in records) for c in range(3)] == entry["labeling"][
            "written"]
        assert all(r.image_id.startswith(b"shape-unlabeled-") for r in records)
        assert all(n in (0, 50) for n in entry["labeling"]["written"]) and records
    # Without balancing the student sees every image above the threshold, once.
    unbalanced = first["students"]["no_balance"]
    assert unbalanced["pseudo_labels_written"] == first["labeling"]["above_threshold"]
    assert len(pseudo_labels(unbalanced["pseudo_labels"])) == sum(
        first["labeling"]["above_threshold"])
    assert set(result["seconds"]) >= {"round0 rebalance no_balance", "round0 student no_balance",
                                      "round1 label_and_balance", "round1 student full", "total"}
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



def test_the_plan_names_every_training_with_its_data_noise_and_normalisation(tmp_path):
    """What each training of a 2-round loop with every ablation reads, checked without training
    (the shapes and runlocal tests train a subset for real)."""
    config = dataclasses.replace(
        loop_config.load("ns_train/configs/fashion_mnist_loop.py:runlocal"), rounds=2,
        ablations=loop_config.ABLATIONS,
        students=({"steps": 500}, {"resnet_widths": (12, 24), "steps": 500}))
    data = iterate.LoopData(workdir=str(tmp_path), labeled="L-*", unlabeled="U-*", eval="E-*")
    plan = dict(iterate.trainings(config, data))
    assert list(plan) == ["teacher", "round0 student full", "round0 student no_noise",
                          "round0 student hard", "round0 student no_balance", "round0 baseline",
                          "round1 student full", "round1 baseline"]
    run = str(tmp_path)
    assert {name: c.unlabeled for name, c in plan.items()} == {
        "teacher": "", "round0 baseline": "", "round1 baseline": "",
        "round0 student full": f"{run}/round0/pseudo_soft/pseudo_labels-*",
        "round0 student no_noise": f"{run}/round0/pseudo_soft/pseudo_labels-*",
        "round0 student hard": f"{run}/round0/pseudo_hard/pseudo_labels-*",
        "round0 student no_balance": f"{run}/round0/pseudo_unbalanced/pseudo_labels-*",
        "round1 student full": f"{run}/round1/pseudo_soft/pseudo_labels-*"}
    assert {c.labeled for c in plan.values()} == {"L-*"} and {
        c.eval for c in plan.values()} == {"E-*"}
    # The no_noise student is the full one without RandAugment, dropout and stochastic depth.
    full, quiet = plan["round0 student full"], plan["round0 student no_noise"]
    assert (full.randaugment_ops, full.dropout, full.stochastic_depth) == (2, 0.2, 0.8)
    assert dataclasses.replace(quiet, workdir=full.workdir, randaugment_ops=2, dropout=0.2,
                               stochastic_depth=0.8) == full
    assert (quiet.randaugment_ops, quiet.dropout, quiet.stochastic_depth) == (0, 0.0, 1.0)
    # Round 1's student and baseline grow; each baseline is its round's student on labeled data.
    assert [plan[n].resnet_widths for n in ("teacher", "round0 student full", "round0 baseline",
                                            "round1 student full", "round1 baseline")] == [
        (8, 16), (8, 16), (8, 16), (12, 24), (12, 24)]
    assert [plan[n].steps for n in ("teacher", "round0 student full", "round0 baseline",
                                    "round1 student full", "round1 baseline")] == [
        400, 500, 500, 500, 500]
    assert iterate.baseline_trainings(config) == {0: "round0 baseline", 1: "round1 baseline"}
    # A student that is the teacher's model, steps and noise has the teacher as its baseline;
    # a later round with the same student shares it.
    same = dataclasses.replace(config, students=({}, {}, {"steps": 500}), rounds=3)
    assert iterate.baseline_trainings(same) == {0: "teacher", 1: "teacher", 2: "round2 baseline"}
    assert [n for n in dict(iterate.trainings(same, data)) if "baseline" in n] == [
        "round2 baseline"]
    # The labeled set is analysed once, by the teacher; every other model reuses the analysis.
    assert plan["teacher"].transform_from == ""
    assert {c.transform_from for n, c in plan.items() if n != "teacher"} == {
        f"{run}/round0/teacher/transform"}


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
