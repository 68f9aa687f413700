"""Completion markers: an output directory is finished only when its `_SUCCESS` file says so.

A job writes its shards, dead letters and `stats.json` first and the marker last, once the
counts reconcile and the share of failed images is within `--max_failure_fraction`; `--overwrite`
removes the old marker before anything else. A directory without a marker is a run that was
interrupted, crashed or failed its failure check, and every reader in the project
(`rebalance`, `ns_train`, `iterate`) refuses it unless told otherwise. The marker is JSON: the
job, its settings and its totals, with no timestamp, so reruns stay byte-identical.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from ns_data import read, stats

SUCCESS_FILE = "_SUCCESS"
DEFAULT_MAX_FAILURE_FRACTION = 0.01


class IncompleteOutputError(ValueError):
    """A directory has no completion marker."""


class RunCheckError(RuntimeError):
    """A run finished but fails a check of its counts: its output is not marked complete."""


class TooManyFailuresError(RunCheckError):
    """More images failed than `--max_failure_fraction` allows."""


class TooManyCopiesError(RunCheckError):
    """An image is written more times than `--max_copies` allows."""


class NothingReadError(RunCheckError):
    """The run read no image at all: its input is empty, so its output is no result."""


def marker_path(directory: str) -> str:
    return posixpath.join(directory.rstrip("/"), SUCCESS_FILE)


def check_failures(run_stats: Mapping[str, Any], max_fraction: float, where: str) -> None:
    """Raises `TooManyFailuresError` when more than `max_fraction` of the images read failed.

    The message gives the counts per stage and where the dead letters are.
    """
    totals = run_stats["totals"]
    read, failed = totals["read"], totals["failed_total"]
    if read and failed / read > max_fraction:
        stages = ", ".join(f"{stage} {n}" for stage, n in totals["failed"].items() if n)
        raise TooManyFailuresError(
            f"{failed} of {read} images failed ({failed / read:.1%}; {stages}), more than "
            f"--max_failure_fraction={max_fraction:g}: the output in {where} is not marked "
            f"complete. The dead letters (dead_letters-*.tfrecord) say why each image failed.")


def check_read(run_stats: Mapping[str, Any], where: str) -> None:
    """Raises `NothingReadError` when the run read no image (an empty file or table): an empty
    output marked complete would pass for a finished round with nothing to label."""
    if not run_stats["totals"]["read"]:
        raise NothingReadError(
            f"no image was read: the input holds no records, so the output in {where} is not "
            "marked complete. Check --input (or --predictions).")


def check_copies(run_stats: Mapping[str, Any], max_copies: int, where: str) -> None:
    """Raises `TooManyCopiesError` when a class writes one image more than `max_copies` times
    (0: no limit)."""
    worst = max(run_stats["classes"], key=lambda c: c.get("max_copies", 0), default=None)
    if max_copies and worst and worst["max_copies"] > max_copies:
        raise TooManyCopiesError(
            f"class {worst['class']} writes {worst['written']} records from {worst['kept']} "
            f"images, up to {worst['max_copies']} copies of one image, more than "
            f"--max_copies={max_copies}: the output in {where} is not marked complete. Lower "
            "--images_per_class or --min_confidence, or pass --no_duplicate.")


def finish_run(output_dir: str, job: str, max_failure_fraction: float, max_copies: int = 0,
               table_dir: str | None = None) -> dict[str, Any]:
    """After a job's pipeline: marks the table (when the run wrote one) and then the output
    complete, unless it read nothing (`NothingReadError`), too many images failed
    (`TooManyFailuresError`) or one image is written more than `max_copies` times
    (`TooManyCopiesError`). Returns the run's stats.
    """
    run_stats = stats.read_stats(output_dir)
    stats.check_reconciles(run_stats)
    summary = {"job": job, "config": run_stats["config"], "totals": run_stats["totals"]}
    check_read(run_stats, output_dir)
    if table_dir:
        write_marker(table_dir, summary)
    check_failures(run_stats, max_failure_fraction, output_dir)
    check_copies(run_stats, max_copies, output_dir)
    write_marker(output_dir, summary)
    return run_stats


def write_marker(directory: str, contents: Mapping[str, Any]) -> str:
    """Writes `directory/_SUCCESS` (temp name, then renamed); returns its path."""
    path = marker_path(directory)
    temp = path + ".incomplete"
    with tf.io.gfile.GFile(temp, "w") as f:
        json.dump({"complete": True, **contents}, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(temp, path, overwrite=True)
    return path


def remove_marker(directory: str) -> None:
    path = marker_path(directory)
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def is_complete(directory: str) -> bool:
    return tf.io.gfile.exists(marker_path(directory))


def require_complete(directory: str, what: str, override_flag: str) -> None:
    """Refuses `directory` unless it holds a completion marker.

    Args:
      directory: the directory a reader is about to read.
      what: what the reader reads there, for the message (e.g. "--unlabeled").
      override_flag: the reader's flag that reads it anyway.
    """
    if not is_complete(directory):
        raise IncompleteOutputError(
            f"{what}: {directory} has no {SUCCESS_FILE} marker, so the run that wrote it did not "
            f"finish (interrupted, failed, or over its --max_failure_fraction); rerun it, or "
            f"pass {override_flag} to read what is there")


def directories_of(pattern: str) -> list[str]:
    """The directories a reader of `pattern` reads from: a directory given as itself, else the
    distinct parents of the files the glob matches (a glob may span several runs, e.g.
    `out-*/pseudo_labels-*`), or the glob's parent up to its first wildcard when it matches
    nothing."""
    if tf.io.gfile.isdir(pattern):
        return [pattern.rstrip("/") or "/"]
    parents = sorted({posixpath.dirname(path) for path in tf.io.gfile.glob(pattern)})
    return parents or [read.glob_root(pattern)]


def require_complete_inputs(pattern: str, what: str, override_flag: str) -> None:
    """Refuses an input glob unless every directory it reads holds a completion marker
    (`require_complete` on each of `directories_of(pattern)`)."""
    for directory in directories_of(pattern):
        require_complete(directory, what, override_flag)
