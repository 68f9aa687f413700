"""beam_jobs.reshard: a corpus re-cut into TFRecord shards keeps every image under its id, counts
what it could not read, and writes the same bytes every time."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from beam_jobs import reshard
from ns_data import completion, read, schema
from ns_data.balance import id_hash
from ns_data.tfrecord import iter_records
from tests import fakes
from tests.beam_jobs.test_input_formats import parquet_corpus, pseudo_labels
from tests.beam_jobs.test_label_and_balance import corpus, run_fake
from tests.beam_jobs.test_rebalance import output_files, truncate_last_record

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tfrecord_corpus(folder) -> tuple[str, list[tuple[bytes, bytes]], str, str]:
    """Two TFRecord files of fake images, a third of them without an id; the first holds a
    record that is not an Example (record 5), the second is cut in its last record. Returns
    their glob, the (id, bytes) label_and_balance reads from them, and the two paths."""
    os.makedirs(folder, exist_ok=True)
    images = corpus()
    records = [schema.image_example(im.encoded, im.image_id if i % 3 else None)
               for i, im in enumerate(images)]
    first = fakes.write_tfrecord(folder / "a.tfrecord",
                                 records[:5] + [b"not an example"] + records[5:30])
    second = fakes.write_tfrecord(folder / "b.tfrecord", records[30:])
    truncate_last_record(second)
    readable = records[:-1]
    return (str(folder / "*.tfrecord"), sorted(map(read.parse_image_record, readable)), first,
            second)


def shard_images(output_dir: str) -> dict[str, list[tuple[bytes, bytes]]]:
    """{shard file: [(id, bytes), ...] in file order}."""
    return {os.path.basename(path): [read.parse_image_record(r) for r in iter_records(path)]
            for path in sorted(glob.glob(f"{output_dir}/{reshard.IMAGES_PREFIX}-*"))}


def test_every_image_keeps_its_id_and_bytes_and_failures_are_counted(tmp_path):
    pattern, want, first, second = tfrecord_corpus(tmp_path / "in")
    output_dir = str(tmp_path / "out")
    reshard.run([f"--input={pattern}", f"--output_dir={output_dir}", "--num_shards=5",
                 "--runner=DirectRunner"])
    shards = shard_images(output_dir)
    assert list(shards) == [f"images-{s:05d}-of-00005.tfrecord" for s in range(5)]
    assert sorted(im for images in shards.values() for im in images) == want
    for shard, images in enumerate(shards.values()):  # placed and ordered by a hash of the id
        orders = [id_hash(image_id, 0) for image_id, _ in images]
        assert orders == sorted(orders) and {o % 5 for o in orders} <= {shard}
    summary = json.load(open(os.path.join(output_dir, reshard.SUMMARY_FILE)))
    assert summary["images_per_shard"] == [len(images) for images in shards.values()]
    assert summary["images"] == len(want) == len(corpus()) - 1
    assert summary["failed"] == {"damaged_file": 1, "parse": 1}
    letters = sorted((d[schema.ERROR_STAGE][0].decode(), d[schema.ERROR_MESSAGE][0].decode())
                     for d in map(schema.parse_example, iter_records(
                         f"{output_dir}/dead_letters-00000-of-00001.tfrecord")))
    assert [stage for stage, _ in letters] == ["damaged_file", "parse"]
    assert letters[0][1].startswith(f"{second}: record {len(corpus()) - 31} at byte ")
    assert letters[1][1].startswith(f"{first} record 5: not a tf.train.Example: ")
    assert completion.read_marker(output_dir) == {
        "complete": True, "job": "reshard",
        "config": {"input": pattern, "input_format": "tfrecord", "num_shards": 5},
        "totals": {"images": len(want), "failed": {"damaged_file": 1, "parse": 1}}}


def test_the_marker_is_written_last_and_an_overwrite_removes_it_first(tmp_path, monkeypatch):
    pattern, _, _, _ = tfrecord_corpus(tmp_path / "in")
    output_dir = str(tmp_path / "out")
    flags = [f"--input={pattern}", f"--output_dir={output_dir}", "--num_shards=2",
             "--runner=DirectRunner"]
    written = []
    write_marker = completion.write_marker
    monkeypatch.setattr(completion, "write_marker", lambda directory, contents: written.append(
        sorted(os.listdir(directory))) or write_marker(directory, contents))
    reshard.run(flags)
    assert written == [["dead_letters-00000-of-00001.tfrecord", "images-00000-of-00002.tfrecord",
                        "images-00001-of-00002.tfrecord", "reshard.json"]]
    assert completion.is_complete(output_dir)

    def interrupted(pipeline, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(reshard, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reshard.run([*flags, "--overwrite"])
    assert not completion.is_complete(output_dir) and os.listdir(output_dir) == []


def test_label_and_balance_on_the_shards_writes_what_it_writes_on_the_original(tmp_path):
    images = corpus()
    pattern = parquet_corpus(tmp_path / "pq", images)
    flags = [f"--input={pattern}", "--input_format=parquet", "--id_column=id"]
    original, original_stats = run_fake(tmp_path, images, *flags, name="original")
    reshard.run([*flags, f"--output_dir={tmp_path}/shards", "--num_shards=3",
                 "--runner=DirectRunner"])
    sharded, sharded_stats = run_fake(
        tmp_path, images, f"--input={tmp_path}/shards/images-*.tfrecord", name="sharded")
    assert len(pseudo_labels(original)) == len(pseudo_labels(sharded)) > 0
    assert output_files(sharded) == output_files(original)
    assert sharded_stats["classes"] == original_stats["classes"]


def test_two_runs_in_separate_processes_write_identical_bytes(tmp_path):
    pattern, _, _, _ = tfrecord_corpus(tmp_path / "in")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "random"}
    outputs = []
    for run in ("one", "two"):
        output_dir = str(tmp_path / run)
        subprocess.run([sys.executable, "-m", "beam_jobs.reshard", f"--input={pattern}",
                        f"--output_dir={output_dir}", "--num_shards=4", "--runner=DirectRunner"],
                       cwd=REPO, env=env, check=True, capture_output=True)
        outputs.append({name: open(os.path.join(output_dir, name), "rb").read()
                        for name in sorted(os.listdir(output_dir))})
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 4 + 3  # image shards, dead letters, reshard.json, _SUCCESS
    assert sum(len(list(iter_records(path))) for path in glob.glob(
        f"{tmp_path}/one/images-*")) == len(corpus()) - 1


def test_bad_flags_are_refused_with_the_flag_named_before_any_work(tmp_path, capsys):
    pattern, _, _, _ = tfrecord_corpus(tmp_path / "in")
    output = f"--output_dir={tmp_path}/out"
    with pytest.raises(ValueError, match=r"^missing required flags: --input \(see --help\)$"):
        reshard.run([output])
    with pytest.raises(SystemExit):  # argparse's usage line and error, as every job's
        reshard.run([f"--input={pattern}", output, "--num_shards=0"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: argument --num_shards: must be >= 1, got 0")
    with pytest.raises(ValueError, match=r"^--id_column applies to --input_format=parquet only"):
        reshard.run([f"--input={pattern}", output, "--id_column=id"])
    with pytest.raises(ValueError, match=rf"^--output_dir={tmp_path}/in holds input files "
                       rf"\({tmp_path}/in/a.tfrecord\); write the shards to another directory$"):
        reshard.run([f"--input={pattern}", f"--output_dir={tmp_path}/in"])
    with pytest.raises(ValueError, match=r"^unknown flags: --num_shard \(did you mean "
                       r"--num_shards\?\)"):
        reshard.run([f"--input={pattern}", output, "--num_shard=3"])
    assert not os.path.exists(tmp_path / "out")
    os.makedirs(tmp_path / "out")
    open(tmp_path / "out" / "images-00000-of-00001.tfrecord", "wb").close()
    with pytest.raises(ValueError, match=r"already holds 1 image shards; pass --overwrite"):
        reshard.run([f"--input={pattern}", output])


def test_help_documents_every_flag(capsys):
    assert reshard.run(["--help"]) is None
    shown = capsys.readouterr().out
    flags = {option for action in reshard._help_parser()._actions
             if action.help and action.dest != "help" for option in action.option_strings}
    assert set(flags) == {"--input", "--input_format", "--image_column", "--id_column",
                          "--output_dir", "--overwrite", "--num_shards", "--label_folders",
                          "--labels_csv"}
    assert all(flag in shown for flag in flags)


def labeled_folder(root) -> dict[bytes, bytes]:
    """Images in class folders under `root` (one a folder deeper), and one at the top level,
    outside any class; returns {id: bytes} of the classed ones."""
    images = corpus()[:12]
    classed = {}
    for i, im in enumerate(images):
        name = ("loose.png" if i == 0 else
                f"{('zebra', 'ant', 'cat')[i % 3]}/{'deep/' if i % 4 == 0 else ''}{i}.png")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(im.encoded)
        if i:
            classed[name.encode()] = im.encoded
    return classed


def labeled_records(output_dir: str) -> dict[bytes, tuple[bytes, int]]:
    records = [schema.parse_example(r) for path in sorted(
        glob.glob(f"{output_dir}/{reshard.IMAGES_PREFIX}-*")) for r in iter_records(path)]
    return {f[schema.IMAGE_ID][0]: (f[schema.IMAGE_ENCODED][0], f[schema.LABEL][0])
            for f in records}


def test_class_folders_become_labels_in_sorted_name_order(tmp_path, capsys):
    photos = tmp_path / "photos"
    classed = labeled_folder(photos)
    output_dir = str(tmp_path / "out")
    reshard.run([f"--input={photos}/**", "--input_format=images", "--label_folders",
                 f"--output_dir={output_dir}", "--num_shards=2", "--runner=DirectRunner"])
    names = ["ant", "cat", "zebra"]
    want = {image_id: (encoded, names.index(image_id.decode().split("/")[0]))
            for image_id, encoded in classed.items()}
    assert labeled_records(output_dir) == want
    summary = json.load(open(os.path.join(output_dir, reshard.SUMMARY_FILE)))
    assert summary["class_names"] == names
    assert summary["images_per_class"] == [sum(label == i for _, label in want.values())
                                           for i in range(3)] == [4, 4, 3]
    assert summary["failed"] == {"label": 1} and summary["images"] == 11
    letters = [schema.parse_example(r) for r in iter_records(
        os.path.join(output_dir, "dead_letters-00000-of-00001.tfrecord"))]
    assert [(f[schema.IMAGE_ID][0], f[schema.ERROR_STAGE][0]) for f in letters] == [
        (b"loose.png", b"label")]
    assert b"is not in a class folder (--label_folders)" in letters[0][schema.ERROR_MESSAGE][0]
    out = capsys.readouterr().out
    assert "3 classes: 0 ant (4), 1 cat (4), 2 zebra (3)" in out
    assert "train with --num_classes=3 --class_names=ant,cat,zebra" in out


def test_a_labels_csv_names_each_images_class(tmp_path):
    photos = tmp_path / "photos"
    classed = labeled_folder(photos)
    ids = sorted(classed)
    rows = ["path,label"] + [f"{image_id.decode()},{'dog' if i % 2 else 'bird'}"
                             for i, image_id in enumerate(ids[:-1])]  # the last one: no row
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    output_dir = str(tmp_path / "out")
    reshard.run([f"--input={photos}/**", "--input_format=images",
                 f"--labels_csv={tmp_path}/labels.csv", f"--output_dir={output_dir}",
                 "--num_shards=2", "--runner=DirectRunner"])
    assert labeled_records(output_dir) == {image_id: (classed[image_id], i % 2)
                                           for i, image_id in enumerate(ids[:-1])}
    summary = json.load(open(os.path.join(output_dir, reshard.SUMMARY_FILE)))
    assert summary["class_names"] == ["bird", "dog"]
    assert summary["failed"] == {"label": 2}  # the top-level file and the one without a row


@pytest.mark.parametrize("flags, error", [
    (["--label_folders", "--input_format=tfrecord"],
     r"^--label_folders applies to --input_format=images only"),
    (["--label_folders", "--labels_csv=x.csv"], r"^--label_folders and --labels_csv: give one"),
])
def test_label_flags_are_checked_before_any_work(tmp_path, flags, error):
    pattern, _, _, _ = tfrecord_corpus(tmp_path / "in")
    with pytest.raises(ValueError, match=error):
        reshard.run([f"--input={pattern}", f"--output_dir={tmp_path}/out", *flags])
    (tmp_path / "bad.csv").write_text("path,label\na.png,cat\na.png,dog\n")
    with pytest.raises(ValueError, match=r"row 2: 'a.png' is labeled both 'cat' and 'dog'"):
        reshard.run([f"--input={pattern}", f"--output_dir={tmp_path}/out",
                     f"--labels_csv={tmp_path}/bad.csv"])
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(corpus()[0].encoded)
    with pytest.raises(ValueError, match=r"^--label_folders: no file of --input="):
        reshard.run([f"--input={tmp_path}/flat/*", "--input_format=images", "--label_folders",
                     f"--output_dir={tmp_path}/out"])
    assert not os.path.exists(tmp_path / "out")
