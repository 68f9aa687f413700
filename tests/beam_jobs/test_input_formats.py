"""label_and_balance on Parquet and WebDataset inputs and image folders: the same images under
the same ids give the same pseudo-labels as TFRecords; bad rows, members and files are dead
letters."""
from __future__ import annotations

import collections
import functools
import glob
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from beam_jobs import label_and_balance as job
from beam_jobs import rebalance
from ns_data import completion, formats, pipeline, predictions, read, schema, stats, write
from ns_data.images import truncation
from tests import fakes
from tests.beam_jobs.fake_runs import (K, SEED, corpus, expected_copies, output_files,
                                       read_records, run_fake)
from tests.ns_data.test_formats import corrupt_row_group, write_parquet, write_webdataset


def parquet_corpus(folder, images, **kwargs) -> str:
    """`images` in two Parquet files of several row groups, Hugging Face style; their glob."""
    os.makedirs(folder, exist_ok=True)
    half = len(images) // 2
    for name, part in (("a", images[:half]), ("b", images[half:])):
        write_parquet(os.path.join(folder, f"{name}.parquet"), [im.encoded for im in part],
                      [im.image_id.decode() for im in part], row_group_size=7, struct=True,
                      **kwargs)
    return os.path.join(folder, "*.parquet")


def pseudo_labels(output_dir: str) -> list[schema.PseudoLabel]:
    return sorted((schema.parse_pseudo_label(r) for r in read_records(output_dir)),
                  key=lambda r: (r.image_id, r.copy))


def dead_letters(output_dir: str) -> dict[bytes, tuple[str, str]]:
    """{image id: (stage, message)} of the dead letters."""
    return {d[schema.IMAGE_ID][0]: (d[schema.ERROR_STAGE][0].decode(),
                                    d[schema.ERROR_MESSAGE][0].decode())
            for d in map(schema.parse_example, read_records(output_dir, "dead_letters"))}


def webdataset_corpus(folder, images) -> str:
    """`images` in two tar shards (one gzipped), each sample with a .json and a .cls member beside
    its image; their glob."""
    os.makedirs(folder, exist_ok=True)
    half = len(images) // 2
    for name, part, mode in (("shard-0.tar", images[:half], "w"),
                             ("shard-1.tar.gz", images[half:], "w:gz")):
        members = []
        for im in part:
            key = im.image_id.decode()
            members += [(f"{key}.json", b"{}"), (f"{key}.png", im.encoded), (f"{key}.cls", b"0")]
        write_webdataset(os.path.join(folder, name), members, mode)
    return os.path.join(folder, "shard-*")


def test_the_same_images_give_the_same_pseudo_labels_in_every_format(tmp_path):
    images = corpus()
    tfrecord, tfrecord_stats = run_fake(tmp_path, images, name="tfrecord")
    parquet, parquet_stats = run_fake(
        tmp_path, images, f"--input={parquet_corpus(tmp_path / 'pq', images)}",
        "--input_format=parquet", "--id_column=id", name="parquet")
    webdataset, webdataset_stats = run_fake(
        tmp_path, images, f"--input={webdataset_corpus(tmp_path / 'wds', images)}",
        "--input_format=webdataset", name="webdataset")
    want = pseudo_labels(tfrecord)
    assert len(want) == 3 * K
    assert pseudo_labels(parquet) == want
    assert pseudo_labels(webdataset) == want
    assert parquet_stats["classes"] == webdataset_stats["classes"] == tfrecord_stats["classes"]
    # The shards, byte for byte.
    assert output_files(parquet) == output_files(webdataset) == output_files(tfrecord)
    assert parquet_stats["config"]["input_format"] == "parquet"
    assert webdataset_stats["config"]["input_format"] == "webdataset"


@pytest.mark.slow
def test_2000_images_in_four_formats_give_the_same_pseudo_labels_counts_and_shards(tmp_path):
    """The same 2,000 images as TFRecords, Parquet, WebDataset and an image folder (its files
    named by the images' ids, so every format names them alike) give the same pseudo-labels,
    per-class counts and output bytes."""
    rng = np.random.default_rng(13)
    labels = rng.choice(fakes.NUM_CLASSES, size=2000, p=[0.4, 0.3, 0.2, 0.1])
    images = [fakes.fake_image(i, int(label), int(rng.integers(256)))
              for i, label in enumerate(labels)]
    folder = tmp_path / "photos"
    folder.mkdir()
    for im in images:
        (folder / im.image_id.decode()).write_bytes(im.encoded)
    k = ["--images_per_class=400"]  # some classes capped, others duplicated
    runs = {
        "tfrecord": run_fake(tmp_path, images, *k, name="tfrecord", batch_size=64),
        "parquet": run_fake(tmp_path, images, f"--input={parquet_corpus(tmp_path / 'pq', images)}",
                            "--input_format=parquet", "--id_column=id", *k, name="parquet",
                            batch_size=64),
        "webdataset": run_fake(tmp_path, images,
                               f"--input={webdataset_corpus(tmp_path / 'wds', images)}",
                               "--input_format=webdataset", *k, name="webdataset",
                               batch_size=64),
        "images": run_fake(tmp_path, images, f"--input={folder}/*", "--input_format=images",
                           *k, name="images", batch_size=64),
    }
    want = pseudo_labels(runs["tfrecord"][0])
    counts = runs["tfrecord"][1]["classes"]
    assert len(want) == 400 * fakes.NUM_CLASSES
    assert any(c["dropped_by_cap"] for c in counts) and any(c["duplicated"] for c in counts)
    for name, (output_dir, run_stats) in runs.items():
        assert run_stats["totals"]["read"] == 2000 and run_stats["totals"]["failed_total"] == 0
        assert run_stats["classes"] == counts, name
        assert pseudo_labels(output_dir) == want, name
        assert output_files(output_dir) == output_files(runs["tfrecord"][0]), name


def test_parquet_files_read_in_splits_give_byte_identical_outputs(tmp_path, monkeypatch):
    images = corpus()
    pattern = parquet_corpus(tmp_path / "pq", images)
    flags = [f"--input={pattern}", "--input_format=parquet", "--id_column=id"]
    read_wanted = formats.read_wanted
    calls = []  # the writing pass's reads: (file, wanted rows)

    def recorded(source, input_format, columns, wanted, table_path):
        calls.append((os.path.basename(source), sorted(wanted)))
        return read_wanted(source, input_format, columns, wanted, table_path)

    monkeypatch.setattr(formats, "read_wanted", recorded)
    whole, whole_stats = run_fake(tmp_path, images, *flags, name="whole")
    assert sorted(name for name, _ in calls) == ["a.parquet", "b.parquet"]
    wanted = dict(calls)
    # Every row group its own split: each file is read by several DoFn calls, in both passes.
    monkeypatch.setattr(job, "ReadImages", functools.partial(read.ReadImages, split_bytes=1))
    monkeypatch.setattr(pipeline, "WriteLabeledShards",
                        functools.partial(write.WriteLabeledShards, split_bytes=1))
    calls.clear()
    split, split_stats = run_fake(tmp_path, images, *flags, name="split")
    assert len(formats.parquet_splits(f"{tmp_path}/pq/a.parquet", target_bytes=1)) == 4
    # The same rows, read by one call per row group (7 rows) that holds any.
    for name, rows in wanted.items():
        reads = [read_rows for source, read_rows in calls if source == name]
        assert len(reads) > 1 and sorted(sum(reads, [])) == rows
        assert all(r[0] // 7 == r[-1] // 7 for r in reads)
        assert len({r[0] // 7 for r in reads}) == len(reads)
    assert output_files(split) == output_files(whole) and len(output_files(whole)) == 4
    tables = [{name: open(os.path.join(d, "predictions", name), "rb").read()
               for name in os.listdir(os.path.join(d, "predictions")) if name.endswith(".parquet")}
              for d in (whole, split)]
    assert tables[0] == tables[1] and len(tables[0]) == 2
    assert split_stats["totals"] == whole_stats["totals"]


def test_bad_parquet_rows_and_files_become_dead_letters(tmp_path):
    images = corpus()[:20]
    folder = tmp_path / "pq"
    folder.mkdir()
    good = write_parquet(folder / "a.parquet", [im.encoded for im in images[:10]]
                         + [None, b"", b"\x89PNG\r\n\x1a\n-not-really"],
                         [im.image_id.decode() for im in images[:10]]
                         + ["null-cell", "empty-cell", "corrupt-png"], row_group_size=5)
    damaged = write_parquet(folder / "b.parquet", [im.encoded for im in images[10:]],
                            [im.image_id.decode() for im in images[10:]], row_group_size=4)
    corrupt_row_group(damaged, 1)  # rows 4..7 and the row group after them are lost
    truncated = write_parquet(folder / "c.parquet", [im.encoded for im in images])
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[:len(data) - 100])
    output_dir, run_stats = run_fake(tmp_path, images, f"--input={folder}/*.parquet",
                                     "--input_format=parquet", "--id_column=id",
                                     "--images_per_class=1000", "--min_confidence=0",
                                     "--no_duplicate", "--label_type=hard")
    totals = run_stats["totals"]
    assert totals["read"] == 13 + 5 + 1
    assert totals["failed"] == {"damaged_file": 2, "parse": 2, "decode": 1, "inference": 0,
                                "invalid_output": 0}
    assert totals["scored"] == 10 + 4
    written = {r.image_id for r in pseudo_labels(output_dir)}
    assert written == {im.image_id for im in images[:14]}
    letters = dead_letters(output_dir)
    assert letters[b"null-cell"] == ("parse", f"{good} row 10: a null image cell")
    assert letters[b"empty-cell"] == ("parse", f"{good} row 11: an empty image cell")
    assert letters[b"corrupt-png"][0] == "decode"
    stage, message = letters[f"{damaged}#4".encode()]
    assert stage == "damaged_file" and message.startswith(
        f"{damaged}: row group 1 (rows 4..7) cannot be read at row 4 (")
    assert message.endswith("Its first 4 records are read; the rest of the file is lost.")
    stage, message = letters[f"{truncated}#0".encode()]
    assert stage == "damaged_file" and message.startswith(f"{truncated}: its footer cannot be "
                                                          "read (")
    assert message.endswith("Nothing in the file can be read.")
    stats.check_reconciles(run_stats)


def test_rebalance_of_a_parquet_run_matches_a_fresh_run(tmp_path):
    images = corpus()
    pattern = parquet_corpus(tmp_path / "pq", images, image_column="img", id_column="key")
    flags = [f"--input={pattern}", "--input_format=parquet", "--image_column=img",
             "--id_column=key", "--predictions_topk=4"]
    first, _ = run_fake(tmp_path, images, *flags, name="first")
    selection = ["--images_per_class=5", "--min_confidence=0.5", "--num_shards=3",
                 f"--seed={SEED}", "--label_type=soft_topk", "--topk=2"]
    rebalanced = str(tmp_path / "rebalanced")
    rebalance.run([f"--predictions={first}/predictions", f"--output_dir={rebalanced}",
                   "--runner=DirectRunner", *selection])
    fresh, fresh_stats = run_fake(tmp_path, images, *flags, *selection, name="fresh")
    files = output_files(rebalanced)
    assert files == output_files(fresh) and len(files) == 4
    assert stats.read_stats(rebalanced)["classes"] == fresh_stats["classes"]
    assert {r.image_id for r in pseudo_labels(rebalanced)} <= {im.image_id for im in images}


def test_a_parquet_input_changed_since_the_table_is_refused_when_read_in_splits(tmp_path,
                                                                                monkeypatch):
    """The input checks hold when the writing pass reads a Parquet file in splits: records
    appended are refused once for the table file, an image replaced by the split that reads it."""
    images = corpus()[:12]  # class 0, every one written once below
    source = str(tmp_path / "pq" / "a.parquet")
    os.makedirs(os.path.dirname(source))

    def rewrite(part):
        write_parquet(source, [im.encoded for im in part], [im.image_id.decode() for im in part])

    rewrite(images)  # 3 row groups of 4 rows
    first, _ = run_fake(tmp_path, images, f"--input={source}", "--input_format=parquet",
                        "--id_column=id", "--label_type=hard", name="first")
    monkeypatch.setattr(pipeline, "WriteLabeledShards",
                        functools.partial(write.WriteLabeledShards, split_bytes=1))
    assert len(formats.parquet_splits(source, target_bytes=1)) == 3
    argv = [f"--predictions={first}/predictions", "--runner=DirectRunner", "--label_type=hard",
            "--images_per_class=12", "--min_confidence=0", "--no_duplicate"]
    size = os.path.getsize(source)
    rewrite(images + corpus()[12:15])
    with pytest.raises(ValueError, match=(
            f"^the input changed since the table was written: {source} had 12 records "
            rf"\({size} bytes\), now 15 \({os.path.getsize(source)} bytes\); rerun "
            r"beam_jobs.label_and_balance on it \(predictions table file .*\.parquet\)")):
        rebalance.run([*argv, f"--output_dir={tmp_path}/appended"])
    # Row 5 (the second split's) keeps its id but holds an image the teacher gives another class.
    other = fakes.fake_image(5, (images[5].label + 1) % fakes.NUM_CLASSES, images[5].code)
    assert other.image_id == images[5].image_id and other.encoded != images[5].encoded
    rewrite([*images[:5], other, *images[6:]])
    with pytest.raises(ValueError, match=(
            f"^{source} record 5 \\(id img-000005\\): image bytes changed since scoring, so the "
            r"predictions table .* has another image's label for it \(1 such image\(s\) "
            r"selected in this split of the input file\): the input changed since the table was "
            "written")):
        rebalance.run([*argv, f"--output_dir={tmp_path}/replaced"])
    assert not completion.is_complete(str(tmp_path / "replaced"))
    rewrite(images)  # as it was: the same table serves again
    rebalance.run([*argv, f"--output_dir={tmp_path}/restored"])
    assert stats.read_stats(str(tmp_path / "restored"))["totals"]["written"] == 12


def test_parquet_columns_are_checked_before_any_work(tmp_path):
    pattern = parquet_corpus(tmp_path / "pq", corpus()[:4])
    argv = [f"--input={pattern}", "--teacher=unused", f"--output_dir={tmp_path}/out",
            "--input_format=parquet"]
    with pytest.raises(ValueError, match=r"^--image_column=picture: no such column in "
                       rf"{tmp_path}/pq/a.parquet \(columns: caption, image, id\)$"):
        job.run([*argv, "--image_column=picture"])
    with pytest.raises(ValueError, match=r"^--id_column=caption2: no such column"):
        job.run([*argv, "--id_column=caption2"])
    with pytest.raises(ValueError, match=r"^--image_column applies to --input_format=parquet "
                       "only, not --input_format=tfrecord$"):
        job.run([f"--input={pattern}", "--teacher=unused", f"--output_dir={tmp_path}/out",
                 "--image_column=image"])
    assert not os.path.exists(tmp_path / "out")


def test_the_table_records_the_parquet_columns(tmp_path):
    pattern = parquet_corpus(tmp_path / "pq", corpus()[:6], image_column="img")
    output_dir, _ = run_fake(tmp_path, [], f"--input={pattern}", "--input_format=parquet",
                             "--image_column=img")
    first = sorted(glob.glob(predictions.table_pattern(os.path.join(output_dir,
                                                                 "predictions"))))[0]
    metadata = predictions.read_metadata(first)
    assert (metadata.input_format, metadata.image_column, metadata.id_column,
            metadata.num_classes) == ("parquet", "img", "", fakes.NUM_CLASSES)


def test_bad_webdataset_samples_and_a_truncated_tar_become_dead_letters(tmp_path):
    images = corpus()[:20]
    folder = tmp_path / "wds"
    folder.mkdir()
    good = write_webdataset(folder / "a.tar", [
        *[(f"{im.image_id.decode()}.png", im.encoded) for im in images[:10]],
        ("two.png", images[0].encoded), ("two.jpg", images[1].encoded),
        ("none.json", b"{}"), ("none.txt", b"caption"),
        ("empty.png", b""),
        ("corrupt.png", b"\x89PNG\r\n\x1a\n-not-really"),
        (f"{images[3].image_id.decode()}.png", images[5].encoded)])  # sample 3's key again
    keys = [im.image_id.decode() for im in images[10:]]
    truncated = write_webdataset(folder / "b.tar", [
        member for key, im in zip(keys, images[10:])
        for member in ((f"{key}.png", im.encoded), (f"{key}.json", b"{}"))])
    data = open(truncated, "rb").read()
    # A sample is 4 blocks (a header and a data block per member): cut inside sample 6's image.
    open(truncated, "wb").write(data[:512 * (6 * 4 + 1) + 10])
    output_dir, run_stats = run_fake(tmp_path, images, f"--input={folder}/*.tar",
                                     "--input_format=webdataset", "--images_per_class=1000",
                                     "--min_confidence=0", "--no_duplicate",
                                     "--label_type=hard")
    totals = run_stats["totals"]
    assert totals["read"] == 15 + 6 + 1
    assert totals["failed"] == {"damaged_file": 1, "parse": 4, "decode": 1, "inference": 0,
                                "invalid_output": 0}
    assert totals["scored"] == 10 + 6
    assert {r.image_id for r in pseudo_labels(output_dir)} == {im.image_id
                                                               for im in images[:16]}
    letters = dead_letters(output_dir)
    assert letters[b"two"] == ("parse", f"{good} sample 10 (two) has 2 image members (one image "
                               "per sample) (members: two.png, two.jpg)")
    assert letters[b"none"] == ("parse", f"{good} sample 11 (none) has no image member "
                                "(members: none.json, none.txt)")
    assert letters[b"empty"] == ("parse", f"{good} sample 12 (empty): an empty image")
    assert letters[b"corrupt"][0] == "decode"
    key = images[3].image_id.decode()
    assert letters[images[3].image_id] == ("parse", f"duplicate key {key} in {good}, first at "
                                           f"member 3 (sample 3); this is sample 14 (members: "
                                           f"{key}.png)")
    assert {r.encoded for r in pseudo_labels(output_dir)
            if r.image_id == images[3].image_id} == {images[3].encoded}  # the first sample's
    stage, message = letters[f"{truncated}#6".encode()]
    assert stage == "damaged_file" and message.startswith(
        f"{truncated}: tar cannot be read from sample 6 ({images[16].image_id.decode()}) on (")
    assert message.endswith("Its first 6 records are read; the rest of the file is lost.")
    stats.check_reconciles(run_stats)


def folder_corpus(root, images) -> list[fakes.FakeImage]:
    """`images` as PNG files under `root`: two at the top, the others in a folder per class,
    every third a folder deeper; returns them named by their path under `root`."""
    named = []
    for i, im in enumerate(images):
        folder = "" if i < 2 else f"class{im.label}/" + ("deep/" if i % 3 == 0 else "")
        name = f"{folder}{im.image_id.decode()}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(im.encoded)
        named.append(fakes.FakeImage(name.encode(), im.label, im.code, im.encoded))
    return named


def test_an_image_folder_gives_the_same_ids_and_bytes_from_any_working_directory(
        tmp_path, monkeypatch):
    photos = tmp_path / "data" / "photos"
    images = folder_corpus(photos, corpus())
    (photos / "class0" / "cut.png").write_bytes(images[0].encoded[:57])
    (tmp_path / "elsewhere").mkdir()
    outputs = {}
    for name, cwd, pattern in (("relative", tmp_path / "data", "photos/**"),
                               ("absolute", tmp_path / "elsewhere", f"{photos}/**")):
        monkeypatch.chdir(cwd)
        output_dir = f"{tmp_path}/{name}"
        opts = PipelineOptions([f"--input={pattern}", "--input_format=images",
                                "--teacher=unused", f"--output_dir={output_dir}",
                                f"--images_per_class={K}", "--num_shards=3", f"--seed={SEED}"]
                               ).view_as(job.LabelAndBalanceOptions)
        job.validate(opts)  # as `run` does: the glob made absolute, checked to match
        with BeamTestPipeline(runner="DirectRunner") as p:
            job.build(p, opts, fakes.fake_spec(), fakes.FakeTeacherHandler())
        completion.finish_run(output_dir, "label_and_balance", 1.0)
        outputs[name] = output_files(output_dir)
    assert outputs["relative"] == outputs["absolute"]  # shards and dead letters, byte for byte
    assert len(outputs["relative"]) == 4 and all(outputs["relative"].values())

    # Ids are paths under photos/, subfolders included; the table keeps each file's full path.
    want = {i: c for i, c in expected_copies(images, K).items() if c}
    got = collections.Counter(r.image_id for r in pseudo_labels(f"{tmp_path}/relative"))
    assert dict(got) == want
    table = pq.read_table(f"{tmp_path}/relative/predictions")
    assert sorted(zip(table.column(predictions.ID).to_pylist(),
                      table.column(predictions.SOURCE).to_pylist())) == sorted(
        [(im.image_id, f"{photos}/{im.image_id.decode()}") for im in images]
        + [(b"class0/cut.png", f"{photos}/class0/cut.png")])
    cut = truncation(images[0].encoded[:57])
    assert cut.startswith("truncated PNG: the file ends at byte 57")
    assert dead_letters(f"{tmp_path}/relative") == {b"class0/cut.png": ("decode",
                                                                        f"ValueError: {cut}")}
    run_stats = stats.read_stats(f"{tmp_path}/relative")
    assert run_stats["totals"]["read"] == len(images) + 1
    assert run_stats["totals"]["failed"]["decode"] == 1

    # The writing pass of a rebalance run from a third directory reads the same files as ids.
    monkeypatch.chdir(photos / "class1")
    rebalance.run([f"--predictions={tmp_path}/relative/predictions",
                   f"--output_dir={tmp_path}/rebalanced", "--runner=DirectRunner",
                   f"--images_per_class={K}", "--num_shards=3", f"--seed={SEED}",
                   "--max_failure_fraction=1"])
    assert output_files(f"{tmp_path}/rebalanced") == outputs["relative"]
