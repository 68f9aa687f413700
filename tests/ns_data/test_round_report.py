"""ns_data.round_report: the round table and summary.md say what results.json holds."""
from __future__ import annotations

import pytest

from ns_data import round_report


def _entry(test: bool = True) -> dict:
    def model(holdout, test_top1, **more):
        return {"holdout": holdout, **({"test": test_top1} if test else {}), **more}

    size = {"architecture": "small_resnet 24/48/96 x1", "parameters": 123_456, "steps": 2400}
    return {
        "round": 1,
        "teacher": model(0.9, 0.88, architecture="small_resnet 16/32/64 x1",
                         parameters=45_678, steps=1500),
        "students": {
            "full": model(0.91, 0.8945, description="noised", pseudo_labels_written=[5, 5, 5],
                          **size),
            "no_balance": model(0.905, 0.8791, description="unbalanced",
                                pseudo_labels_written=[9, 4, 1], **size)},
        "labeling": {"above_threshold": [9, 4, 1], "written": [5, 5, 5],
                     "duplicated": [0, 1, 4], "pseudo_label_accuracy": 0.8125},
    }


def test_round_table_has_sizes_gains_kept_and_written_counts():
    lines = round_report.format_round(_entry()).splitlines()
    assert lines[1] == "Round 1: pseudo-label accuracy 0.8125"
    assert lines[2] == "  kept per class    [5, 4, 1]"
    assert lines[3] == "  written per class [5, 5, 5] (with duplicates; total 15)"
    assert lines[4].split() == ["model", "params", "holdout", "top-1", "test", "top-1", "vs",
                                "teacher", "pseudo-labels"]
    assert lines[5].split() == ["teacher", "45.7k", "0.9000", "0.8800"]
    assert lines[6].split() == ["student", "full", "123.5k", "0.9100", "0.8945", "+1.45p", "15"]
    assert lines[7].split() == ["student", "no_balance", "123.5k", "0.9050", "0.8791", "-0.09p",
                                "14"]


def test_without_a_test_split_or_truth_gains_are_on_the_holdout():
    entry = _entry(test=False)
    del entry["labeling"]["pseudo_label_accuracy"]
    lines = round_report.format_round(entry).splitlines()
    assert lines[1] == "Round 1: pseudo-label accuracy unknown (no truth given)"
    assert "test" not in lines[4]
    assert lines[6].split() == ["student", "full", "123.5k", "0.9100", "+1.00p", "15"]


def test_summary_lists_settings_sizes_rounds_counts_and_plots(tmp_path):
    result = {"name": "Shapes", "sizes": {"labeled": 50, "unlabeled": 1500},
              "images_per_class": 5, "config": {"teacher.steps": 10},
              "seconds": {"round1 student full": 125.4}, "rounds": [_entry()]}
    path = round_report.write_summary(str(tmp_path), result, ["a", "b", "c"])
    text = open(path).read()
    assert text.startswith("# Noisy Student on Shapes\n")
    assert "Splits: 50 labeled, 1,500 unlabeled; K = 5 images per class." in text
    assert "- teacher.steps: 10" in text
    assert "round1 student full 2m05s" in text
    assert "| model | size | holdout top-1 | test top-1 | test gain | pseudo-labeled records |" \
        in text
    assert "| teacher | small_resnet 16/32/64 x1, 45.7k, 1,500 steps | 0.9000 | 0.8800 | | |" \
        in text
    assert ("| student full (noised) | small_resnet 24/48/96 x1, 123.5k, 2,400 steps | 0.9100 "
            "| 0.8945 | +1.45 | 15 |") in text
    assert "| 0.9050 | 0.8791 | -0.09 | 14 |" in text
    assert "| c | 1 | 5 | 4 |" in text
    assert "Pseudo-label accuracy (against the withheld labels): 0.8125" in text
    assert "![samples](round1/samples.png)" in text


def test_summary_without_a_test_split(tmp_path):
    result = {"sizes": {"labeled": 50}, "images_per_class": 5, "config": {},
              "rounds": [_entry(test=False)]}
    text = open(round_report.write_summary(str(tmp_path), result, ["a", "b", "c"])).read()
    assert text.startswith("# Noisy Student\n")
    assert "| model | size | holdout top-1 | holdout gain | pseudo-labeled records |" in text
    assert "| 0.9100 | +1.00 | 15 |" in text


def _with_baseline(entry: dict, holdout: float, test: float) -> dict:
    return {**entry, "baseline": {"holdout": holdout, "test": test, "description": "labeled only",
                                  "architecture": "small_resnet 24/48/96 x1",
                                  "parameters": 123_456, "steps": 2400}}


def test_round_table_and_summary_give_the_gain_over_the_baseline(tmp_path):
    entry = _with_baseline(_entry(), 0.9, 0.8845)
    lines = round_report.format_round(entry).splitlines()
    assert lines[4].split()[-5:] == ["vs", "teacher", "vs", "baseline", "pseudo-labels"]
    assert lines[6].split() == ["baseline", "123.5k", "0.9000", "0.8845"]
    assert lines[7].split() == ["student", "full", "123.5k", "0.9100", "0.8945", "+1.45p",
                                "+1.00p", "15"]
    result = {"sizes": {"labeled": 50}, "images_per_class": 5, "config": {}, "rounds": [entry]}
    text = open(round_report.write_summary(str(tmp_path), result, ["a", "b", "c"])).read()
    assert ("| model | size | holdout top-1 | test top-1 | test gain | test gain over baseline "
            "| pseudo-labeled records |\n| --- | --- | --- | --- | --- | --- | --- |\n") in text
    assert ("| baseline (labeled only) | small_resnet 24/48/96 x1, 123.5k, 2,400 steps | 0.9000 "
            "| 0.8845 | | | |") in text
    assert "| 0.9100 | 0.8945 | +1.45 | +1.00 | 15 |" in text


def _run(seed: int, teacher: float, baseline: float, student: float) -> dict:
    entry = _with_baseline(_entry(), 0.5, baseline)
    entry["teacher"] = {**entry["teacher"], "test": teacher}
    entry["students"]["full"] = {**entry["students"]["full"], "test": student}
    return {"config": {"seed": seed}, "rounds": [entry]}


def test_seeds_table_gives_mean_and_std_of_models_and_gains():
    table = round_report.seeds_table([_run(0, 0.88, 0.885, 0.895), _run(1, 0.87, 0.880, 0.893),
                                      _run(2, 0.89, 0.884, 0.897)])
    (entry,) = table["rounds"]
    assert table["seeds"] == [0, 1, 2] and entry["split"] == "test"
    assert entry["gains"]["student - teacher"] == pytest.approx([1.5, 2.3, 0.7])
    assert entry["gains"]["student - baseline"] == pytest.approx([1.0, 1.3, 1.3])
    lines = round_report.format_seeds(table).splitlines()
    assert lines[2] == "Round 1 (test split)"
    assert lines[4] == "| | model | test top-1 / gain | seed 0 | seed 1 | seed 2 |"
    assert lines[6] == ("| teacher | small_resnet 16/32/64 x1 | 88.00 ± 1.00 | 88.00 | 87.00 "
                        "| 89.00 |")
    assert lines[7].startswith("| baseline | small_resnet 24/48/96 x1 | 88.30 ± 0.26 |")
    assert lines[8].startswith("| student full | small_resnet 24/48/96 x1 | 89.50 ± 0.20 |")
    assert lines[9] == "| student - teacher | | +1.50 ± 0.80 | +1.50 | +2.30 | +0.70 |"
    assert lines[10] == "| student - baseline | | +1.20 ± 0.17 | +1.00 | +1.30 | +1.30 |"


def test_seeds_table_of_one_seed_says_so_and_refuses_mixed_runs():
    text = round_report.format_seeds(round_report.seeds_table([_run(3, 0.88, 0.885, 0.895)]))
    assert "| student - baseline | | +1.00 (one seed) | +1.00 |" in text
    two_rounds = _run(4, 0.88, 0.885, 0.895)
    two_rounds["rounds"] *= 2
    with pytest.raises(ValueError, match=r"different numbers of rounds \[1, 2\]"):
        round_report.seeds_table([_run(3, 0.88, 0.885, 0.895), two_rounds])
    no_test = _run(5, 0.88, 0.885, 0.895)
    for model in [no_test["rounds"][0]["teacher"], no_test["rounds"][0]["baseline"],
                  *no_test["rounds"][0]["students"].values()]:
        del model["test"]
    with pytest.raises(ValueError, match="some runs have a test split, some do not"):
        round_report.seeds_table([_run(3, 0.88, 0.885, 0.895), no_test])
