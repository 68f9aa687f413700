"""label_and_balance on Parquet and WebDataset inputs: the same images under the same ids give
the same pseudo-labels as TFRecords; bad rows, members and files are dead letters."""
from __future__ import annotations

import glob
import os

import pytest

from beam_jobs import label_and_balance as job
from beam_jobs import rebalance
from ns_data import predictions, schema, stats
from tests import fakes
from tests.beam_jobs.test_label_and_balance import K, SEED, corpus, read_records, run_fake
from tests.beam_jobs.test_rebalance import output_files
from tests.ns_data.test_formats import corrupt_row_group, write_parquet


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


def test_parquet_gives_the_same_pseudo_labels_as_tfrecords(tmp_path):
    images = corpus()
    tfrecord, tfrecord_stats = run_fake(tmp_path, images, name="tfrecord")
    pattern = parquet_corpus(tmp_path / "pq", images)
    parquet, parquet_stats = run_fake(tmp_path, images, f"--input={pattern}",
                                      "--input_format=parquet", "--id_column=id",
                                      name="parquet")
    assert pseudo_labels(parquet) == pseudo_labels(tfrecord)
    assert len(pseudo_labels(parquet)) == 3 * K
    assert parquet_stats["classes"] == tfrecord_stats["classes"]
    assert output_files(parquet) == output_files(tfrecord)  # the shards, byte for byte
    assert parquet_stats["config"]["input_format"] == "parquet"


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
                                     "--label_type=hard")
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
