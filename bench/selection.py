"""Selection from the predictions table: Beam (DirectRunner) vs plain numpy, and its memory.

    python -m bench.selection [--sizes 100000 300000 1000000] [--rss_sizes 1000000 10000000]

Writes predictions tables of n rows over 1,000 classes with Zipf sizes (top-10 probabilities,
20% of confidences exactly 1.0, ids `img-<i>`), then selects K = n / classes / 2 per class with
a threshold of 0.3, three ways, side by side in one run:

* **beam**: `BalancePerClass` + the per-file copy assignment of the writing pass
  (`select.file_copies`) on DirectRunner, as `rebalance` runs it before reading any image;
* **numpy, hash all**: read the same Parquet files with pyarrow, hash every id, one lexsort;
* **numpy, hash ties**: the same, sorting on confidence first and hashing only ids whose
  confidence equals their class's boundary confidence (what the radix select also avoids).

Each checks that every class gets exactly its quota and that the three agree row for row. Then,
for each of `--rss_sizes`, one Beam selection runs alone in a fresh process and its peak RSS is
printed (the process imports no TensorFlow).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from ns_data import balance
from ns_data import predictions as table
from ns_data.select import BalancePerClass, file_copies

CLASSES = 1000
TOPK = 10
MIN_CONFIDENCE = 0.3
SEED = 0


def write_tables(directory: str, n: int, rows_per_file: int, seed: int = 0) -> list[str]:
    """n rows of Zipf-sized classes in files of `rows_per_file` rows; returns the paths."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, CLASSES + 1) ** 1.1
    metadata = table.TableMetadata(input="bench", input_format="tfrecord", num_classes=CLASSES,
                                   topk=TOPK)
    paths = []
    for start in range(0, n, rows_per_file):
        m = min(rows_per_file, n - start)
        labels = rng.choice(CLASSES, size=m, p=weights / weights.sum()).astype(np.int32)
        conf = rng.beta(5, 1.5, size=m).astype(np.float32)
        conf[rng.random(m) < 0.2] = 1.0
        others = rng.integers(0, CLASSES, size=(m, TOPK)).astype(np.int32)
        others[:, 0] = labels
        rest = (1 - conf)[:, None] * rng.dirichlet(np.ones(TOPK - 1), size=m)
        probs = np.concatenate([conf[:, None], -np.sort(-rest, axis=1)], 1).astype(np.float32)
        offsets = pa.array(np.arange(0, m * TOPK + 1, TOPK, dtype=np.int32))
        source = f"bench-{start // rows_per_file:05d}.tfrecord"
        rows = pa.table([
            pa.array([b"img-%d" % i for i in range(start, start + m)], pa.binary()),
            pa.array([source] * m, pa.string()),
            pa.array(np.arange(m, dtype=np.int64)),
            pa.array(labels),
            pa.array(conf),
            pa.ListArray.from_arrays(offsets, pa.array(others.ravel())),
            pa.ListArray.from_arrays(offsets, pa.array(probs.ravel())),
            pa.nulls(m, pa.string()),
            pa.nulls(m, pa.string()),
            pa.nulls(m, pa.uint64()),
        ], schema=table.SCHEMA)
        path = os.path.join(directory, f"predictions-{start // rows_per_file:05d}.parquet")
        table.write_arrow_table(path, rows, metadata)
        paths.append(path)
    return paths


def beam_select(paths: list[str], k: int, collect: bool = True) -> np.ndarray | None:
    """Copies per row (files concatenated) through the pipeline's own transforms.

    Each file's copies are saved by the pipeline; `collect` loads them all back for checking
    (n int64s, so the memory measurement does not).
    """
    with tempfile.TemporaryDirectory() as out:

        def save(path, plans, tie_starts):
            rows = table.read_table_file(path, [table.ID, table.LABEL, table.CONFIDENCE])
            copies = file_copies(rows, path, plans, tie_starts, MIN_CONFIDENCE, SEED)
            np.save(os.path.join(out, os.path.basename(path) + ".npy"), copies)

        with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            files = p | beam.Create(paths)
            selection = files | BalancePerClass(MIN_CONFIDENCE, k, seed=SEED)
            _ = files | beam.Map(save, beam.pvalue.AsDict(selection.plans),
                                 beam.pvalue.AsDict(selection.tie_starts))
        if not collect:
            return None
        return np.concatenate([np.load(os.path.join(out, os.path.basename(p) + ".npy"))
                               for p in paths])


def _read(paths: list[str]):
    t = pa.concat_tables(table.read_table_file(p, [table.ID, table.LABEL, table.CONFIDENCE])
                         for p in paths)
    return (t.column(table.ID), t.column(table.LABEL).to_numpy().astype(np.int64),
            t.column(table.CONFIDENCE).to_numpy())


def _copies_from_ranks(labels, order, k) -> np.ndarray:
    """Copies per row given rows of eligible classes sorted by (label, priority desc)."""
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    n = np.repeat(sizes, sizes)
    c = np.where(n > k, (rank < k).astype(np.int64), k // n + (rank < k % n))
    copies = np.zeros(len(labels), dtype=np.int64)
    copies[order] = c
    return copies


def numpy_hash_all(paths: list[str], k: int) -> np.ndarray:
    ids, labels, conf = _read(paths)
    eligible = np.flatnonzero(conf >= np.float32(MIN_CONFIDENCE))
    hashes = balance.id_hashes(ids.take(eligible).to_pylist(), SEED)
    order = np.lexsort((np.iinfo(np.int64).max - hashes.astype(np.int64), -conf[eligible],
                        labels[eligible]))
    copies = np.zeros(len(labels), dtype=np.int64)
    copies[eligible] = _copies_from_ranks(labels[eligible], order, k)
    return copies


def numpy_hash_ties(paths: list[str], k: int) -> np.ndarray:
    ids, labels, conf = _read(paths)
    eligible = np.flatnonzero(conf >= np.float32(MIN_CONFIDENCE))
    lab, cf = labels[eligible], conf[eligible]
    order = np.lexsort((-cf, lab))
    sorted_lab, sorted_conf = lab[order], cf[order]
    starts = np.flatnonzero(np.r_[True, sorted_lab[1:] != sorted_lab[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    need = np.where(sizes > k, k, k % sizes)  # how many of each class rank above the rest
    boundary = np.full(len(order), np.nan, dtype=np.float32)
    has = need > 0
    boundary_conf = np.where(has, sorted_conf[starts + np.maximum(need - 1, 0)], np.nan)
    boundary[:] = np.repeat(boundary_conf, sizes)
    tied = np.flatnonzero(sorted_conf == boundary)  # rows whose rank the hash decides
    key = np.zeros(len(order), dtype=np.int64)
    key[tied] = balance.id_hashes(ids.take(eligible[order[tied]]).to_pylist(), SEED).astype(
        np.int64)
    final = np.lexsort((np.iinfo(np.int64).max - key, -sorted_conf, sorted_lab))
    copies = np.zeros(len(labels), dtype=np.int64)
    copies[eligible] = _copies_from_ranks(lab, order[final], k)
    return copies


def check(copies: np.ndarray, labels: np.ndarray, conf: np.ndarray, k: int) -> None:
    eligible = conf >= np.float32(MIN_CONFIDENCE)
    n = np.bincount(labels[eligible], minlength=CLASSES)
    written = np.bincount(labels, weights=copies, minlength=CLASSES).astype(np.int64)
    assert np.array_equal(written, np.where(n > 0, k, 0)), "a class missed its quota"


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def compare(sizes: list[int], rows_per_file: int) -> None:
    print(f"{'n':>9} {'K':>5} {'beam s':>7} {'beam rows/s':>12} {'numpy all s':>12} "
          f"{'numpy ties s':>13} {'beam/all':>9} {'beam/ties':>10}")
    for n in sizes:
        k = max(1, n // CLASSES // 2)
        with tempfile.TemporaryDirectory() as d:
            paths = write_tables(d, n, rows_per_file)
            _, labels, conf = _read(paths)
            ours, secs = timed(beam_select, paths, k)
            plain, secs_all = timed(numpy_hash_all, paths, k)
            smart, secs_ties = timed(numpy_hash_ties, paths, k)
            for copies in (ours, plain, smart):
                check(copies, labels, conf, k)
            assert np.array_equal(ours, plain) and np.array_equal(ours, smart), "disagree"
        print(f"{n:>9} {k:>5} {secs:>7.2f} {n / secs:>12,.0f} {secs_all:>12.2f} "
              f"{secs_ties:>13.2f} {secs_all / secs:>9.2f}x {secs_ties / secs:>9.2f}x",
              flush=True)


def peak_rss_kib() -> int:
    """This process's peak resident memory since exec (VmHWM; getrusage's ru_maxrss would
    include the memory of the parent it was forked from)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_rss(sizes: list[int], rows_per_file: int) -> None:
    print(f"\n{'n':>9} {'files':>6} {'beam s':>7} {'peak RSS MiB':>13} {'vs first':>9}")
    first = None
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            paths = write_tables(d, n, rows_per_file)
            out = subprocess.run([sys.executable, "-m", "bench.selection", "--_child", str(n),
                                  *paths], capture_output=True, text=True, check=True).stdout
        secs, rss = (float(x) for x in out.split()[-2:])
        first = first or rss
        print(f"{n:>9} {len(paths):>6} {secs:>7.1f} {rss / 1024:>13.0f} {rss / first:>8.2f}x",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 300_000, 1_000_000],
                        help="Table sizes (predictions) to time against numpy.")
    parser.add_argument("--rss_sizes", type=int, nargs="*", default=[1_000_000, 10_000_000],
                        help="Table sizes whose peak RSS is measured, each in a fresh process.")
    parser.add_argument("--rows_per_file", type=int, default=100_000,
                        help="Rows per table file (one per input TFRecord file in a real run).")
    parser.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args, paths = parser.parse_known_args()
    if args._child:
        _, secs = timed(beam_select, paths, max(1, args._child // CLASSES // 2), False)
        print(secs, peak_rss_kib())
        return
    if args.sizes:
        compare(args.sizes, args.rows_per_file)
    if args.rss_sizes:
        peak_rss(args.rss_sizes, args.rows_per_file)


if __name__ == "__main__":
    main()
