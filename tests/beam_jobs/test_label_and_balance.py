"""End-to-end tests of beam_jobs.label_and_balance on DirectRunner (fake and real teachers)."""
from __future__ import annotations

import collections
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from beam_jobs import cli
from beam_jobs import label_and_balance as job
from ns_data import completion, devices, predictions, schema, stats
from tests import fakes
from tests.beam_jobs.fake_runs import K, SEED, corpus, expected_copies, read_records, run_fake
from tests.data_files import write_tfrecord


def test_exact_counts_topk_and_copies_match_brute_force(tmp_path):
    images = corpus()
    output_dir, run_stats = run_fake(tmp_path, images)
    records = [schema.parse_pseudo_label(r) for r in read_records(output_dir)]
    by_id = {im.image_id: im for im in images}

    got = collections.Counter(r.image_id for r in records)
    want = {i: c for i, c in expected_copies(images, K).items() if c}
    assert dict(got) == want
    per_class = collections.Counter(r.label for r in records)
    assert per_class == {0: K, 1: K, 2: K}
    for r in records:
        im = by_id[r.image_id]
        assert r.label == im.label
        assert r.confidence == pytest.approx(float(im.confidence), abs=1e-7)
        assert r.encoded == im.encoded
    # Copy indices of one image are 0..c-1, each once.
    copies_seen = collections.defaultdict(list)
    for r in records:
        copies_seen[r.image_id].append(r.copy)
    assert all(sorted(c) == list(range(len(c))) for c in copies_seen.values())

    rows = {c["class"]: c for c in run_stats["classes"]}
    most = collections.defaultdict(int)
    for image_id, n in got.items():
        most[by_id[image_id].label] = max(most[by_id[image_id].label], n)
    assert [rows[c]["max_copies"] for c in range(4)] == [most[c] for c in range(4)] == [1, 2, 1, 0]
    assert run_stats["totals"]["max_copies"] == 2
    assert "most copies of one image: 2 (class 1, 7 images for 10 records)" in (
        stats.format_summary(run_stats))
    assert "warning" not in stats.format_summary(run_stats)  # 2 copies: the paper's few
    assert run_stats["config"]["max_copies"] == 100  # the default limit
    assert [rows[c]["read"] for c in range(4)] == [34, 7, K, 5]
    assert [rows[c]["above_threshold"] for c in range(4)] == [30, 7, K, 0]
    assert [rows[c]["kept"] for c in range(4)] == [K, 7, K, 0]
    assert [rows[c]["duplicated"] for c in range(4)] == [0, 3, 0, 0]
    kth = sorted((im.confidence for im in images if im.label == 0 and im.code >= 14),
                 reverse=True)[K - 1]
    assert rows[0]["capped"] and rows[0]["threshold"] == pytest.approx(float(kth))
    assert rows[1]["threshold"] == pytest.approx(0.3)
    assert run_stats["empty_classes"] == [3]
    totals = run_stats["totals"]
    assert totals["read"] == len(images) and totals["failed_total"] == 0
    assert totals["below_threshold"] == 9 and totals["written"] == 3 * K == len(records)
    stats.check_reconciles(run_stats)


def test_runaway_copies_are_refused_before_any_shard_and_the_table_is_kept(tmp_path):
    # Five images of class 0 for K=1000: 200 copies each, over the default --max_copies=100.
    images = corpus()[:5]
    with pytest.raises(completion.TooManyCopiesError) as e:
        run_fake(tmp_path, images, "--images_per_class=1000")
    out, table = tmp_path / "out", tmp_path / "out" / "predictions"
    assert str(e.value).startswith(
        f"class 0 would be 1000 records from 5 images, up to 200 copies of one image, more "
        f"than --max_copies=100: no shard was written to {out}. Lower --images_per_class or "
        "--min_confidence, pass --no_duplicate, or --max_copies=0 for no limit. The "
        f"predictions table {table} is complete: `python -m beam_jobs.rebalance "
        f"--predictions={table}` with those flags selects again without running the teacher.")
    assert sorted(os.listdir(out)) == ["predictions"]  # no shard, dead letter or stats.json
    assert completion.is_complete(str(table))
    marker = completion.read_marker(str(table))
    assert marker["job"] == "label_and_balance"
    assert marker["totals"] == {"read": 5, "scored": 5, "failed_total": 0, "failed": {
        "damaged_file": 0, "parse": 0, "decode": 0, "inference": 0, "invalid_output": 0}}
    assert not completion.is_complete(str(out))


def test_no_duplicate_caps_without_copies(tmp_path):
    images = corpus()
    output_dir, run_stats = run_fake(tmp_path, images, "--no_duplicate")
    records = [schema.parse_pseudo_label(r) for r in read_records(output_dir)]
    assert collections.Counter(r.label for r in records) == {0: K, 1: 7, 2: K}
    assert all(r.copy == 0 for r in records)
    want = {i for i, c in expected_copies(images, K, duplicate=False).items() if c}
    assert {r.image_id for r in records} == want
    assert run_stats["totals"]["duplicated"] == 0


@pytest.mark.parametrize("label_type", ["hard", "soft", "soft_topk"])
def test_label_types_round_trip(tmp_path, label_type):
    images = corpus()[:40]
    output_dir, _ = run_fake(tmp_path, images, f"--label_type={label_type}", "--topk=2")
    records = [schema.parse_pseudo_label(r) for r in read_records(output_dir)]
    by_id = {im.image_id: im for im in images}
    assert records
    for r in records:
        probs = fakes.probabilities(by_id[r.image_id].label, by_id[r.image_id].code)
        if label_type == "hard":
            assert r.probabilities is None and r.topk_classes is None
        elif label_type == "soft":
            np.testing.assert_allclose(r.probabilities, probs, rtol=1e-6)
        else:
            assert r.probabilities is None
            assert r.topk_classes[0] == r.label and len(r.topk_classes) == 2
            assert sum(r.topk_probs) == pytest.approx(1.0, abs=1e-6)
            top2 = probs[list(r.topk_classes)]
            np.testing.assert_allclose(r.topk_probs, top2 / top2.sum(), rtol=1e-5)


def test_same_seed_same_bytes_other_seed_other_order(tmp_path):
    images = corpus()
    out_a, _ = run_fake(tmp_path, images, name="a")
    out_b, _ = run_fake(tmp_path, images, name="b", batch_size=5)
    out_c, _ = run_fake(tmp_path, images, "--seed=8", name="c")
    shards = sorted(os.listdir(out_a))
    assert shards == sorted(os.listdir(out_b))
    for name in shards:
        if name.endswith(".tfrecord"):
            with open(os.path.join(out_a, name), "rb") as a, open(
                    os.path.join(out_b, name), "rb") as b:
                assert a.read() == b.read(), name
    assert read_records(out_a) != read_records(out_c)


def test_records_are_spread_across_shards(tmp_path):
    images = corpus()
    output_dir, run_stats = run_fake(tmp_path, images)
    per_shard = []
    paths = sorted(glob.glob(os.path.join(output_dir, "pseudo_labels-*.tfrecord")))
    for path in paths:
        per_shard.append([schema.parse_pseudo_label(r.numpy())
                          for r in tf.data.TFRecordDataset(path)])
    assert len(per_shard) == 3 and all(per_shard)
    # Each shard mixes classes, and the 10 copies-or-originals of class 1 are not in one shard.
    assert all(len({r.label for r in shard}) >= 2 for shard in per_shard)
    class1_shards = {i for i, shard in enumerate(per_shard) for r in shard if r.label == 1}
    assert len(class1_shards) >= 2
    assert run_stats["shards"]["count"] == 3
    assert run_stats["shards"]["records"] == [len(shard) for shard in per_shard]
    # The marker records each shard's size, so the trainer can take these counts unread.
    assert completion.read_marker(output_dir)[completion.SHARD_BYTES] == {
        os.path.basename(path): os.path.getsize(path) for path in paths}
    assert completion.recorded_records(output_dir, paths) == {
        path: len(shard) for path, shard in zip(paths, per_shard)}


def test_a_damaged_file_costs_only_what_cannot_be_read_from_it(tmp_path):
    images = corpus()[:30]
    records = [schema.image_example(im.encoded, im.image_id) for im in images]
    (tmp_path / "in").mkdir()
    write_tfrecord(tmp_path / "in" / "a-good.tfrecord", records[:10])
    flipped = write_tfrecord(tmp_path / "in" / "b-flipped.tfrecord", records[10:20])
    data = bytearray(open(flipped, "rb").read())
    frame = len(data) // 10  # the fake records are all one size: record 6 starts here
    data[6 * frame + 40] ^= 0x10  # one bit of record 6's bytes
    open(flipped, "wb").write(data)
    (tmp_path / "in" / "c-text.tfrecord").write_text("id,path\n1,a.png\n" * 20)
    output_dir, run_stats = run_fake(tmp_path, images, "--images_per_class=1000",
                                     "--min_confidence=0", f"--input={tmp_path}/in/*",
                                     "--no_duplicate", "--label_type=hard")
    totals = run_stats["totals"]
    assert totals["failed"]["damaged_file"] == 2
    assert totals["scored"] == 10 + 6  # the good file, and the flipped one before record 6
    written = {schema.parse_pseudo_label(r).image_id for r in read_records(output_dir)}
    assert written == {im.image_id for im in images[:16]}
    letters = {d[schema.ERROR_MESSAGE][0].decode() for d in
               map(schema.parse_example, read_records(output_dir, "dead_letters"))}
    assert letters == {
        f"{flipped}: record 6 at byte {6 * frame} is corrupt (data checksum mismatch). Its "
        "first 6 records are read; the rest of the file is lost.",
        f"{tmp_path}/in/c-text.tfrecord: record 0 at byte 0 has a corrupt length (checksum "
        "mismatch: damaged, or not a TFRecord file). Nothing in the file can be read."}
    stats.check_reconciles(run_stats)


def test_bad_records_become_dead_letters_and_are_counted(tmp_path):
    good = corpus()[:20]
    nan_image = fakes.fake_image(900, fakes.CLASS_NAN, 100)
    raising = fakes.fake_image(901, fakes.CLASS_RAISE, 100)
    records = [schema.image_example(im.encoded, im.image_id) for im in good]
    records += [
        schema.image_example(b"\x89PNG\r\n\x1a\n-not-really", b"corrupt-png"),
        schema.image_example(b"\xff\xd8\xff\xe0 truncated jpeg", b"corrupt-jpeg"),
        b"this is not a tf.train.Example",
        schema.image_example(b"", b"empty-bytes"),
        schema.image_example(nan_image.encoded, nan_image.image_id),
        schema.image_example(raising.encoded, raising.image_id),
        tf.train.Example(features=tf.train.Features(feature={
            schema.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[good[0].encoded])),
            schema.IMAGE_ID: tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
        })).SerializeToString(),
    ]
    # Teacher batches of 8: the raising image's batch is retried in halves, so it fails alone.
    output_dir, run_stats = run_fake(tmp_path, good, input_records=records)
    # A tight pixel limit turns every (4x4) image into a decode dead letter: the good ones, the
    # NaN and raising ones, and the two corrupt ones as before.
    _, tight = run_fake(tmp_path, good, "--max_image_pixels=15", name="tight")
    assert tight["totals"]["failed"]["decode"] == len(good) + 4
    assert tight["totals"]["written"] == 0
    letters = [schema.parse_example(r) for r in read_records(output_dir, "dead_letters")]
    stage_of = {d[schema.IMAGE_ID][0]: d[schema.ERROR_STAGE][0].decode() for d in letters}
    assert stage_of[b"corrupt-png"] == "decode"
    assert stage_of[b"corrupt-jpeg"] == "decode"
    assert stage_of[b"empty-bytes"] == "parse"
    assert stage_of[nan_image.image_id] == "invalid_output"
    assert stage_of[raising.image_id] == "inference"
    # Plus the non-Example record and the one whose id is an int64.
    assert list(stage_of.values()).count("parse") == 3
    assert (by_id_message(letters, raising.image_id)
            == "ValueError: fake teacher failed on this batch")
    assert all(d[schema.ERROR_MESSAGE][0] for d in letters)
    by_id = {d[schema.IMAGE_ID][0]: d for d in letters}
    assert by_id[b"corrupt-png"][schema.IMAGE_ENCODED][0] == b"\x89PNG\r\n\x1a\n-not-really"
    totals = run_stats["totals"]
    assert totals["read"] == len(records)
    assert totals["failed"] == {"damaged_file": 0, "parse": 3, "decode": 2, "inference": 1,
                                "invalid_output": 1}
    assert totals["scored"] == len(good)
    stats.check_reconciles(run_stats)


def by_id_message(letters, image_id: bytes) -> str:
    (message,) = [d[schema.ERROR_MESSAGE][0].decode() for d in letters
                  if d[schema.IMAGE_ID][0] == image_id]
    return message


def test_an_empty_input_is_not_marked_complete(tmp_path):
    with pytest.raises(completion.NothingReadError, match="no image was read"):
        run_fake(tmp_path, [])
    assert stats.read_stats(str(tmp_path / "out"))["totals"]["read"] == 0
    assert not completion.is_complete(str(tmp_path / "out"))
    assert not completion.is_complete(str(tmp_path / "out" / "predictions"))


def test_missing_flags_and_existing_output_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="missing required flags: --teacher, --output_dir"):
        job.run([f"--input={tmp_path}/*.tfrecord"])
    with pytest.raises(ValueError, match="matches no files"):
        job.run([f"--input={tmp_path}/none-*.tfrecord", "--teacher=t", "--output_dir=o"])
    output_dir, _ = run_fake(tmp_path, corpus()[:12])
    with pytest.raises(ValueError, match="already holds 3 pseudo_labels shards; pass --overwrite"):
        job.run([f"--input={tmp_path}/input.tfrecord", "--teacher=t",
                 f"--output_dir={output_dir}"])
    with pytest.raises(SystemExit):
        job.run(["--input=x", "--min_confidence=1.5"])
    with pytest.raises(SystemExit):
        job.run(["--input=x", "--seed=9223372036854775808"])
    with pytest.raises(ValueError, match=r"unknown flags: --image_per_class \(did you mean "
                       r"--images_per_class\?\)"):
        job.run(["--input=x", "--image_per_class=5"])
    with pytest.raises(ValueError, match="unknown flags: --images_per"):
        job.run(["--input=x", "--images_per=5"])  # no abbreviations either
    run_fake(tmp_path, corpus()[:12], f"--predictions_dir={tmp_path}/s", name="sc")
    with pytest.raises(ValueError, match="already holds 1 predictions table files"):
        job.run([f"--input={tmp_path}/input.tfrecord", "--teacher=t",
                 f"--output_dir={tmp_path}/new", f"--scores_dir={tmp_path}/s"])


def _options(*argv: str) -> job.LabelAndBalanceOptions:
    return job.pipeline_options(list(argv)).view_as(job.LabelAndBalanceOptions)


@pytest.mark.parametrize("argv,shared", [
    ((), False),
    (("--device=cpu",), False),
    (("--device=gpu",), True),
    (("--device=tpu",), True),
    (("--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;"
      "install-nvidia-driver",), True),
    (("--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1",
      "--no_large_model"), False),
    (("--large_model",), True),
    (("--model_copies=2",), True),
])
def test_model_is_shared_by_default_on_accelerator_workers(argv, shared):
    assert job.shares_model(_options(*argv)) is shared


def test_device_flags_reach_the_teacher_runtime():
    runtime = job.teacher_runtime(_options("--device=tpu", "--jit_compile", "--precision=mixed",
                                           "--gpu_memory_limit_mb=4000"))
    assert runtime == devices.TeacherRuntime(device="tpu", jit_compile=True, precision="mixed",
                                             gpu_memory_limit_mb=4000)
    assert job.teacher_runtime(_options()) == devices.TeacherRuntime()
    with pytest.raises(SystemExit):
        job.run(["--input=x", "--device=npu"])


def test_mixed_precision_under_jit_is_warned_about(tmp_path, caplog):
    corpus_path = tmp_path / "input.tfrecord"
    corpus_path.write_bytes(b"")
    argv = [f"--input={corpus_path}", "--teacher=t", f"--output_dir={tmp_path}/o"]
    job.validate(_options(*argv, "--precision=mixed"))
    assert "does nothing with --jit_compile" not in caplog.text
    job.validate(_options(*argv, "--precision=mixed", "--jit_compile"))
    assert "--precision=mixed does nothing with --jit_compile" in caplog.text


@pytest.mark.parametrize("flag, match", [
    ("--temperature=inf", "--temperature must be a finite number > 0, got inf"),
    ("--temperature=nan", "--temperature must be a finite number > 0, got nan"),
    ("--temperature=0", "--temperature must be a finite number > 0, got 0.0"),
    ("--output_dir={tmp}/a_file", "--output_dir=.*/a_file is a file, not a directory"),
    ("--predictions_dir={tmp}/a_file", "--predictions_dir=.*/a_file is a file, not a directory"),
])
def test_impossible_settings_are_refused_before_any_work(tmp_path, flag, match):
    corpus_path = tmp_path / "input.tfrecord"
    corpus_path.write_bytes(b"")
    (tmp_path / "a_file").write_text("x")
    argv = [f"--input={corpus_path}", "--teacher=t", f"--output_dir={tmp_path}/o",
            flag.format(tmp=tmp_path)]
    with pytest.raises(ValueError, match=match):
        job.validate(_options(*argv))


def test_an_output_dir_that_cannot_be_created_is_refused_before_the_pipeline(tmp_path):
    (tmp_path / "a_file").write_text("x")
    opts = _options("--input=x", "--teacher=t", f"--output_dir={tmp_path}/a_file/out")
    with pytest.raises(ValueError, match="--output_dir=.*/a_file/out cannot be created"):
        job.clear_outputs(opts)
    job.clear_outputs(_options("--input=x", "--teacher=t", f"--output_dir={tmp_path}/o"))
    assert os.path.isdir(tmp_path / "o" / "predictions")


@pytest.mark.parametrize("runner, refused", [("DirectRunner", True), ("PrismRunner", True),
                                            ("DataflowRunner", False)])
def test_a_device_this_machine_lacks_is_refused_when_the_teacher_runs_here(
        tmp_path, monkeypatch, runner, refused):
    monkeypatch.setattr(devices.TensorFlowBackend, "gpus", lambda self: [])
    corpus_path = tmp_path / "input.tfrecord"
    corpus_path.write_bytes(b"")
    opts = _options(f"--input={corpus_path}", "--teacher=t", f"--output_dir={tmp_path}/o",
                    "--device=gpu", f"--runner={runner}")
    if not refused:  # Dataflow workers have their own accelerators
        job.validate(opts, check_output=False)
        return
    with pytest.raises(ValueError, match=f"--device=gpu but TensorFlow sees no GPU on this "
                                         f"machine.*; with --runner={runner} the teacher runs"):
        job.validate(opts)


def test_contradicting_sharing_flags_are_refused(tmp_path):
    corpus_path = tmp_path / "input.tfrecord"
    corpus_path.write_bytes(b"")
    with pytest.raises(ValueError, match="--no_large_model contradicts --large_model"):
        job.run([f"--input={corpus_path}", "--teacher=t", f"--output_dir={tmp_path}/o",
                 "--no_large_model", "--large_model"])


def test_help_documents_every_flag(capsys):
    assert job.run(["--help"]) is None
    text = capsys.readouterr().out
    parser = job._help_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.option_strings[0] in text
            assert action.help, action.option_strings
    for flag in ("--min_confidence", "--images_per_class", "--label_type", "--runner"):
        assert flag in text


def test_the_config_names_and_defaults_every_flag_as_the_command_line_does(tmp_path):
    parser = job._help_parser()
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    assert job.LabelAndBalanceConfig().flag_values() == defaults
    argv = ["--input=in*", "--teacher=t", "--output_dir=o", "--image_size=12,14",
            "--input_range=-1,1", "--no_duplicate", "--images_per_class=5", "--device=cpu"]
    assert job.LabelAndBalanceConfig.from_options(PipelineOptions(argv)) == (
        job.LabelAndBalanceConfig(input="in*", teacher="t", image_size=(12, 14),
                                  input_range=(-1.0, 1.0), device="cpu",
                                  balance=cli.BalanceSettings(output_dir="o", no_duplicate=True,
                                                              images_per_class=5)))


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "argument --batch_size: must be >= 1, got 0"),
    ({"device": "fpga"}, "argument --device: invalid choice: 'fpga' (choose from 'auto', "),
    ({"image_size": (28,)}, "argument --image_size: --image_size takes two values like 224,224"),
    ({"channels": 2}, "argument --channels: invalid choice: 2 (choose from 1, 3)"),
    ({"large_model": "yes"}, "argument --large_model: takes True or False, got 'yes'"),
    ({"batch_size": 2.5}, "argument --batch_size: invalid int value: '2.5'"),
    ({"predictions_dir": 3}, "argument --predictions_dir/--scores_dir: takes str values, got 3"),
    ({"temperature": 0.0}, "--temperature must be a finite number > 0, got 0.0"),
    ({"no_large_model": True, "model_copies": 2}, "--no_large_model contradicts --large_model"),
])
def test_the_config_refuses_what_the_flags_refuse(change, message):
    with pytest.raises(ValueError) as error:
        job.LabelAndBalanceConfig(input="in", teacher="t", **change)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("flag, change", [
    ("--min_confidence=1.5", {"min_confidence": 1.5}),
    ("--label_type=soft_top", {"label_type": "soft_top"}),
    ("--images_per_class=0", {"images_per_class": 0}),
    ("--max_copies=-1", {"max_copies": -1}),
])
def test_balance_settings_give_the_command_lines_messages(flag, change, capsys):
    with pytest.raises(SystemExit):
        job.run(["--input=in", "--teacher=t", "--output_dir=o", flag])
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(ValueError) as error:
        cli.BalanceSettings(**change)
    assert printed == f"python -m beam_jobs.label_and_balance: error: {error.value}"


def test_image_files_input(tmp_path):
    images = corpus()[:25]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for im in images:
        (image_dir / f"{im.image_id.decode()}.png").write_bytes(im.encoded)
    (image_dir / "broken.png").write_bytes(b"not an image")
    output_dir = str(tmp_path / "out")
    opts = PipelineOptions([f"--input={image_dir}/*.png", "--input_format=images",
                            "--teacher=unused", f"--output_dir={output_dir}",
                            f"--images_per_class={K}", "--num_shards=2", f"--seed={SEED}"]
                           ).view_as(job.LabelAndBalanceOptions)
    with BeamTestPipeline(runner="DirectRunner") as p:
        job.build(p, opts, fakes.fake_spec(), fakes.FakeTeacherHandler())
    run_stats = stats.read_stats(output_dir)
    records = [schema.parse_pseudo_label(r) for r in read_records(output_dir)]
    # Ids are the paths under the glob's folder; the selection is the brute-force one on them.
    renamed = [fakes.FakeImage(f"{im.image_id.decode()}.png".encode(), im.label, im.code,
                               im.encoded) for im in images]
    want = {i: c for i, c in expected_copies(renamed, K).items() if c}
    assert dict(collections.Counter(r.image_id for r in records)) == want
    assert run_stats["totals"]["read"] == 26
    assert run_stats["totals"]["failed"]["decode"] == 1
    stats.check_reconciles(run_stats)


def test_table_must_hold_what_the_label_type_writes(tmp_path):
    with pytest.raises(ValueError, match=r"--label_type=soft writes the whole distribution, but "
                       r"the predictions table keeps the top 2 of 4 classes"):
        run_fake(tmp_path, corpus()[:10], "--predictions_topk=2")
    assert not os.path.exists(tmp_path / "out")
    output_dir, _ = run_fake(tmp_path, corpus()[:30], "--label_type=soft_topk", "--topk=2")
    metadata = predictions.read_metadata(
        glob.glob(os.path.join(output_dir, "predictions", "*.parquet"))[0])
    assert (metadata.topk, metadata.num_classes) == (4, 4)  # max(--topk, 10), capped


def test_a_device_error_fails_the_job_instead_of_making_dead_letters(tmp_path):
    images = corpus()[:12] + [fakes.fake_image(950, fakes.CLASS_OOM, 100)]
    with pytest.raises(Exception, match="OOM when allocating tensor"):
        run_fake(tmp_path, images)
    assert not glob.glob(os.path.join(tmp_path, "out", "pseudo_labels-*"))
