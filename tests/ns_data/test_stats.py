"""Tests for the run statistics in `ns_data/stats.py` on a small hand-built run.

The run: 5 classes, K = 3 images per class, confidence threshold 0.5, 4 output shards.

* class 0: 6 scored, 5 above the threshold → capped to the 3 most confident (0.99, 0.95, 0.9);
* class 1: 4 scored, 2 above → both kept, the more confident one duplicated (3 records);
* class 2: 2 scored, none above → empty;
* class 3: never predicted → empty;
* class 4: 3 scored, all above → each kept once.

Failures: 1 parse, 2 decode, 1 invalid output. So 18 images parsed, 19 read.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from ns_data import balance, stats

SEED = 0
K = 3
CONFIG = {"min_confidence": 0.5, "num_shards": 4, "images_per_class": K, "seed": SEED}
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "a-very-long-class-name"]
ABOVE = {  # label: confidences of the images above the threshold
    0: [0.99, 0.95, 0.9, 0.8, 0.7],
    1: [0.85, 0.6],
    4: [0.9, 0.8, 0.55],
}
SCORED = {0: 6, 1: 4, 2: 2, 4: 3}
FAILURES = {"parse": 1, "decode": 2, "invalid_output": 1}
SHARDS = {0: 3, 1: 4, 3: 2}


def class_plan(label: int, confidences: list[float]) -> balance.ClassPlan:
    keys = [balance.priority_key(c, b"img-%d-%d" % (label, i), SEED)
            for i, c in enumerate(confidences)]
    quota = balance.plan_quota(len(keys), K)
    cut = balance.start_cut(quota.extra)
    if not cut.done:
        cut = balance.select_cut(keys, quota.extra)
    return balance.ClassPlan(label, quota, cut)


def build(**overrides):
    kwargs = dict(config=CONFIG, num_classes=5, images_ok=18, failures=FAILURES,
                  scored_per_class=SCORED,
                  plans={label: class_plan(label, c) for label, c in ABOVE.items()},
                  shard_counts=SHARDS)
    kwargs.update(overrides)
    return stats.build_stats(**kwargs)


@pytest.fixture
def run_stats():
    return build()


def test_plans_are_what_the_docstring_says():
    assert class_plan(0, ABOVE[0]).quota == balance.Quota(5, 0, 3)
    assert class_plan(1, ABOVE[1]).quota == balance.Quota(2, 1, 1)
    assert class_plan(4, ABOVE[4]).quota == balance.Quota(3, 1, 0)


def test_totals(run_stats):
    assert run_stats["totals"] == {
        "read": 19,
        "failed": {"damaged_file": 0, "parse": 1, "decode": 2, "inference": 0,
                   "invalid_output": 1},
        "failed_total": 4,
        "scored": 15,
        "below_threshold": 5,
        "above_threshold": 10,
        "kept": 8,
        "dropped_by_cap": 2,
        "duplicated": 1,
        "written": 9,
        "max_copies": 2,
    }


def test_per_class_rows(run_stats):
    def row(label, read, above, kept, dropped, duplicated, written, most, threshold, capped):
        return {"class": label, "read": read, "above_threshold": above, "kept": kept,
                "dropped_by_cap": dropped, "duplicated": duplicated, "written": written,
                "max_copies": most, "threshold": threshold, "capped": capped}

    assert run_stats["classes"] == [
        row(0, 6, 5, 3, 2, 0, 3, 1, float(np.float32(0.9)), True),
        row(1, 4, 2, 2, 0, 1, 3, 2, 0.5, False),
        row(2, 2, 0, 0, 0, 0, 0, 0, 0.5, False),
        row(3, 0, 0, 0, 0, 0, 0, 0, 0.5, False),
        row(4, 3, 3, 3, 0, 0, 3, 1, 0.5, False),
    ]


def test_capped_threshold_is_the_least_confident_kept_image():
    # Capping to K of the 5 leaves 0.9 as the bar; with K = 1 it would be 0.99.
    assert class_plan(0, ABOVE[0]).threshold_confidence == float(np.float32(0.9))
    keys = [balance.priority_key(c, b"x%d" % i, SEED) for i, c in enumerate(ABOVE[0])]
    plan = balance.ClassPlan(0, balance.plan_quota(5, 1), balance.select_cut(keys, 1))
    one = build(plans={0: plan}, scored_per_class={0: 5}, images_ok=8, shard_counts={0: 1})
    stats.check_reconciles(one)
    assert one["classes"][0]["threshold"] == float(np.float32(0.99))
    assert one["classes"][0]["capped"] is True


def test_empty_classes_shards_and_config(run_stats):
    assert run_stats["empty_classes"] == [2, 3]
    assert run_stats["shards"] == {"count": 4, "min_records": 0, "max_records": 4,
                                   "records": [3, 4, 0, 2]}
    assert run_stats["num_classes"] == 5
    assert run_stats["config"] == CONFIG
    assert run_stats["config"] is not CONFIG


def test_check_reconciles_accepts_a_consistent_run(run_stats):
    stats.check_reconciles(run_stats)


@pytest.mark.parametrize("path, delta, broken", [
    (("totals", "read"), 1, ["read = failed + scored"]),
    (("totals", "failed_total"), -1, ["read = failed + scored"]),
    (("totals", "below_threshold"), 1, ["scored = below + above"]),
    (("totals", "dropped_by_cap"), 1, ["above = kept + dropped"]),
    (("totals", "kept"), -1, ["above = kept + dropped", "written = kept + duplicated"]),
    (("totals", "duplicated"), 1, ["written = kept + duplicated"]),
    (("totals", "written"), 1, ["written = kept + duplicated", "written = sum of classes"]),
    (("classes", 4, "written"), -1, ["written = sum of classes"]),
])
def test_check_reconciles_rejects_tampered_stats(run_stats, path, delta, broken):
    tampered = copy.deepcopy(run_stats)
    *parents, leaf = path
    node = tampered
    for p in parents:
        node = node[p]
    node[leaf] += delta
    with pytest.raises(AssertionError) as error:
        stats.check_reconciles(tampered)
    message = str(error.value)
    assert message.startswith(f"stats do not reconcile ({', '.join(broken)})")


def test_inconsistent_counts_do_not_reconcile():
    # One parsed image that neither failed nor was scored: a lost record.
    with pytest.raises(AssertionError, match="read = failed \\+ scored"):
        stats.check_reconciles(build(images_ok=19))
    # Shards holding a record no class accounts for.
    with pytest.raises(AssertionError, match="written = kept \\+ duplicated"):
        stats.check_reconciles(build(shard_counts={**SHARDS, 2: 1}))


def test_unknown_dead_letter_stage_raises():
    with pytest.raises(ValueError, match=r"unknown dead-letter stages \['decoding'\]"):
        build(failures={**FAILURES, "decoding": 1})


def test_stats_file_round_trip(run_stats, tmp_path):
    path = stats.write_stats(str(tmp_path), run_stats)
    assert path == str(tmp_path / stats.STATS_FILE)
    assert stats.read_stats(str(tmp_path)) == json.loads(json.dumps(run_stats))
    assert stats.read_stats(str(tmp_path))["totals"]["written"] == 9


def test_format_summary_with_class_names(run_stats):
    text = stats.format_summary(run_stats, CLASS_NAMES)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "read", ">=thr", "kept", "dup", "written", "thr"]
    rows = {line.split()[0]: line for line in lines[2:7]}
    assert sorted(rows) == ["0", "1", "2", "3", "4"]
    assert rows["0"].split() == ["0", "t-shirt", "6", "5", "3", "0", "3", "0.900"]
    assert rows["1"].split() == ["1", "trouser", "4", "2", "2", "1", "3", "0.500"]
    assert rows["3"].split() == ["3", "dress", "0", "0", "0", "0", "0", "0.500"]
    # Long names are cut to fit the column.
    assert rows["4"].startswith("4 a-very-long-c ")
    assert ("read 19  failed 4 (damaged_file 0, parse 1, decode 2, inference 0, "
            "invalid_output 1)  scored 15"
            in lines)
    assert "below threshold 5  above 10  kept 8  dropped by cap 2  duplicated 1" in lines
    assert "written 9 records in 4 shards (0..4 per shard)" in lines
    assert lines[-1] == "classes with no image above the threshold: [2, 3]"


def test_format_summary_without_names(run_stats):
    lines = stats.format_summary(run_stats).splitlines()
    assert [line.split()[0] for line in lines[2:7]] == ["0", "1", "2", "3", "4"]
    assert lines[2].split()[1] == "6"
    assert "t-shirt" not in "\n".join(lines)


def test_format_summary_without_empty_classes():
    full = build(num_classes=2, plans={0: class_plan(0, ABOVE[0]), 1: class_plan(1, ABOVE[1])},
                 scored_per_class={0: 6, 1: 4}, images_ok=13, shard_counts={0: 6})
    stats.check_reconciles(full)
    assert full["empty_classes"] == []
    assert "no image above the threshold" not in stats.format_summary(full)


def test_the_teachers_class_names_are_recorded_and_name_the_summary(run_stats):
    named = build(class_names=CLASS_NAMES)
    assert named["class_names"] == CLASS_NAMES
    assert [c["name"] for c in named["classes"]] == CLASS_NAMES
    # Apart from the names, the document is the unnamed run's.
    assert {k: v for k, v in named.items() if k != "class_names"} == {
        **run_stats, "classes": [{**c, "name": n} for c, n in zip(run_stats["classes"],
                                                                   CLASS_NAMES)]}
    assert "class_names" not in run_stats and "name" not in run_stats["classes"][0]
    assert stats.format_summary(named) == stats.format_summary(run_stats, CLASS_NAMES)
    # Names given to the summary win over the recorded ones.
    assert stats.format_summary(named, list("abcde")).splitlines()[2].split()[:2] == ["0", "a"]


def test_class_names_that_do_not_match_the_classes_are_refused():
    with pytest.raises(ValueError, match="4 class names for 5 classes"):
        build(class_names=CLASS_NAMES[:4])
