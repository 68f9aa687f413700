"""Run statistics: `stats.json` in the output directory and the summary table users read.

The totals reconcile by construction and `check_reconciles` proves it on every run:
read = failed (parse + decode + inference + invalid output) + scored,
scored = below threshold + above threshold, above threshold = kept + dropped by the cap,
written = kept + duplicates.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam

from ns_data.balance import ClassPlan
from ns_data.lazy import tf
from ns_data.records import (STAGE_DECODE, STAGE_FILE, STAGE_INFERENCE, STAGE_OUTPUT,
                             STAGE_PARSE)
from ns_data.write import PSEUDO_LABEL_PREFIX

STATS_FILE = "stats.json"
FAILURE_STAGES = (STAGE_FILE, STAGE_PARSE, STAGE_DECODE, STAGE_INFERENCE, STAGE_OUTPUT)
# The summary warns when one image becomes more records than this: the paper's duplication is
# a handful of copies; --max_copies refuses far more.
WARN_COPIES = 10


def build_stats(
    *,
    config: Mapping[str, Any],
    num_classes: int,
    images_ok: int,
    failures: Mapping[str, int],
    scored_per_class: Mapping[int, int],
    plans: Mapping[int, ClassPlan],
    shard_counts: Mapping[int, int],
    class_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Assembles the stats document from the pipeline's counts.

    Args:
      config: the run's settings (K, threshold, seed, label type, paths...).
      num_classes: the teacher's class count; every class gets a row, empty ones too.
      images_ok: images read that parsed (before decoding).
      failures: dead letters per stage.
      scored_per_class: images scored, by teacher argmax.
      plans: the balancing decision of each class that had images above the threshold.
      shard_counts: records written per output shard.
      class_names: the classes' names (the teacher's), one per class; empty when unnamed.
    """
    if class_names and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    min_confidence = float(config["min_confidence"])
    classes = []
    for label in range(num_classes):
        plan = plans.get(label)
        quota = plan.quota if plan else None
        kept = quota.kept if quota else 0
        written = quota.written if quota else 0
        capped = plan.threshold_confidence if plan else None
        classes.append({
            "class": label,
            **({"name": class_names[label]} if class_names else {}),
            "read": int(scored_per_class.get(label, 0)),
            "above_threshold": quota.count if quota else 0,
            "kept": kept,
            "dropped_by_cap": (quota.count - kept) if quota else 0,
            "duplicated": written - kept,
            "written": written,
            "max_copies": quota.max_copies if quota else 0,
            "threshold": capped if capped is not None else min_confidence,
            "capped": capped is not None,
        })
    failed = {stage: int(failures.get(stage, 0)) for stage in FAILURE_STAGES}
    unknown = set(failures) - set(FAILURE_STAGES)
    if unknown:
        raise ValueError(f"unknown dead-letter stages {sorted(unknown)}")
    scored = sum(c["read"] for c in classes)
    above = sum(c["above_threshold"] for c in classes)
    counts = [int(shard_counts.get(s, 0)) for s in range(int(config["num_shards"]))]
    totals = {
        "read": images_ok + failed[STAGE_PARSE],
        "failed": failed,
        "failed_total": sum(failed.values()),
        "scored": scored,
        "below_threshold": scored - above,
        "above_threshold": above,
        "kept": sum(c["kept"] for c in classes),
        "dropped_by_cap": sum(c["dropped_by_cap"] for c in classes),
        "duplicated": sum(c["duplicated"] for c in classes),
        "written": sum(counts),
        "max_copies": max((c["max_copies"] for c in classes), default=0),
    }
    return {
        "config": dict(config),
        "num_classes": num_classes,
        **({"class_names": list(class_names)} if class_names else {}),
        "totals": totals,
        "empty_classes": [c["class"] for c in classes if c["above_threshold"] == 0],
        "classes": classes,
        # Records per shard, so a reader of every shard (the trainer) need not count them.
        "shards": {"count": len(counts), "min_records": min(counts), "max_records": max(counts),
                   "records": counts},
    }


def check_reconciles(stats: Mapping[str, Any]) -> None:
    """Raises AssertionError when the totals do not add up (a bug, never bad input)."""
    t = stats["totals"]
    checks = {
        "read = failed + scored": t["read"] == t["failed_total"] + t["scored"],
        "scored = below + above": t["scored"] == t["below_threshold"] + t["above_threshold"],
        "above = kept + dropped": t["above_threshold"] == t["kept"] + t["dropped_by_cap"],
        "written = kept + duplicated": t["written"] == t["kept"] + t["duplicated"],
        "written = sum of classes": t["written"] == sum(c["written"] for c in stats["classes"]),
    }
    broken = [name for name, ok in checks.items() if not ok]
    if broken:
        raise AssertionError(f"stats do not reconcile ({', '.join(broken)}): {t}")


def write_stats(output_dir: str, stats: Mapping[str, Any]) -> str:
    path = posixpath.join(output_dir, STATS_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(stats, f, indent=2)
    return path


def read_stats(output_dir: str) -> dict[str, Any]:
    with tf.io.gfile.GFile(posixpath.join(output_dir, STATS_FILE)) as f:
        return json.load(f)


def format_summary(stats: Mapping[str, Any], class_names: list[str] | None = None) -> str:
    """A plain-text table of per-class counts followed by the totals; classes are named by
    `class_names`, else by the run's own (the teacher's), else by number."""
    names = class_names or stats.get("class_names") or []
    header = f"{'class':<16}{'read':>9}{'>=thr':>9}{'kept':>9}{'dup':>9}{'written':>9}{'thr':>8}"
    lines = [header, "-" * len(header)]
    for c in stats["classes"]:
        label = c["class"]
        name = f"{label} {names[label]}" if label < len(names) else str(label)
        lines.append(f"{name[:15]:<16}{c['read']:>9}{c['above_threshold']:>9}{c['kept']:>9}"
                     f"{c['duplicated']:>9}{c['written']:>9}{c['threshold']:>8.3f}")
    t = stats["totals"]
    failed = ", ".join(f"{k} {v}" for k, v in t["failed"].items())
    lines += [
        "-" * len(header),
        f"read {t['read']}  failed {t['failed_total']} ({failed})  scored {t['scored']}",
        f"below threshold {t['below_threshold']}  above {t['above_threshold']}  "
        f"kept {t['kept']}  dropped by cap {t['dropped_by_cap']}  duplicated {t['duplicated']}",
        f"written {t['written']} records in {stats['shards']['count']} shards "
        f"({stats['shards']['min_records']}..{stats['shards']['max_records']} per shard)",
    ]
    if t.get("max_copies", 0) > 1:
        most = max(stats["classes"], key=lambda c: c["max_copies"])
        lines.append(f"most copies of one image: {t['max_copies']} (class {most['class']}, "
                     f"{most['kept']} images for {most['written']} records)")
        if t["max_copies"] > WARN_COPIES:
            lines.append(f"warning: class {most['class']} writes one image up to "
                         f"{t['max_copies']} times (more than {WARN_COPIES}): few of its images "
                         "pass --min_confidence for --images_per_class="
                         f"{stats['config'].get('images_per_class')}; a lower K or threshold, "
                         "or --no_duplicate, gives fewer copies")
    if stats["empty_classes"]:
        lines.append(f"classes with no image above the threshold: {stats['empty_classes']}")
    return "\n".join(lines)


def _assemble(_, config, num_classes, class_names, counts, plans, shards, output_dir):
    pseudo = {shard: n for (prefix, shard), n in shards.items() if prefix == PSEUDO_LABEL_PREFIX}
    widest = max(list(counts.scored) + list(plans), default=-1) + 1
    stats = build_stats(config=config, num_classes=max(num_classes, widest),
                        images_ok=counts.rows - counts.failed.get(STAGE_PARSE, 0),
                        failures=counts.failed, scored_per_class=counts.scored, plans=plans,
                        shard_counts=pseudo,
                        class_names=class_names if widest <= num_classes else ())
    check_reconciles(stats)
    return write_stats(output_dir, stats)


class WriteRunStats(beam.PTransform):
    """Shard counts → `stats.json`; yields its path once written.

    Applied to the ((prefix, shard), records) counts of `WriteLabeledShards`, with the table's
    `TableCounts` singleton and the (label, ClassPlan) plans. Every class of `num_classes` (or
    of the widest label seen, when larger) gets a row.
    """

    def __init__(self, output_dir: str, config: Mapping[str, Any], num_classes: int,
                 counts: beam.PCollection, plans: beam.PCollection,
                 class_names: Sequence[str] = ()):
        super().__init__()
        self._output_dir = output_dir
        self._config = dict(config)
        self._num_classes = num_classes
        self._class_names = tuple(class_names)
        self._counts = counts
        self._plans = plans

    def expand(self, shards):
        side = beam.pvalue
        return (shards.pipeline
                | "Once" >> beam.Create([None])
                | "Assemble" >> beam.Map(
                    _assemble,
                    config=self._config,
                    num_classes=self._num_classes,
                    class_names=self._class_names,
                    counts=side.AsSingleton(self._counts),
                    plans=side.AsDict(self._plans),
                    shards=side.AsDict(shards),
                    output_dir=self._output_dir))
