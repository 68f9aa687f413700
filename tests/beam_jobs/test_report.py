"""beam_jobs.report: any finished run drawn from its own files."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from beam_jobs import cli, rebalance, report
from ns_data import completion, stats
from tests.beam_jobs.fake_runs import corpus, run_fake


def test_a_finished_run_and_its_rebalance_are_drawn(tmp_path, capsys):
    first, first_stats = run_fake(tmp_path, corpus()[:40], "--label_type=hard",
                                  "--predictions_topk=4", "--images_per_class=6")
    summary = report.run([f"--run_dir={first}", "--samples_per_class=3"])
    assert summary["written"] == [c["written"] for c in first_stats["classes"]]
    assert summary["predictions"] == f"{first}/predictions"
    assert 0.26 < summary["confidence_quantiles"]["0.1"] < summary["confidence_quantiles"]["0.9"]
    out = capsys.readouterr().out
    assert f"Report: {first}/report/report.md (counts.png, confidence.png, samples.png)" in out
    markdown = open(f"{first}/report/report.md").read()
    assert "![samples](samples.png)" in markdown and '"images_per_class": 6' in markdown
    # 4 classes of 4x4 images, enlarged twice: four rows of 8 px cells with captions, 3 columns.
    with Image.open(f"{first}/report/samples.png") as grid:
        assert grid.size == (100 + 3 * 14, 30 + 4 * (8 + 14 + 6))

    again = str(tmp_path / "re")
    rebalance.run([f"--predictions={first}/predictions", f"--output_dir={again}",
                   "--runner=DirectRunner", "--images_per_class=2", "--label_type=hard"])
    names = "--class_names=zero,one,two,three"
    summary = report.run([f"--run_dir={again}", f"--report_dir={tmp_path}/r", names])
    assert summary["written"] == [c["written"] for c in stats.read_stats(again)["classes"]]
    assert all(n in (0, 2) for n in summary["written"]) and sum(summary["written"]) >= 4
    assert summary["predictions"] == f"{first}/predictions/predictions-*.parquet"
    assert sorted(os.listdir(tmp_path / "r")) == ["confidence.png", "counts.png", "report.md",
                                                  "samples.png"]


def test_what_cannot_be_drawn_is_one_line(tmp_path, capsys):
    first, _ = run_fake(tmp_path, corpus()[:12], "--label_type=hard", "--predictions_topk=4")
    assert cli.main(report.run, "report", [f"--run_dir={first}", "--class_names=a,b"]) == 2
    assert capsys.readouterr().err == ("report: error: --class_names has 2 names; the run has "
                                       "4 classes\n")
    assert cli.main(report.run, "report", [f"--run_dir={tmp_path}"]) == 2
    assert "has no stats.json: not the output of label_and_balance" in capsys.readouterr().err
    completion.remove_marker(first)
    with pytest.raises(completion.IncompleteOutputError, match="--run_dir: .* has no _SUCCESS"):
        report.run([f"--run_dir={first}"])
    assert report.run([f"--run_dir={first}", "--allow_incomplete", "--predictions=none"])[
        "predictions"] is None
    assert not os.path.exists(f"{first}/report/confidence.png")
