"""The tables of a Noisy Student run: the one printed after each round, and report/summary.md.

Both read the `results.json` structure of `beam_jobs.iterate`: per round the teacher's and each
student's size and top-1 on the holdout (and, when the run has one, the test) split, the
per-class counts of the labeling run, and per student the pseudo-labeled records it trained on.
Gains over the teacher are measured on the test split, or on the holdout without one.
"""
from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from ns_data.progress import format_duration


def _split(entry: Mapping[str, Any]) -> str:
    """The split gains are measured on: test when the run has one, else the holdout."""
    return "test" if "test" in entry["teacher"] else "holdout"


def _gain(student: Mapping[str, Any], teacher: Mapping[str, Any], split: str) -> float:
    """Top-1 gain over the teacher, in points."""
    return 100 * (student[split] - teacher[split])


def _size(model: Mapping[str, Any]) -> str:
    """A model's parameter count, e.g. `1.23M` or `45.6k`."""
    n = model.get("parameters")
    if n is None:
        return ""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def format_round(entry: Mapping[str, Any]) -> str:
    """The table printed after a round: size and top-1 of teacher and students, images per
    class."""
    labeling = entry["labeling"]
    written = labeling["written"]
    kept = [w - d for w, d in zip(written, labeling["duplicated"])]
    split = _split(entry)
    splits = ["holdout"] + (["test"] if split == "test" else [])
    accuracy = labeling.get("pseudo_label_accuracy")
    lines = [f"\nRound {entry['round']}: pseudo-label accuracy "
             + (f"{accuracy:.4f}" if accuracy is not None else "unknown (no truth given)"),
             f"  kept per class    {kept}",
             f"  written per class {written} (with duplicates; total {sum(written)})",
             f"{'model':<22}{'params':>9}" + "".join(f"{s + ' top-1':>14}" for s in splits)
             + f"{'vs teacher':>12}{'pseudo-labels':>15}"]
    teacher = entry["teacher"]
    lines.append(f"{'teacher':<22}{_size(teacher):>9}"
                 + "".join(f"{teacher[s]:>14.4f}" for s in splits))
    for name, student in entry["students"].items():
        lines.append(f"{'student ' + name:<22}{_size(student):>9}"
                     + "".join(f"{student[s]:>14.4f}" for s in splits)
                     + f"{_gain(student, teacher, split):>+11.2f}p"
                     f"{sum(student['pseudo_labels_written']):>15}")
    return "\n".join(lines)


def _model_cell(model: Mapping[str, Any]) -> str:
    if "architecture" not in model:
        return ""
    return f"{model['architecture']}, {_size(model)}, {model['steps']:,} steps"


def write_summary(report_dir: str, result: Mapping[str, Any],
                  class_names: Sequence[str]) -> str:
    """Writes report_dir/summary.md: settings, one section per round linking its PNGs.

    Returns:
      The path written.
    """
    title = "# Noisy Student" + (f" on {result['name']}" if result.get("name") else "")
    lines = [title, "",
             "Splits: " + ", ".join(f"{n:,} {split}" for split, n in result["sizes"].items())
             + f"; K = {result['images_per_class']:,} images per class.", "", "Settings:", ""]
    lines += [f"- {key}: {value}" for key, value in result["config"].items()]
    if result.get("seconds"):
        lines += ["", "Time per stage (this run; resumed stages take seconds): " + ", ".join(
            f"{stage} {format_duration(s)}" for stage, s in result["seconds"].items())]
    for entry in result["rounds"]:
        r, teacher, split = entry["round"], entry["teacher"], _split(entry)
        splits = ["holdout"] + (["test"] if split == "test" else [])
        lines += ["", f"## Round {r}", "",
                  "| model | size | " + " | ".join(f"{s} top-1" for s in splits)
                  + f" | {split} gain | pseudo-labeled records |",
                  "| --- | --- | " + " | ".join("---" for _ in splits) + " | --- | --- |",
                  f"| teacher | {_model_cell(teacher)} | "
                  + " | ".join(f"{teacher[s]:.4f}" for s in splits) + " | | |"]
        for name, s in entry["students"].items():
            lines.append(f"| student {name} ({s['description']}) | {_model_cell(s)} | "
                         + " | ".join(f"{s[x]:.4f}" for x in splits)
                         + f" | {_gain(s, teacher, split):+.2f} | "
                         f"{sum(s['pseudo_labels_written']):,} |")
        labeling = entry["labeling"]
        lines += ["", "Balancing of the labeling run (the `full` student's data):", "",
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
