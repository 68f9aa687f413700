"""beam_jobs.rebalance: re-selecting from the predictions table equals a fresh run, bytewise."""
from __future__ import annotations

import collections
import os

import pyarrow.parquet as pq
import pytest

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from beam_jobs import label_and_balance as job
from beam_jobs import rebalance
from ns_data import completion, predictions, schema, stats
from tests import fakes
from tests.beam_jobs.test_label_and_balance import (K, SEED, corpus, expected_copies,
                                                    read_records, run_fake)


def corpus_records():
    """The corpus plus records that fail at each stage, so dead letters are compared too."""
    images = corpus()
    records = [schema.image_example(im.encoded, im.image_id) for im in images]
    records += [schema.image_example(b"\x89PNG\r\n\x1a\n-not-really", b"corrupt-png"),
                b"this is not a tf.train.Example",
                schema.image_example(fakes.fake_image(900, fakes.CLASS_NAN, 9).encoded, b"nan")]
    return images, records


def output_files(directory: str) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if name.endswith(".tfrecord")}


def test_rebalance_from_the_table_matches_a_fresh_run(tmp_path):
    images, records = corpus_records()
    first, first_stats = run_fake(tmp_path, images, "--predictions_topk=4", name="first",
                                  input_records=records)
    table = pq.read_table(os.path.join(first, "predictions"))
    assert table.num_rows == len(records)  # every record, failed ones included
    assert sorted(table.column(predictions.INDEX).to_pylist()) == list(range(len(records)))
    assert table.column(predictions.ERROR_STAGE).drop_null().to_pylist().count("parse") == 1

    flags = ["--images_per_class=5", "--min_confidence=0.5", "--num_shards=3", f"--seed={SEED}",
             "--label_type=soft_topk", "--topk=2"]
    rebalanced = str(tmp_path / "rebalanced")
    rebalance.run([f"--predictions={first}/predictions", f"--output_dir={rebalanced}",
                   "--runner=DirectRunner", "--max_failure_fraction=1", *flags])
    fresh, fresh_stats = run_fake(tmp_path, images, *flags, "--predictions_topk=4",
                                  name="fresh", input_records=records)

    parsed = [schema.parse_pseudo_label(r) for r in read_records(rebalanced)]
    want = {i: c for i, c in expected_copies(images, 5, min_confidence=0.5).items() if c}
    assert dict(collections.Counter(r.image_id for r in parsed)) == want
    files = output_files(rebalanced)
    assert files == output_files(fresh)  # shards and dead letters, byte for byte
    assert len(files) == 4 and all(files.values())
    run_stats = stats.read_stats(rebalanced)
    assert run_stats["totals"] == fresh_stats["totals"]
    assert run_stats["classes"] == fresh_stats["classes"]
    assert run_stats["totals"]["read"] == len(records)
    assert run_stats["totals"]["failed"] == {"parse": 1, "decode": 1, "inference": 0,
                                             "invalid_output": 1}
    assert run_stats["num_classes"] == 4
    assert run_stats["config"]["images_per_class"] == 5
    stats.check_reconciles(run_stats)
    assert first_stats["totals"]["written"] == 3 * 10


def test_rebalance_refuses_what_the_table_cannot_give(tmp_path):
    first, _ = run_fake(tmp_path, corpus()[:20], "--label_type=soft_topk", "--topk=2",
                        "--predictions_topk=2")
    table = f"--predictions={first}/predictions"
    with pytest.raises(ValueError, match="keeps the top 2 of 4 classes"):
        rebalance.run([table, f"--output_dir={tmp_path}/a", "--label_type=soft"])
    with pytest.raises(ValueError, match="--topk=3 exceeds the 2 classes"):
        rebalance.run([table, f"--output_dir={tmp_path}/b", "--label_type=soft_topk",
                       "--topk=3"])
    with pytest.raises(ValueError, match="matches no predictions table files"):
        rebalance.run([f"--predictions={tmp_path}/nothing", f"--output_dir={tmp_path}/c"])


def test_rebalance_refuses_a_changed_input(tmp_path):
    images = corpus()[:20]
    first, _ = run_fake(tmp_path, images)
    fakes.write_images(tmp_path / "input.tfrecord", images[::-1])  # same images, other order
    with pytest.raises(Exception, match="the input changed since the table was written"):
        rebalance.run([f"--predictions={first}/predictions", f"--output_dir={tmp_path}/re",
                       "--runner=DirectRunner", "--images_per_class=3"])


def test_rebalance_needs_its_flags():
    with pytest.raises(ValueError, match="missing required flags: --predictions, --output_dir"):
        rebalance.run(["--images_per_class=3"])


def test_an_interrupted_overwrite_leaves_nothing_that_looks_complete(tmp_path):
    first, _ = run_fake(tmp_path, corpus()[:20], "--label_type=hard", "--predictions_topk=4")
    table_dir = os.path.join(first, "predictions")
    assert completion.is_complete(first) and completion.is_complete(table_dir)
    # A rerun with --overwrite clears the old run at launch, marker first ...
    argv = [f"--input={tmp_path}/input.tfrecord", "--teacher=unused", f"--output_dir={first}",
            f"--images_per_class={K}", "--num_shards=3", "--overwrite", "--label_type=hard",
            "--predictions_topk=4"]
    opts = PipelineOptions(argv).view_as(job.LabelAndBalanceOptions)
    job.clear_outputs(opts)
    assert not completion.is_complete(first) and not completion.is_complete(table_dir)
    assert not os.path.exists(os.path.join(first, "stats.json"))
    # ... then writes its table, shards and stats but dies before `finish`.
    with BeamTestPipeline(runner="DirectRunner") as p:
        job.build(p, opts, fakes.fake_spec(), fakes.FakeTeacherHandler())
    assert os.path.exists(os.path.join(first, "stats.json"))
    assert not completion.is_complete(first) and not completion.is_complete(table_dir)
    rerun = [f"--predictions={table_dir}", "--runner=DirectRunner", "--max_failure_fraction=1"]
    with pytest.raises(completion.IncompleteOutputError,
                       match=f"--predictions: {table_dir} has no _SUCCESS marker"):
        rebalance.run(rerun + [f"--output_dir={tmp_path}/r"])
    assert not os.path.exists(tmp_path / "r")
    rebalance.run(rerun + [f"--output_dir={tmp_path}/r", "--allow_incomplete"])
    assert completion.is_complete(str(tmp_path / "r"))
