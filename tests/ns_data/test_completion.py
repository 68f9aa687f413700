"""Tests for `ns_data/completion.py`: markers and the failure check."""
from __future__ import annotations

import pytest

from ns_data import completion


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


def test_copies_above_the_limit_fail_and_zero_means_no_limit():
    classes = {"classes": [{"class": 0, "kept": 40, "written": 100, "max_copies": 3},
                           {"class": 1, "kept": 2, "written": 100, "max_copies": 50}]}
    completion.check_copies(classes, 0, "out")
    completion.check_copies(classes, 50, "out")
    with pytest.raises(completion.TooManyCopiesError,
                       match="class 1 writes 100 records from 2 images, up to 50 copies of one "
                             "image, more than --max_copies=49"):
        completion.check_copies(classes, 49, "out")
    assert issubclass(completion.TooManyCopiesError, completion.RunCheckError)
