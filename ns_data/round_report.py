"""The tables of a Noisy Student run: the one printed after each round, and report/summary.md.

Both read the `results.json` structure of `beam_jobs.iterate`: per round the teacher's and each
student's top-1 on the holdout and test splits, the per-class counts of the labeling run, and
per student the pseudo-labeled records it trained on.
"""
from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from ns_data.progress import format_duration


def _gain(student: Mapping[str, Any], teacher: Mapping[str, Any]) -> float:
    """Test top-1 gain over the teacher, in points."""
    return 100 * (student["test"] - teacher["test"])


def format_round(entry: Mapping[str, Any]) -> str:
    """The table printed after a round: top-1 of teacher and students, images per class."""
    labeling = entry["labeling"]
    written = labeling["written"]
    kept = [w - d for w, d in zip(written, labeling["duplicated"])]
    lines = [f"\nRound {entry['round']}: pseudo-label accuracy "
             f"{labeling.get('pseudo_label_accuracy', float('nan')):.4f}",
             f"  kept per class    {kept}",
             f"  written per class {written} (with duplicates; total {sum(written)})",
             f"{'model':<22}{'holdout top-1':>14}{'test top-1':>12}{'vs teacher':>12}"
             f"{'pseudo-labels':>15}"]
    teacher = entry["teacher"]
    lines.append(f"{'teacher':<22}{teacher['holdout']:>14.4f}{teacher['test']:>12.4f}")
    for name, student in entry["students"].items():
        lines.append(f"{'student ' + name:<22}{student['holdout']:>14.4f}"
                     f"{student['test']:>12.4f}{_gain(student, teacher):>+11.2f}p"
                     f"{sum(student['pseudo_labels_written']):>15}")
    return "\n".join(lines)


def write_summary(report_dir: str, result: Mapping[str, Any],
                  class_names: Sequence[str]) -> str:
    """Writes report_dir/summary.md: settings, one section per round linking its PNGs.

    Returns:
      The path written.
    """
    lines = ["# Noisy Student on Fashion-MNIST", "",
             "Splits: " + ", ".join(f"{n:,} {split}" for split, n in result["sizes"].items())
             + f"; K = {result['images_per_class']:,} images per class.", "", "Settings:", ""]
    lines += [f"- {key}: {value}" for key, value in result["settings"].items()]
    if result.get("seconds"):
        lines += ["", "Time per stage (this run; resumed stages take seconds): " + ", ".join(
            f"{stage} {format_duration(s)}" for stage, s in result["seconds"].items())]
    for entry in result["rounds"]:
        r, teacher = entry["round"], entry["teacher"]
        lines += ["", f"## Round {r}", "",
                  "| model | holdout top-1 | test top-1 | test gain | pseudo-labeled records |",
                  "| --- | --- | --- | --- | --- |",
                  f"| teacher | {teacher['holdout']:.4f} | {teacher['test']:.4f} | | |"]
        for name, s in entry["students"].items():
            lines.append(f"| student {name} ({s['description']}) | {s['holdout']:.4f} | "
                         f"{s['test']:.4f} | {_gain(s, teacher):+.2f} | "
                         f"{sum(s['pseudo_labels_written']):,} |")
        labeling = entry["labeling"]
        lines += ["", "Balancing of the soft labeling run (the `full` student's data):", "",
                  "| class | above threshold | written | duplicated |",
                  "| --- | --- | --- | --- |"]
        for c, name in enumerate(class_names):
            lines.append(f"| {name} | {labeling['above_threshold'][c]} | "
                         f"{labeling['written'][c]} | {labeling['duplicated'][c]} |")
        if "pseudo_label_accuracy" in labeling:
            lines += ["", "Pseudo-label accuracy (against the withheld labels): "
                      f"{labeling['pseudo_label_accuracy']:.4f}"]
        lines += ["", f"![counts](round{r}/counts.png)", "",
                  f"![confidence](round{r}/confidence.png)", "",
                  f"![samples](round{r}/samples.png)"]
    path = posixpath.join(report_dir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
