"""Tests for `ns_data/completion.py`: markers and the failure check."""
from __future__ import annotations

import json
import os

import pytest

from ns_data import completion, write
from tests import runs


def run_stats(read: int, **failed: int) -> dict:
    stages = {"damaged_file": 0, "parse": 0, "decode": 0, "inference": 0, "invalid_output": 0,
              **failed}
    return {"totals": {"read": read, "failed": stages, "failed_total": sum(stages.values())}}


def test_failures_up_to_the_fraction_pass_and_above_fail_with_counts_per_stage():
    completion.check_failures(run_stats(1000, decode=10), 0.01, "out")  # exactly 1%
    completion.check_failures(run_stats(0), 0.0, "out")  # nothing read, nothing failed
    with pytest.raises(completion.TooManyFailuresError) as e:
        completion.check_failures(run_stats(1000, decode=10, parse=1), 0.01, "out")
    assert str(e.value).startswith(
        "11 of 1000 images failed (1.1%; parse 1, decode 10), "
        "more than --max_failure_fraction=0.01: the output in out is not marked complete.")
    with pytest.raises(completion.TooManyFailuresError, match="1 of 5 images failed"):
        completion.check_failures(run_stats(5, inference=1), 0.0, "out")


def test_marker_is_written_last_with_the_same_bytes_and_removed(tmp_path):
    assert not completion.is_complete(str(tmp_path))
    path = completion.write_marker(str(tmp_path), {"job": "j", "totals": {"b": 2, "a": 1}})
    first = open(path, "rb").read()
    assert completion.is_complete(str(tmp_path)) and path == str(tmp_path / "_SUCCESS")
    assert completion.write_marker(str(tmp_path), {"totals": {"a": 1, "b": 2}, "job": "j"}) == path
    assert open(path, "rb").read() == first  # sorted keys, no timestamp
    assert b'"complete": true' in first
    assert not (tmp_path / "_SUCCESS.incomplete").exists()
    completion.remove_marker(str(tmp_path))
    completion.remove_marker(str(tmp_path))  # nothing to remove is fine
    assert not completion.is_complete(str(tmp_path))


def test_require_complete_names_the_flag_and_the_override(tmp_path):
    with pytest.raises(completion.IncompleteOutputError,
                       match=f"^--unlabeled: {tmp_path} has no _SUCCESS marker.*pass "
                             "--allow_incomplete to read what is there$"):
        completion.require_complete(str(tmp_path), "--unlabeled", "--allow_incomplete")
    completion.write_marker(str(tmp_path), {})
    completion.require_complete(str(tmp_path), "--unlabeled", "--allow_incomplete")


@pytest.mark.parametrize("pattern, directory", [
    ("out/pl/pseudo_labels-*", "out/pl"),
    ("out/pl/pseudo_labels-0000[0-3]-of-00004.tfrecord", "out/pl"),
    ("out/pl/one.tfrecord", "out/pl"),
])
def test_the_directory_of_a_glob_that_matches_nothing_is_its_parent(pattern, directory):
    assert completion.directories_of(pattern) == [directory]


def test_a_glob_over_several_runs_needs_every_run_complete(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "pseudo_labels-0.tfrecord").write_bytes(b"")
    pattern = f"{tmp_path}/*/pseudo_labels-*"
    assert completion.directories_of(pattern) == [f"{tmp_path}/a", f"{tmp_path}/b"]
    assert completion.directories_of(str(tmp_path / "a") + "/") == [f"{tmp_path}/a"]
    completion.write_marker(str(tmp_path / "a"), {})
    with pytest.raises(completion.IncompleteOutputError, match=f"--unlabeled: {tmp_path}/b has"):
        completion.require_complete_inputs(pattern, "--unlabeled", "--allow_incomplete")
    completion.write_marker(str(tmp_path / "b"), {})
    completion.require_complete_inputs(pattern, "--unlabeled", "--allow_incomplete")


def test_copies_above_the_limit_fail_naming_the_worst_class_and_zero_means_no_limit():
    classes = [{"class": 0, "kept": 40, "written": 100, "max_copies": 3},
               {"class": 1, "kept": 2, "written": 100, "max_copies": 50},
               {"class": 2, "kept": 2, "written": 100, "max_copies": 50}]
    completion.check_copies(classes, 0, "out", "out/predictions")
    completion.check_copies(classes, 50, "out", "out/predictions")
    completion.check_copies([], 1, "out", "out/predictions")  # nothing above the threshold
    with pytest.raises(completion.TooManyCopiesError) as e:
        completion.check_copies(classes, 49, "out", "t/predictions")
    message = str(e.value)
    assert message.startswith("class 1 would be 100 records from 2 images, up to 50 copies of "
                              "one image, more than --max_copies=49: no shard was written to out.")
    for fix in ("--images_per_class", "--min_confidence", "--no_duplicate", "--max_copies=0",
                "`python -m beam_jobs.rebalance --predictions=t/predictions`"):
        assert fix in message
    assert "\n" not in message
    with pytest.raises(completion.TooManyCopiesError, match="^class 0 would be 130000 records "
                                                           "from 1 image, up to 130000 copies"):
        completion.check_copies([{"class": 0, "kept": 1, "written": 130000,
                                  "max_copies": 130000}], 100, "out", "t")
    assert issubclass(completion.TooManyCopiesError, completion.RunCheckError)
    assert completion.DEFAULT_MAX_COPIES == 100


def placeholder_run(directory, records=(3, 0, 2)) -> list[str]:
    """A finished run whose shards hold 10 placeholder bytes per record: recorded_records reads
    their names and sizes, never their contents."""
    directory.mkdir()
    paths = [write.shard_path(str(directory), write.PSEUDO_LABEL_PREFIX, shard, len(records))
             for shard in range(len(records))]
    for path, n in zip(paths, records):
        with open(path, "wb") as f:
            f.write(b"r" * 10 * n)
    runs.finish_run(str(directory), records)
    return paths


def test_the_marker_records_each_shards_size_and_vouches_for_the_stats_counts(tmp_path):
    paths = placeholder_run(tmp_path / "run")
    marker = completion.read_marker(str(tmp_path / "run"))
    assert marker[completion.SHARD_BYTES] == {
        "pseudo_labels-00000-of-00003.tfrecord": 30, "pseudo_labels-00001-of-00003.tfrecord": 0,
        "pseudo_labels-00002-of-00003.tfrecord": 20}
    assert completion.recorded_records(str(tmp_path / "run"), paths) == dict(zip(paths, (3, 0, 2)))


def edit_json(path, edit) -> None:
    with open(path) as f:
        value = json.load(f)
    edit(value)
    with open(path, "w") as f:
        json.dump(value, f)


def one_more_record(run_stats) -> None:
    run_stats["shards"]["records"][0] += 1
    run_stats["totals"]["written"] += 1


@pytest.mark.parametrize("change, reason", [
    ("subset", r"the glob matches 2 files in .*/run, not exactly its run's 3 pseudo-label"),
    ("other file", r"the glob matches 4 files in .*/run, not exactly its run's 3"),
    ("no marker", r".*/run has no _SUCCESS marker"),
    ("no stats", r".*/run has no stats.json"),
    ("older run", r"the run in .*/run did not record its shards' records and sizes"),
    ("stats edited", r".*/run: the records written per shard sum to 6, the totals say "
                     r"\{'stats.json': 6, '_SUCCESS': 5\}"),
    ("appended to", r".*/run: 1 shard\(s\) changed size since the run finished, e.g. "
                    r"pseudo_labels-00002-of-00003.tfrecord"),
])
def test_a_run_does_not_vouch_for_files_it_did_not_write_as_they_are(tmp_path, change, reason):
    paths = placeholder_run(tmp_path / "run")
    directory = str(tmp_path / "run")
    if change == "subset":
        paths = paths[:2]
    elif change == "other file":
        paths.append(str(tmp_path / "run" / "dead_letters-00000-of-00001.tfrecord"))
    elif change == "no marker":
        completion.remove_marker(directory)
    elif change == "no stats":  # e.g. a directory marked complete by hand
        os.remove(os.path.join(directory, "stats.json"))
    elif change == "older run":
        edit_json(completion.marker_path(directory),
                  lambda marker: marker.pop(completion.SHARD_BYTES))
    elif change == "stats edited":  # its written total and per-shard records agree, not the marker
        edit_json(os.path.join(directory, "stats.json"), one_more_record)
    else:
        with open(paths[2], "ab") as f:
            f.write(b"more")
    with pytest.raises(completion.UnrecordedShardsError, match=f"^{reason}"):
        completion.recorded_records(directory, paths)
