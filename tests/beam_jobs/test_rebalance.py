"""beam_jobs.rebalance: re-selection from persisted scores equals a fresh run."""
from __future__ import annotations

import collections
import os

import pytest

from beam_jobs import rebalance
from ns_data import schema, stats
from tests.beam_jobs.test_label_and_balance import (SEED, corpus, expected_copies, read_records,
                                                    run_fake)


def test_rebalance_from_scores_matches_a_fresh_run(tmp_path):
    images = corpus()
    scores_dir = str(tmp_path / "scores")
    run_fake(tmp_path, images, f"--scores_dir={scores_dir}", name="first")
    assert len(read_records(scores_dir, "scores")) == len(images)  # every scored image

    flags = ["--images_per_class=5", "--min_confidence=0.5", "--num_shards=3", f"--seed={SEED}",
             "--label_type=soft_topk", "--topk=2"]
    rebalanced = str(tmp_path / "rebalanced")
    rebalance.run([f"--scores={scores_dir}/scores-*.tfrecord", f"--output_dir={rebalanced}",
                   "--runner=DirectRunner", *flags])
    fresh, _ = run_fake(tmp_path, images, *flags, name="fresh")

    records = [schema.parse_pseudo_label(r) for r in read_records(rebalanced)]
    want = {i: c for i, c in expected_copies(images, 5, min_confidence=0.5).items() if c}
    assert dict(collections.Counter(r.image_id for r in records)) == want
    for name in sorted(os.listdir(fresh)):
        if name.startswith("pseudo_labels"):
            with open(os.path.join(fresh, name), "rb") as a, open(
                    os.path.join(rebalanced, name), "rb") as b:
                assert a.read() == b.read(), name
    run_stats = stats.read_stats(rebalanced)
    assert run_stats["totals"]["read"] == len(images)
    assert run_stats["num_classes"] == 4
    assert run_stats["config"]["images_per_class"] == 5
    stats.check_reconciles(run_stats)


def test_rebalance_rejects_records_without_probabilities(tmp_path):
    hard_dir, _ = run_fake(tmp_path, corpus()[:15], "--label_type=hard")
    output_dir = str(tmp_path / "re")
    rebalance.run([f"--scores={hard_dir}/pseudo_labels-*.tfrecord", f"--output_dir={output_dir}",
                   "--runner=DirectRunner", "--images_per_class=3"])
    run_stats = stats.read_stats(output_dir)
    assert run_stats["totals"]["written"] == 0
    assert run_stats["totals"]["failed"]["parse"] == run_stats["totals"]["read"] > 0
    letters = [schema.parse_example(r) for r in read_records(output_dir, "dead_letters")]
    assert all(b"--scores_dir" in d[schema.ERROR_MESSAGE][0] for d in letters)


def test_rebalance_needs_its_flags():
    with pytest.raises(ValueError, match="missing required flags: --scores, --output_dir"):
        rebalance.run(["--images_per_class=3"])
