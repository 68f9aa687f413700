"""beam_jobs.rebalance: re-selecting from the predictions table equals a fresh run, bytewise."""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from beam_jobs import label_and_balance as job
from beam_jobs import cli, rebalance
from ns_data import completion, predictions, schema, stats
from tests import fakes
from tests.beam_jobs.fake_runs import (K, SEED, corpus, expected_copies, output_files,
                                       read_records, run_fake)
from tests.data_files import write_tfrecord


def corpus_records():
    """The corpus plus records that fail at each stage, so dead letters are compared too."""
    images = corpus()
    records = [schema.image_example(im.encoded, im.image_id) for im in images]
    records += [schema.image_example(b"\x89PNG\r\n\x1a\n-not-really", b"corrupt-png"),
                b"this is not a tf.train.Example",
                schema.image_example(fakes.fake_image(900, fakes.CLASS_NAN, 9).encoded, b"nan")]
    return images, records


def truncate_last_record(path) -> int:
    """Cuts the file in the middle of its last record; returns that record's byte offset."""
    data = open(path, "rb").read()
    offset = 0
    while True:
        size = 16 + int.from_bytes(data[offset:offset + 8], "little")
        if offset + size == len(data):
            break
        offset += size
    open(path, "wb").write(data[:offset + 20])
    return offset


def test_rebalance_from_the_table_matches_a_fresh_run(tmp_path):
    images, records = corpus_records()
    # The input file is damaged in its last record: the records before it are used, the rest of
    # the file is one dead letter.
    write_tfrecord(tmp_path / "input.tfrecord", records + [records[0]])
    offset = truncate_last_record(tmp_path / "input.tfrecord")
    first, first_stats = run_fake(tmp_path, images, "--predictions_topk=4", name="first")
    table = pq.read_table(os.path.join(first, "predictions"))
    assert table.num_rows == len(records) + 1  # every record, failed ones included
    assert sorted(table.column(predictions.INDEX).to_pylist()) == list(range(len(records) + 1))
    assert table.column(predictions.ERROR_STAGE).drop_null().to_pylist().count("parse") == 1
    damaged, = [m for m in table.column(predictions.ERROR_MESSAGE).to_pylist()
                if m and "truncated" in m]
    assert damaged == (f"{tmp_path}/input.tfrecord: record {len(records)} at byte {offset} is "
                       f"truncated (8 of {len(records[0])} bytes). Its first {len(records)} "
                       "records are read; the rest of the file is lost.")

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
    assert run_stats["totals"]["read"] == len(records) + 1
    assert run_stats["totals"]["failed"] == {"damaged_file": 1, "parse": 1, "decode": 1,
                                             "inference": 0, "invalid_output": 1}
    letters = [schema.parse_example(r) for r in read_records(rebalanced, "dead_letters")]
    assert [d[schema.ERROR_MESSAGE][0].decode() for d in letters
            if d[schema.ERROR_STAGE] == [b"damaged_file"]] == [damaged]
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


@pytest.mark.parametrize("change, match", [
    ("delete a row", "has no row for record 0 of .*input.tfrecord: the table was edited"),
    ("repeat a row", "has two rows for record 0 of .*input.tfrecord"),
    ("delete the input", "input.tfrecord, an input file of the predictions table .* cannot be "
                         "read .*: the input changed since the table was written"),
])
def test_rebalance_refuses_a_table_that_does_not_describe_its_input(tmp_path, change, match):
    first, _ = run_fake(tmp_path, corpus()[:20])
    path, = [os.path.join(first, "predictions", n)
             for n in os.listdir(os.path.join(first, "predictions")) if n.endswith(".parquet")]
    rows = pq.read_table(path)
    if change == "delete the input":
        os.remove(tmp_path / "input.tfrecord")
    else:
        edited = rows.slice(1) if change == "delete a row" else pa.concat_tables(
            [rows, rows.slice(0, 1)])
        pq.write_table(edited, path)
    with pytest.raises(ValueError, match=match):
        rebalance.run([f"--predictions={first}/predictions", f"--output_dir={tmp_path}/re",
                       "--runner=DirectRunner", "--images_per_class=3"])
    assert not completion.is_complete(str(tmp_path / "re"))


def test_rebalance_does_not_write_into_its_table_directory(tmp_path):
    first, _ = run_fake(tmp_path, corpus()[:12])
    table_dir = os.path.join(first, "predictions")
    with pytest.raises(ValueError, match="--output_dir=.*/predictions/ is the --predictions "
                                         "table's own directory"):
        rebalance.run([f"--predictions={table_dir}", f"--output_dir={table_dir}/",
                       "--overwrite", "--images_per_class=3"])
    assert completion.is_complete(table_dir)
    assert not [n for n in os.listdir(table_dir) if n.endswith(".tfrecord")]


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
    # ... then writes its table, shards and stats but dies before `finish`: the table, marked
    # once all its files were written, is kept; the output is not complete.
    with BeamTestPipeline(runner="DirectRunner") as p:
        job.build(p, opts, fakes.fake_spec(), fakes.FakeTeacherHandler())
    assert os.path.exists(os.path.join(first, "stats.json"))
    assert not completion.is_complete(first) and completion.is_complete(table_dir)
    # A run that died before its table was finished leaves it unmarked.
    completion.remove_marker(table_dir)
    rerun = [f"--predictions={table_dir}", "--runner=DirectRunner", "--max_failure_fraction=1",
             f"--images_per_class={K}"]
    with pytest.raises(completion.IncompleteOutputError,
                       match=f"--predictions: {table_dir} has no _SUCCESS marker"):
        rebalance.run(rerun + [f"--output_dir={tmp_path}/r"])
    assert not os.path.exists(tmp_path / "r")
    rebalance.run(rerun + [f"--output_dir={tmp_path}/r", "--allow_incomplete"])
    assert completion.is_complete(str(tmp_path / "r"))


def edit_table(table_dir: str, **columns) -> str:
    """Rewrites the (one) table file of `table_dir` with some columns replaced, metadata kept."""
    path, = [os.path.join(table_dir, n) for n in os.listdir(table_dir) if n.endswith(".parquet")]
    rows = pq.read_table(path)
    for name, values in columns.items():
        rows = rows.set_column(rows.schema.get_field_index(name), rows.schema.field(name),
                               pa.array(values, rows.schema.field(name).type))
    pq.write_table(rows, path)
    return path


def test_rows_no_teacher_gives_become_dead_letters_not_selections(tmp_path):
    images = corpus()[:30]
    first, _ = run_fake(tmp_path, images, "--label_type=hard", "--predictions_topk=4")
    rows = pq.read_table(os.path.join(first, "predictions"))
    ids = rows.column(predictions.ID).to_pylist()
    confidence = rows.column(predictions.CONFIDENCE).to_numpy().copy()
    label = rows.column(predictions.LABEL).to_numpy().copy()
    confidence[0], confidence[1], confidence[2], confidence[4] = 7.0, np.nan, np.inf, -0.5
    label[3] = 9
    edit_table(os.path.join(first, "predictions"), confidence=confidence, label=label)
    out = str(tmp_path / "re")
    rebalance.run([f"--predictions={first}/predictions", f"--output_dir={out}",
                   "--runner=DirectRunner", "--images_per_class=4", "--label_type=hard",
                   "--max_failure_fraction=1"])
    run_stats = stats.read_stats(out)
    assert run_stats["totals"]["failed"]["invalid_output"] == 5
    assert run_stats["totals"]["scored"] == len(images) - 5
    stats.check_reconciles(run_stats)
    letters = {d[schema.IMAGE_ID][0]: d[schema.ERROR_MESSAGE][0].decode() for d in
               map(schema.parse_example, read_records(out, "dead_letters"))}
    assert set(letters) == set(ids[:5])
    assert "label 0, confidence 7.0 is not a prediction of a 4-class teacher" in letters[ids[0]]
    assert "confidence nan" in letters[ids[1]] and "confidence inf" in letters[ids[2]]
    assert f"label 9, confidence {confidence[3]}" in letters[ids[3]]
    written = {schema.parse_pseudo_label(r).image_id for r in read_records(out)}
    assert written and not written & set(ids[:5])


def test_a_table_whose_top_classes_disagree_with_its_labels_is_refused(tmp_path):
    first, _ = run_fake(tmp_path, corpus()[:20], "--label_type=hard", "--predictions_topk=4")
    rows = pq.read_table(os.path.join(first, "predictions"))
    label = rows.column(predictions.LABEL).to_numpy().copy()
    label[5] = (label[5] + 1) % fakes.NUM_CLASSES
    edit_table(os.path.join(first, "predictions"), label=label)
    with pytest.raises(ValueError, match="row 5: its top classes and probabilities disagree"):
        rebalance.run([f"--predictions={first}/predictions", f"--output_dir={tmp_path}/re",
                       "--runner=DirectRunner", "--images_per_class=4",
                       "--max_failure_fraction=1"])
    assert not completion.is_complete(str(tmp_path / "re"))


def test_a_glob_over_two_tables_is_refused_before_any_work(tmp_path):
    images = corpus()[:12]
    run_fake(tmp_path, images, "--predictions_topk=4", name="a")
    run_fake(tmp_path, images, "--predictions_topk=4", name="b")
    (tmp_path / "other").mkdir()
    other, _ = run_fake(tmp_path / "other", images, "--predictions_topk=2", "--label_type=hard")
    shutil.move(other, tmp_path / "c")
    argv = [f"--output_dir={tmp_path}/re", "--runner=DirectRunner", "--label_type=hard"]
    with pytest.raises(ValueError, match="holds the predictions of one input twice"):
        rebalance.run([f"--predictions={tmp_path}/[ab]/predictions/*.parquet", *argv])
    mixed = r"mixes tables: .* \(input .* vs .*other/input.tfrecord.*, topk 4 vs 2\)"
    with pytest.raises(ValueError, match=mixed):
        rebalance.run([f"--predictions={tmp_path}/[ac]/predictions/*.parquet", *argv])
    # Pseudo-label shards given as the table are named as what they are not.
    with pytest.raises(ValueError, match="pseudo_labels-00000-of-00003.tfrecord is not a "
                                         "predictions table file"):
        rebalance.run([f"--predictions={tmp_path}/a/pseudo_labels-*", *argv])
    assert not os.path.exists(tmp_path / "re")


def test_the_config_names_and_defaults_every_flag_as_the_command_line_does():
    parser = rebalance._help_parser()
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    assert rebalance.RebalanceConfig().flag_values() == defaults
    options = PipelineOptions(["--predictions=p", "--output_dir=o", "--label_type=hard"])
    assert rebalance.RebalanceConfig.from_options(options) == rebalance.RebalanceConfig(
        predictions="p", balance=cli.BalanceSettings(output_dir="o", label_type="hard"))
    with pytest.raises(ValueError, match="argument --allow_incomplete: takes True or False"):
        rebalance.RebalanceConfig(predictions="p", allow_incomplete=1)


def test_runaway_copies_are_refused_by_default_and_allowed_with_max_copies_0(tmp_path, capsys):
    # Three images of class 0 (K=10 in the teacher's run: 4 copies at most).
    first, _ = run_fake(tmp_path, corpus()[:3], "--label_type=hard")
    argv = [f"--predictions={first}/predictions", "--runner=DirectRunner", "--label_type=hard",
            "--images_per_class=400", "--num_shards=1"]
    with pytest.raises(completion.TooManyCopiesError,
                       match=r"^class 0 would be 400 records from 3 images, up to 134 copies "
                             r"of one image, more than --max_copies=100: no shard was written"):
        rebalance.run([*argv, f"--output_dir={tmp_path}/refused"])
    assert not os.path.exists(tmp_path / "refused")  # the writing pass never started
    out = str(tmp_path / "allowed")
    rebalance.run([*argv, f"--output_dir={out}", "--max_copies=0"])
    run_stats = stats.read_stats(out)
    assert run_stats["totals"]["written"] == len(read_records(out)) == 400
    assert run_stats["totals"]["max_copies"] == 134 and run_stats["totals"]["kept"] == 3
    assert completion.is_complete(out)
    assert ("warning: class 0 writes one image up to 134 times (more than 10): few of its images "
            "pass --min_confidence for --images_per_class=400") in capsys.readouterr().out


def test_records_appended_or_an_image_replaced_since_the_table_are_refused(tmp_path):
    images = corpus()[:12]  # class 0, every one written once below
    first, _ = run_fake(tmp_path, images, "--label_type=hard")
    source = str(tmp_path / "input.tfrecord")
    size = os.path.getsize(source)
    argv = [f"--predictions={first}/predictions", "--runner=DirectRunner", "--label_type=hard",
            "--images_per_class=12", "--min_confidence=0", "--no_duplicate"]
    fakes.write_images(source, images + corpus()[12:15])
    with pytest.raises(ValueError, match=(
            f"^the input changed since the table was written: {source} had 12 records "
            rf"\({size} bytes\), now 15 \({os.path.getsize(source)} bytes\); rerun "
            r"beam_jobs.label_and_balance on it \(predictions table file .*\.parquet\)")):
        rebalance.run([*argv, f"--output_dir={tmp_path}/appended"])
    assert not completion.is_complete(str(tmp_path / "appended"))
    # Record 3 keeps its id but holds another image (one the teacher gives another class).
    other = fakes.fake_image(3, (images[3].label + 1) % fakes.NUM_CLASSES, images[3].code)
    assert other.image_id == images[3].image_id and other.encoded != images[3].encoded
    fakes.write_images(source, [*images[:3], other, *images[4:]])
    with pytest.raises(ValueError, match=(
            f"^{source} record 3 \\(id img-000003\\): image bytes changed since scoring, so the "
            r"predictions table .* has another image's label for it \(1 such image\(s\) "
            "selected in this table file\\): the input changed since the table was written")):
        rebalance.run([*argv, f"--output_dir={tmp_path}/replaced"])
    assert not completion.is_complete(str(tmp_path / "replaced"))
    fakes.write_images(source, images)  # as it was: the same table serves again
    rebalance.run([*argv, f"--output_dir={tmp_path}/restored"])
    assert stats.read_stats(str(tmp_path / "restored"))["totals"]["written"] == 12


def test_a_format_1_table_is_read_unchecked_with_a_warning(tmp_path, caplog):
    images = corpus()[:12]
    first, _ = run_fake(tmp_path, images, "--label_type=hard")
    table_dir = os.path.join(first, "predictions")
    for name in os.listdir(table_dir):
        if name.endswith(".parquet"):  # as a run before image hashes wrote it
            path = os.path.join(table_dir, name)
            meta = dataclasses.replace(predictions.read_metadata(path), version=1)
            rows = pq.read_table(path).drop_columns([predictions.IMAGE_HASH])
            pq.write_table(rows.replace_schema_metadata(
                {predictions.METADATA_KEY: meta.to_json()}), path)
    fakes.write_images(tmp_path / "input.tfrecord", images + corpus()[12:15])
    out = str(tmp_path / "re")
    rebalance.run([f"--predictions={table_dir}", f"--output_dir={out}", "--runner=DirectRunner",
                   "--label_type=hard", "--images_per_class=12", "--min_confidence=0",
                   "--no_duplicate"])
    assert stats.read_stats(out)["totals"]["written"] == 12  # the appended 3 go unnoticed
    assert completion.is_complete(out)
    warning, = [r.getMessage() for r in caplog.records if "format 1" in r.getMessage()]
    assert "written before tables recorded their input files' sizes and image hashes" in warning
