"""ns_data.round_report: the round table and summary.md say what results.json holds."""
from __future__ import annotations

from ns_data import round_report


def _entry() -> dict:
    return {
        "round": 1,
        "teacher": {"holdout": 0.9, "test": 0.88},
        "students": {
            "full": {"holdout": 0.91, "test": 0.8945, "description": "noised",
                     "pseudo_labels_written": [5, 5, 5]},
            "no_balance": {"holdout": 0.905, "test": 0.8791, "description": "unbalanced",
                           "pseudo_labels_written": [9, 4, 1]}},
        "labeling": {"above_threshold": [9, 4, 1], "written": [5, 5, 5],
                     "duplicated": [0, 1, 4], "pseudo_label_accuracy": 0.8125},
    }


def test_round_table_has_gains_kept_and_written_counts():
    lines = round_report.format_round(_entry()).splitlines()
    assert lines[1] == "Round 1: pseudo-label accuracy 0.8125"
    assert lines[2] == "  kept per class    [5, 4, 1]"
    assert lines[3] == "  written per class [5, 5, 5] (with duplicates; total 15)"
    assert lines[5].split() == ["teacher", "0.9000", "0.8800"]
    assert lines[6].split() == ["student", "full", "0.9100", "0.8945", "+1.45p", "15"]
    assert lines[7].split() == ["student", "no_balance", "0.9050", "0.8791", "-0.09p", "14"]


def test_summary_lists_settings_rounds_counts_and_plots(tmp_path):
    result = {"sizes": {"labeled": 50, "unlabeled": 1500}, "images_per_class": 5,
              "settings": {"teacher_steps": 10}, "seconds": {"round1 student full": 125.4},
              "rounds": [_entry()]}
    path = round_report.write_summary(str(tmp_path), result, ["a", "b", "c"])
    text = open(path).read()
    assert "Splits: 50 labeled, 1,500 unlabeled; K = 5 images per class." in text
    assert "- teacher_steps: 10" in text
    assert "round1 student full 2m05s" in text
    assert "| student full (noised) | 0.9100 | 0.8945 | +1.45 | 15 |" in text
    assert "| student no_balance (unbalanced) | 0.9050 | 0.8791 | -0.09 | 14 |" in text
    assert "| c | 1 | 5 | 4 |" in text
    assert "Pseudo-label accuracy (against the withheld labels): 0.8125" in text
    assert "![samples](round1/samples.png)" in text
