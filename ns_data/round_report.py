"""The tables of a Noisy Student run: the one printed after each round, and report/summary.md.

Both read the `results.json` structure of `beam_jobs.iterate`: per round the teacher's, the
baseline's (when trained) and each student's size and top-1 on the holdout (and, when the run has
one, the test) split, the per-class counts of the labeling run, and per student the
pseudo-labeled records it trained on. Gains over the teacher and the baseline are measured on the
test split, or on the holdout without one. `seeds_table` and `format_seeds` summarise runs of the
same loop with different seeds: mean ± sample standard deviation of each model and gain.
"""
from __future__ import annotations

import posixpath
import statistics
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
    teacher, baseline = entry["teacher"], entry.get("baseline")
    accuracy = labeling.get("pseudo_label_accuracy")
    lines = [f"\nRound {entry['round']}: pseudo-label accuracy "
             + (f"{accuracy:.4f}" if accuracy is not None else "unknown (no truth given)"),
             f"  kept per class    {kept}",
             f"  written per class {written} (with duplicates; total {sum(written)})",
             f"{'model':<22}{'params':>9}" + "".join(f"{s + ' top-1':>14}" for s in splits)
             + f"{'vs teacher':>12}" + (f"{'vs baseline':>13}" if baseline else "")
             + f"{'pseudo-labels':>15}"]
    for name, model in (("teacher", teacher), ("baseline", baseline)):
        if model:
            lines.append(f"{name:<22}{_size(model):>9}"
                         + "".join(f"{model[s]:>14.4f}" for s in splits))
    for name, student in entry["students"].items():
        lines.append(f"{'student ' + name:<22}{_size(student):>9}"
                     + "".join(f"{student[s]:>14.4f}" for s in splits)
                     + f"{_gain(student, teacher, split):>+11.2f}p"
                     + (f"{_gain(student, baseline, split):>+12.2f}p" if baseline else "")
                     + f"{sum(student['pseudo_labels_written']):>15}")
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
        baseline = entry.get("baseline")
        splits = ["holdout"] + (["test"] if split == "test" else [])
        gains = [f"{split} gain"] + ([f"{split} gain over baseline"] if baseline else [])
        blank = " |" * len(gains)
        lines += ["", f"## Round {r}", "",
                  "| model | size | " + " | ".join(f"{s} top-1" for s in splits)
                  + f" | {' | '.join(gains)} | pseudo-labeled records |",
                  "|" + " --- |" * (3 + len(splits) + len(gains)),
                  f"| teacher | {_model_cell(teacher)} | "
                  + " | ".join(f"{teacher[s]:.4f}" for s in splits) + f" |{blank} |"]
        if baseline:
            lines.append(f"| baseline ({baseline['description']}) | {_model_cell(baseline)} | "
                         + " | ".join(f"{baseline[s]:.4f}" for s in splits) + f" |{blank} |")
        for name, s in entry["students"].items():
            lines.append(f"| student {name} ({s['description']}) | {_model_cell(s)} | "
                         + " | ".join(f"{s[x]:.4f}" for x in splits)
                         + f" | {_gain(s, teacher, split):+.2f} | "
                         + (f"{_gain(s, baseline, split):+.2f} | " if baseline else "")
                         + f"{sum(s['pseudo_labels_written']):,} |")
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


def seeds_table(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Runs of one loop with different seeds (`beam_jobs.iterate` results.json contents), per
    round: each seed's top-1 of teacher, baseline and `full` student, and the gains in points,
    on the split gains are measured on (test, else holdout).

    Raises:
      ValueError: for runs whose rounds or splits differ, or a round without a `full` student.
    """
    if not results:
        raise ValueError("no runs to summarise")
    seeds = [r["config"]["seed"] for r in results]
    rounds = {len(r["rounds"]) for r in results}
    if len(rounds) > 1:
        raise ValueError(f"the runs have different numbers of rounds {sorted(rounds)} (seeds "
                         f"{seeds}); rerun them with the same --rounds")
    table = {"seeds": seeds, "rounds": []}
    for entries in zip(*(r["rounds"] for r in results)):
        split = {_split(entry) for entry in entries}
        if len(split) > 1:
            raise ValueError(f"round {entries[0]['round']}: some runs have a test split, some do "
                             "not")
        split = split.pop()
        if any("full" not in entry["students"] for entry in entries):
            raise ValueError(f"round {entries[0]['round']}: a run has no 'full' student")
        models = {"teacher": [e["teacher"] for e in entries]}
        if all("baseline" in e for e in entries):
            models["baseline"] = [e["baseline"] for e in entries]
        models["student full"] = [e["students"]["full"] for e in entries]
        top1 = {name: [m[split] for m in ms] for name, ms in models.items()}
        gains = {"student - teacher": [
            _gain(s, t, split) for s, t in zip(models["student full"], models["teacher"])]}
        if "baseline" in models:
            gains["student - baseline"] = [
                _gain(s, b, split) for s, b in zip(models["student full"], models["baseline"])]
        table["rounds"].append({
            "round": entries[0]["round"], "split": split, "top1": top1, "gains": gains,
            "architecture": {name: ms[0].get("architecture", "") for name, ms in models.items()}})
    return table


def _mean_std(values: Sequence[float], scale: float = 1.0, sign: str = "") -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:{sign}.2f} (one seed)"
    return f"{mean:{sign}.2f} ± {statistics.stdev(values) * scale:.2f}"


def format_seeds(table: Mapping[str, Any]) -> str:
    """`seeds_table`'s content as Markdown: per round, mean ± std over the seeds and each seed's
    value; top-1 in percent, gains in points."""
    seeds = table["seeds"]
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean ± sample standard deviation over "
             f"{len(seeds)} run{'s' if len(seeds) > 1 else ''}; top-1 in %, gains in points."]
    for entry in table["rounds"]:
        split = entry["split"]
        lines += ["", f"Round {entry['round']} ({split} split)", "",
                  f"| | model | {split} top-1 / gain | " + " | ".join(
                      f"seed {s}" for s in seeds) + " |",
                  "|" + " --- |" * (3 + len(seeds))]
        for name, values in entry["top1"].items():
            lines.append(f"| {name} | {entry['architecture'][name]} | "
                         f"{_mean_std(values, 100)} | "
                         + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
        for name, values in entry["gains"].items():
            lines.append(f"| {name} | | {_mean_std(values, sign='+')} | "
                         + " | ".join(f"{v:+.2f}" for v in values) + " |")
    return "\n".join(lines)
