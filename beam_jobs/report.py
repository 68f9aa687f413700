"""Draw what a label_and_balance or rebalance run did: counts, confidences and sample images.

    python -m beam_jobs.report --run_dir=out/k130k
    python -m beam_jobs.report --run_dir=out/k50k --report_dir=/tmp/k50k-report

Reads the run's stats.json, its predictions table (named in stats.json; `--predictions`
overrides) and the first copies of its pseudo-labels, and writes to REPORT_DIR (default
RUN_DIR/report):

  counts.png      per class: images above the threshold before balancing vs written after
  confidence.png  the teacher's top-1 confidence over every scored image, with the threshold
  samples.png     a few pseudo-labeled images per class with their confidence: look at it
                  before training on a corpus (a teacher can label animal silhouettes as digits
                  with confidence, and no count shows it)
  report.md       the three, with the run's settings and per-class table

Class names come from `--class_names`, else the run's stats.json (which has the teacher's
ns_teacher.json names), else class ids. A run without its _SUCCESS marker is refused unless
`--allow_incomplete`.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys

from beam_jobs import cli
from ns_data import completion, predictions, report, startup, stats
from ns_data.lazy import tf
from ns_data.teacher import read_metadata
from ns_data.teacher_flags import positive_int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam_jobs.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--run_dir", required=True,
                   help="The --output_dir of a label_and_balance or rebalance run.")
    p.add_argument("--report_dir", default="",
                   help="Where the report goes (default: RUN_DIR/report).")
    p.add_argument("--predictions", default="",
                   help="The run's predictions table, a directory or a glob (default: the one "
                   "its stats.json names; 'none' skips the confidence histogram).")
    p.add_argument("--class_names", default="",
                   help="Comma-separated class names (default: the teacher's ns_teacher.json, "
                   "else class ids).")
    p.add_argument("--samples_per_class", type=positive_int, default=8,
                   help="Images per class in samples.png (default: %(default)s).")
    p.add_argument("--allow_incomplete", action="store_true",
                   help=f"Draw a run that did not finish (no {completion.SUCCESS_FILE}).")
    return p


def table_of(run_config: dict, flag: str) -> str | None:
    """The predictions table a run read or wrote: `flag` when given, else from its settings
    (label_and_balance records `predictions_dir`, rebalance `predictions`)."""
    if flag:
        return None if flag == "none" else flag
    table = run_config.get("predictions_dir") or run_config.get("predictions")
    if not table:
        return None
    pattern = table if any(c in table for c in "*?[") else predictions.table_pattern(table)
    return table if tf.io.gfile.glob(pattern) else None


def class_names_of(run: dict, flag: str) -> list[str]:
    if flag:
        names = [name.strip() for name in flag.split(",")]
        if len(names) != run["num_classes"]:
            raise ValueError(f"--class_names has {len(names)} names; the run has "
                             f"{run['num_classes']} classes")
        return names
    names = run.get("class_names", ())  # the teacher's, recorded by the run
    teacher = run["config"].get("teacher", "")
    if not names and teacher and tf.io.gfile.isdir(teacher):  # a run from before they were
        names = read_metadata(teacher).class_names
    return list(names) if len(names) == run["num_classes"] else [
        str(c) for c in range(run["num_classes"])]


def write_markdown(path: str, run: dict, summary: dict, class_names: list[str],
                   table: str | None) -> None:
    lines = [f"# Pseudo-labels in {posixpath.dirname(path.rstrip('/'))}", "",
             "```", stats.format_summary(run, class_names), "```", "",
             "![counts](counts.png)", ""]
    if table:
        quantiles = ", ".join(f"{q}: {v:.3f}" for q, v in summary["confidence_quantiles"].items())
        lines += [f"Top-1 confidence quantiles over the table `{table}`: {quantiles}", "",
                  "![confidence](confidence.png)", ""]
    lines += ["![samples](samples.png)", "", "Settings:", "", "```",
              json.dumps(run["config"], indent=2, sort_keys=True), "```", ""]
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\n".join(lines))


def run(argv: list[str] | None = None) -> dict:
    """Draws the report; returns its summary (counts, quantiles, where the files are)."""
    args = parser().parse_args(argv)
    run_dir = args.run_dir.rstrip("/")
    if not tf.io.gfile.exists(posixpath.join(run_dir, stats.STATS_FILE)):
        raise ValueError(f"--run_dir={run_dir} has no {stats.STATS_FILE}: not the output of "
                         "label_and_balance or rebalance")
    if not args.allow_incomplete:
        completion.require_complete(run_dir, "--run_dir", "--allow_incomplete")
    run_stats = stats.read_stats(run_dir)
    names = class_names_of(run_stats, args.class_names)
    table = table_of(run_stats["config"], args.predictions)
    report_dir = args.report_dir or posixpath.join(run_dir, "report")
    summary = report.write_label_report(run_dir, table, report_dir, names,
                                        samples_per_class=args.samples_per_class)
    markdown = posixpath.join(report_dir, "report.md")
    write_markdown(markdown, run_stats, summary, names, table)
    print(stats.format_summary(run_stats, names))
    print(f"\nReport: {markdown} (counts.png, {'confidence.png, ' if table else ''}"
          "samples.png)")
    return {**summary, "report": markdown, "predictions": table}


if __name__ == "__main__":
    startup.quiet_startup()
    sys.exit(cli.main(run, "report"))
