"""Completion markers: an output directory is finished only when its `_SUCCESS` file says so.

A job writes its shards, dead letters and `stats.json` first and the marker last, once the
counts reconcile and the share of failed images is within `--max_failure_fraction`; `--overwrite`
removes the old marker before anything else. A directory without a marker is a run that was
interrupted, crashed or failed its failure check, and every reader in the project
(`rebalance`, `ns_train`, `iterate`) refuses it unless told otherwise. The marker is JSON: the
job, its settings, its totals and the size of each pseudo-label shard, with no timestamp, so
reruns stay byte-identical.

A predictions table is marked by the pipeline itself (`ns_data.pipeline`) as soon as every file
of it is written, before the writing pass: a run refused by `--max_copies` there, or one whose
writing pass fails, keeps its table for `rebalance` without running the teacher again.

The trainer counts a finished run's pseudo-labels from its `stats.json` instead of reading every
shard (`recorded_records`), when its glob is exactly that run's shards and each still has the
size the marker recorded.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from ns_data import globs, stats
from ns_data.lazy import tf
from ns_data.write import PSEUDO_LABEL_PREFIX, shard_path, shard_pattern

SUCCESS_FILE = "_SUCCESS"
# The marker's key for {shard file name: bytes} of the run's pseudo-label shards.
SHARD_BYTES = "shard_bytes"
DEFAULT_MAX_FAILURE_FRACTION = 0.01
# The paper duplicates a small class's images a handful of times; a hundred copies of one image
# is a forgotten --images_per_class (130,000 by default) far more often than a choice.
DEFAULT_MAX_COPIES = 100


class IncompleteOutputError(ValueError):
    """A directory has no completion marker."""


class UnrecordedShardsError(ValueError):
    """Files whose record counts a finished run's stats.json does not vouch for."""


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


def check_copies(classes: Iterable[Mapping[str, Any]], max_copies: int, output_dir: str,
                 table: str) -> None:
    """Raises `TooManyCopiesError` when a class would write one image more than `max_copies`
    times (0: no limit).

    Args:
      classes: per class its "class", "kept" (images), "written" (records) and "max_copies"
        (the most records of one image), as stats.json's class rows have them.
      max_copies: the limit, `--max_copies`.
      output_dir: the run's output directory, for the message.
      table: the predictions table the selection was made from (`--predictions`), for the
        message: it is complete, so `rebalance` can select again from it.
    """
    worst = max(classes, key=lambda c: (c["max_copies"], -c["class"]), default=None)
    if max_copies and worst and worst["max_copies"] > max_copies:
        raise TooManyCopiesError(
            f"class {worst['class']} would be {worst['written']} records from "
            f"{worst['kept']} image{'' if worst['kept'] == 1 else 's'}, up to "
            f"{worst['max_copies']} copies of one image, more "
            f"than --max_copies={max_copies}: no shard was written to {output_dir}. Lower "
            "--images_per_class or --min_confidence, pass --no_duplicate, or --max_copies=0 "
            f"for no limit. The predictions table {table} is complete: `python -m "
            f"beam_jobs.rebalance --predictions={table}` with those flags selects again "
            "without running the teacher.")


def finish_run(output_dir: str, job: str, max_failure_fraction: float) -> dict[str, Any]:
    """After a job's pipeline: marks the output complete, unless it read nothing
    (`NothingReadError`) or too many images failed (`TooManyFailuresError`). Returns the run's
    stats.

    (`--max_copies` is checked earlier, in the pipeline, before any shard is written.)
    """
    run_stats = stats.read_stats(output_dir)
    stats.check_reconciles(run_stats)
    check_read(run_stats, output_dir)
    check_failures(run_stats, max_failure_fraction, output_dir)
    write_marker(output_dir, {"job": job, "config": run_stats["config"],
                              "totals": run_stats["totals"],
                              SHARD_BYTES: shard_bytes(output_dir)})
    return run_stats


def shard_bytes(output_dir: str) -> dict[str, int]:
    """{file name: size} of the pseudo-label shards in `output_dir`, from one listing."""
    matched = FileSystems.match([shard_pattern(output_dir, PSEUDO_LABEL_PREFIX)])[0]
    return {posixpath.basename(m.path): m.size_in_bytes
            for m in sorted(matched.metadata_list, key=lambda m: m.path)}


def read_marker(directory: str) -> dict[str, Any]:
    with tf.io.gfile.GFile(marker_path(directory)) as f:
        return json.load(f)


def recorded_records(directory: str, paths: Sequence[str]) -> dict[str, int]:
    """Records per file of `paths`, from the stats.json of the finished run in `directory`.

    Costs two small reads and one listing, where counting reads every byte of every shard.

    Raises:
      UnrecordedShardsError: saying why the run does not vouch for `paths` (the caller then
        counts by reading them): no marker or no stats.json; a run written before stats.json
        held records per shard and the marker their sizes; `paths` not exactly the run's
        pseudo-label shards (a subset, or other files too); a stats.json whose written total is
        not the marker's (from another run, or edited); or a shard whose size is no longer the
        one the marker recorded (truncated, replaced or appended to since the run finished).
    """
    if not is_complete(directory):
        raise UnrecordedShardsError(f"{directory} has no {SUCCESS_FILE} marker")
    if not tf.io.gfile.exists(posixpath.join(directory, stats.STATS_FILE)):
        raise UnrecordedShardsError(f"{directory} has no {stats.STATS_FILE}")
    marker = read_marker(directory)
    run_stats = stats.read_stats(directory)
    counts = run_stats.get("shards", {}).get("records")
    sizes = marker.get(SHARD_BYTES)
    if counts is None or sizes is None:
        raise UnrecordedShardsError(f"the run in {directory} did not record its shards' records "
                                    f"and sizes (it predates that)")
    expected = {shard_path(directory, PSEUDO_LABEL_PREFIX, shard, len(counts)): records
                for shard, records in enumerate(counts)}
    if set(paths) != set(expected):
        raise UnrecordedShardsError(f"the glob matches {len(paths)} files in {directory}, not "
                                    f"exactly its run's {len(expected)} pseudo-label shards")
    written = {"stats.json": run_stats["totals"]["written"],
               SUCCESS_FILE: marker.get("totals", {}).get("written")}
    if set(written.values()) != {sum(counts)}:
        raise UnrecordedShardsError(f"{directory}: the records written per shard sum to "
                                    f"{sum(counts)}, the totals say {written}")
    now = shard_bytes(directory)
    changed = sorted(name for name in map(posixpath.basename, paths)
                     if now.get(name) != sizes.get(name))
    if changed:
        raise UnrecordedShardsError(f"{directory}: {len(changed)} shard(s) changed size since the "
                                    f"run finished, e.g. {changed[0]}")
    return {path: expected[path] for path in paths}


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
    return parents or [globs.glob_root(pattern)]


def require_complete_inputs(pattern: str, what: str, override_flag: str) -> None:
    """Refuses an input glob unless every directory it reads holds a completion marker
    (`require_complete` on each of `directories_of(pattern)`)."""
    for directory in directories_of(pattern):
        require_complete(directory, what, override_flag)
