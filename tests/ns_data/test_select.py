"""BalancePerClass in Beam, every pass of it, against a brute-force sort of the same table.

Tables are written as real Parquet files (several per run) with skewed classes, few distinct
confidences, saturated 1.0s and the same image (id and confidence) in several files, so the radix
select refines several digits, collects, and resolves ties on the full key across files. A small
`collect_limit` forces the deep passes.
"""
from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from ns_data import balance
from ns_data import predictions as table
from ns_data.records import Prediction
from ns_data.select import BalancePerClass, CountPredictions, TableCounts, file_copies

NUM_CLASSES = 5
SEED = 11
MIN_CONFIDENCE = 0.3
METADATA = table.TableMetadata(input="unused", input_format="tfrecord", num_classes=NUM_CLASSES,
                               topk=2)


def make_rows(rng: np.random.Generator, n_files: int) -> list[list[Prediction]]:
    """Skewed class sizes; confidences from a few values (many exactly 1.0); repeated images."""
    sizes = {0: 900, 1: 120, 2: 25, 3: 3}  # class 4 only below the threshold
    values = np.float32([0.25, 0.31, 0.5, 0.75, 0.9, 0.99, 1.0, 1.0, 1.0])
    rows = [[] for _ in range(n_files)]
    count = 0
    for label, size in [*sizes.items(), (4, 10)]:
        for i in range(size):
            conf = np.float32(0.2) if label == 4 else values[rng.integers(len(values))]
            image_id = b"img-%d-%d" % (label, i % (100 if label == 0 else size))
            if label != 0 and rng.random() < 0.3:
                conf = values[-1]  # the most confident value, shared with many
            f = int(rng.integers(n_files))
            classes = np.array([label, (label + 1) % NUM_CLASSES], np.int32)
            probs = np.array([conf, 1 - conf], np.float32)
            rows[f].append(Prediction(f"src-{f}", count, image_id, classes, probs))
            count += 1
    rows[0].append(Prediction("src-0", count, b"bad", stage="decode", message="broken"))
    return rows


def oracle(files: dict[str, list[Prediction]], k: int, duplicate: bool) -> dict:
    """{(file, row): copies} by sorting each class on (key desc, file, row)."""
    by_class = collections.defaultdict(list)
    for path, preds in files.items():
        for row, p in enumerate(sorted(preds, key=lambda p: (p.source, p.index))):
            if p.ok and p.probs[0] >= np.float32(MIN_CONFIDENCE):
                key = balance.priority_key(p.probs[0], p.image_id, SEED)
                by_class[int(p.classes[0])].append((-key, path, row))
    copies = {}
    for members in by_class.values():
        members.sort()
        n = len(members)
        for rank, (_, path, row) in enumerate(members):
            if n > k:
                copies[path, row] = int(rank < k)
            elif duplicate:
                copies[path, row] = k // n + int(rank < k % n)
            else:
                copies[path, row] = 1
    return copies


def _copies_of(path, plans, tie_starts):
    rows = table.read_table_file(path)
    copies = file_copies(rows, path, plans, tie_starts, MIN_CONFIDENCE, SEED)
    return [((path, row), int(c)) for row, c in enumerate(copies) if c]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    files = {}
    for i, preds in enumerate(make_rows(np.random.default_rng(5), n_files=4)):
        path = str(root / f"predictions-{i}.parquet")
        table.write_table_file(path, preds, METADATA)
        files[path] = preds
    return files


CASES = [(50, True, 1), (50, True, 7), (50, True, 100_000), (300, True, 3), (10, False, 1),
         (1, True, 2), (1000, True, 5)]


@pytest.mark.slow
def test_every_pass_matches_brute_force(tables):
    """Each case runs the six passes with its own K and collect limit, in one pipeline."""
    paths = sorted(tables)
    with BeamTestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        files = p | beam.Create(paths)
        for k, duplicate, limit in CASES:
            name = f"{k}-{duplicate}-{limit}"
            selection = files | f"Balance{name}" >> BalancePerClass(
                MIN_CONFIDENCE, k, duplicate=duplicate, seed=SEED, collect_limit=limit)
            copies = files | f"Copies{name}" >> beam.FlatMap(
                _copies_of, beam.pvalue.AsDict(selection.plans),
                beam.pvalue.AsDict(selection.tie_starts))
            expected = [(key, c) for key, c in oracle(tables, k, duplicate).items() if c]
            assert_that(copies, equal_to(expected), label=f"Check{name}")
            plans = selection.plans | f"Quota{name}" >> beam.MapTuple(
                lambda label, plan: (label, plan.quota.written))
            written = collections.Counter()
            for (path, row), c in oracle(tables, k, duplicate).items():
                label = int(sorted(tables[path], key=lambda q: q.index)[row].classes[0])
                written[label] += c
            assert_that(plans, equal_to(list(written.items())), label=f"Written{name}")


def test_cases_cover_every_path(tables):
    """The cases really collect, refine deep, and split a full-key tie across files."""
    keys = collections.defaultdict(list)
    for path, preds in tables.items():
        for p in preds:
            if p.ok and p.probs[0] >= np.float32(MIN_CONFIDENCE):
                keys[int(p.classes[0])].append(
                    (balance.priority_key(p.probs[0], p.image_id, SEED), path))
    tied_across_files = deepest = 0
    for k, duplicate, limit in CASES:
        for members in keys.values():
            quota = balance.plan_quota(len(members), k, duplicate)
            cut = balance.select_cut([key for key, _ in members], quota.extra, limit)
            deepest = max(deepest, cut.bits)
            if cut.take_equal:
                files = {path for key, path in members if key == cut.threshold}
                tied_across_files += len(files) > 1
    assert tied_across_files >= 2
    assert deepest == balance.KEY_BITS


def test_count_predictions(tables):
    with BeamTestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        counts = p | beam.Create(sorted(tables)) | CountPredictions()
        preds = [q for rows in tables.values() for q in rows]
        scored = collections.Counter(int(q.classes[0]) for q in preds if q.ok)
        assert_that(counts, equal_to([TableCounts(len(preds), {"decode": 1}, dict(scored))]))
