"""BalancePerClass and CountPredictions: selection from the predictions table, never from images.

Every step here reads predictions table files (`predictions.py`) and moves only small values: a
pass reads a file's `label` and `confidence` columns (and ids, for the few rows whose hash it
needs) and emits per-class digit histograms, which Beam combines per class. The per-class
thresholds come from a radix select over the 96-bit priority keys of `balance.py`: one histogram
per 16-bit digit, then one exact pass over a bounded boundary bucket. No step groups images by
class, and no worker holds more than one class's histogram or bounded bucket.

A Beam graph is static, so all `balance.MAX_PASSES` passes are in it; a pass with no class left
to refine returns before reading a file, so a select that finished early costs one cheap stage
per remaining pass (~0.1 s each on DirectRunner) instead of another read of the table. Six
fixed passes also let one class with heavily tied keys take the worst case while the others are
long done.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from ns_data import balance
from ns_data import predictions as table
from ns_data.balance import ClassPlan, Cut, Quota

_COUNT_ROWS = "rows"
_FAILED = "failed"
_SCORED = "scored"


@dataclasses.dataclass
class TableRows:
    """The selection columns of one predictions table file, for the rows that take part.

    Attributes:
      path: the table file.
      labels: each eligible row's class (int64).
      hi: each eligible row's confidence bits (uint64).
      rows: each eligible row's position in the file.
      seed: salts the id hashes (`hashes`).
    """

    path: str
    labels: np.ndarray
    hi: np.ndarray
    rows: np.ndarray
    seed: int
    _ids: Any = None

    @classmethod
    def read(cls, path: str, min_confidence: float, seed: int) -> TableRows:
        """Rows that scored (no failure) with confidence >= `min_confidence` (in float32)."""
        columns = table.read_table_file(path, [table.LABEL, table.CONFIDENCE])
        labels = columns.column(table.LABEL)
        ok = labels.is_valid().to_numpy(zero_copy_only=False)
        confidence = columns.column(table.CONFIDENCE).fill_null(0.0).to_numpy().astype(np.float32)
        eligible = ok & (confidence >= np.float32(min_confidence))
        rows = np.flatnonzero(eligible)
        return cls(path, labels.fill_null(-1).to_numpy().astype(np.int64)[rows],
                   balance.confidence_bits(confidence[rows]), rows, seed)

    def hashes(self, positions: np.ndarray) -> np.ndarray:
        """Id hashes of the eligible rows at `positions` (reads the id column once)."""
        if self._ids is None:
            self._ids = table.read_table_file(self.path, [table.ID]).column(table.ID)
        ids = self._ids.take(self.rows[positions]).to_pylist()
        return balance.id_hashes(ids, self.seed)


@dataclasses.dataclass
class Partial:
    """One pass's findings for one class: a digit histogram, or the collected bucket keys."""

    digits: np.ndarray
    counts: np.ndarray
    lowest: np.ndarray
    keys_hi: np.ndarray
    keys_lo: np.ndarray

    @classmethod
    def histogram(cls, digits, counts, lowest) -> Partial:
        empty = np.zeros(0, dtype=np.uint64)
        return cls(digits, counts, lowest, empty, empty)

    @classmethod
    def keys(cls, hi, lo) -> Partial:
        empty = np.zeros(0, dtype=np.uint64)
        return cls(empty, np.zeros(0, dtype=np.int64), empty, hi, lo)

    @classmethod
    def merge(cls, parts: Iterable[Partial]) -> Partial:
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        cat = [np.concatenate([getattr(p, f.name) for p in parts])
               for f in dataclasses.fields(cls)]
        return cls(*balance.reduce_histogram(*cat[:3]), cat[3], cat[4])

    def refine(self, cut: Cut, collect_limit: int) -> Cut:
        """`balance.refine` with this histogram (digits are sorted ascending)."""
        return balance.refine_arrays(cut, self.digits[::-1], self.counts[::-1],
                                     self.lowest[::-1], collect_limit)

    def as_keys(self) -> list[int]:
        return [(int(h) << 64) | int(lo) for h, lo in zip(self.keys_hi, self.keys_lo)]


def _split_by_label(codes, counts, lowest):
    """Histograms coded (label << 16 | digit) → (label, Partial) per label."""
    codes, counts, lowest = balance.reduce_histogram(codes, counts, lowest)
    if not len(codes):
        return
    labels = codes >> np.uint64(balance.DIGIT_BITS)
    bounds = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1], True])
    for start, end in zip(bounds[:-1], bounds[1:]):
        yield int(labels[start]), Partial.histogram(
            codes[start:end] & np.uint64(balance.DIGIT_MASK), counts[start:end],
            lowest[start:end])


def _coded(labels: np.ndarray, digits: np.ndarray) -> np.ndarray:
    return (labels.astype(np.uint64) << np.uint64(balance.DIGIT_BITS)) | digits


class _RadixPass(beam.DoFn):
    """Table file → (label, Partial) for every class still unresolved after the last pass."""

    def __init__(self, min_confidence: float, seed: int):
        self._min_confidence = min_confidence
        self._seed = seed

    def process(self, path: str, cuts: Mapping[int, tuple[Quota, Cut]] | None = None):
        if cuts is None:
            # The first pass: every class, first digit (the top 16 bits of the confidence, a
            # few hundred values above any threshold), so one histogram of (class, digit) for
            # all classes is small; it goes out as one element per file, not one per class.
            rows = TableRows.read(path, self._min_confidence, self._seed)
            digits = balance.digits_of(rows.hi, None, 0)
            return [(None, Partial.histogram(*balance.reduce_histogram(
                _coded(rows.labels, digits), np.ones(len(digits), dtype=np.int64), rows.hi)))]
        active = {label: cut for label, (_, cut) in cuts.items() if not cut.done}
        if not active:
            return []  # nothing left to refine: the file is not read
        rows = TableRows.read(path, self._min_confidence, self._seed)
        by_bits: dict[int, list[int]] = {}
        for label, cut in active.items():
            by_bits.setdefault(cut.bits, []).append(label)
        return [partial for bits, labels in sorted(by_bits.items())
                for partial in self._bucket(rows, bits, {label: active[label] for label in labels})]

    def _bucket(self, rows: TableRows, bits: int, cuts: Mapping[int, Cut]):
        """Partials of the classes whose cuts are `bits` deep."""
        top = min(bits, 32)
        size = max(cuts) + 1
        prefix_top = np.zeros(size, dtype=np.uint64)
        prefix_low = np.zeros(size, dtype=np.uint64)
        collect = np.zeros(size, dtype=bool)
        for label, cut in cuts.items():
            prefix_top[label] = cut.prefix >> (bits - top)
            prefix_low[label] = cut.prefix & ((1 << max(bits - 32, 0)) - 1)
            collect[label] = cut.collect
        member = np.flatnonzero(np.isin(rows.labels, list(cuts)))
        labels, hi = rows.labels[member], rows.hi[member]
        keep = (hi >> np.uint64(32 - top)) == prefix_top[labels] if bits else np.ones(
            len(member), dtype=bool)
        member, labels, hi = member[keep], labels[keep], hi[keep]
        lo = None
        if bits >= 32 or collect[labels].any():  # the digit or the collected key needs it
            lo = rows.hashes(member)
        if bits > 32:
            keep = (lo >> np.uint64(64 - (bits - 32))) == prefix_low[labels]
            labels, hi, lo = labels[keep], hi[keep], lo[keep]
        gather = collect[labels]
        for label in np.unique(labels[gather]).tolist():
            mine = labels == label
            yield label, Partial.keys(hi[mine], lo[mine])
        refine = ~gather
        if refine.any():
            digits = balance.digits_of(hi[refine], None if lo is None else lo[refine], bits)
            yield from _split_by_label(_coded(labels[refine], digits),
                                       np.ones(len(digits), dtype=np.int64), hi[refine])


class _MergePartials(beam.CombineFn):
    """Partials of one class from many files → one, compacted as they arrive."""

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, partial):
        accumulator.append(partial)
        # Merging every few inputs bounds the memory of a class's accumulator by its merged
        # histogram (<= 2**16 digits), not by the number of table files.
        return [Partial.merge(accumulator)] if len(accumulator) >= 8 else accumulator

    def merge_accumulators(self, accumulators):
        return [Partial.merge([p for acc in accumulators for p in acc])] if any(
            accumulators) else []

    def extract_output(self, accumulator):
        return Partial.merge(accumulator)


class _Start:
    """(None, first-digit histogram of all classes) → (label, (quota, cut)) after one refine."""

    def __init__(self, images_per_class: int, duplicate: bool, collect_limit: int):
        self._k = images_per_class
        self._duplicate = duplicate
        self._collect_limit = collect_limit

    def __call__(self, element):
        _, coded = element
        for label, partial in _split_by_label(coded.digits, coded.counts, coded.lowest):
            quota = balance.plan_quota(int(partial.counts.sum()), self._k, self._duplicate)
            cut = balance.start_cut(quota.extra)
            if not cut.done:
                cut = partial.refine(cut, self._collect_limit)
            yield label, (quota, cut)


def _advance(element, states: Mapping[int, tuple[Quota, Cut]], collect_limit: int):
    """(label, merged Partial) → (label, (quota, cut)) one step further.

    Every unresolved class has keys in its boundary bucket, so it has a Partial; resolved
    classes are carried over by `_resolved`, and `ToPlans` refuses a class left unresolved.
    """
    label, partial = element
    quota, cut = states[label]
    if cut.collect:
        return label, (quota, balance.resolve(cut, partial.as_keys()))
    return label, (quota, partial.refine(cut, collect_limit))


def _resolved(element) -> bool:
    _, (_, cut) = element
    return cut.done


def _to_plan(label: int, state: tuple[Quota, Cut]) -> tuple[int, ClassPlan]:
    quota, cut = state
    if not cut.done:
        raise AssertionError(f"class {label} unresolved after {balance.MAX_PASSES} passes: {cut}")
    return label, ClassPlan(label, quota, cut)


class _TieCounts(beam.DoFn):
    """Table file → (label, (file, rows tied on the threshold key)) for classes with ties."""

    def __init__(self, min_confidence: float, seed: int):
        self._min_confidence = min_confidence
        self._seed = seed

    def process(self, path: str, plans: Mapping[int, ClassPlan]):
        tied = {label: plan for label, plan in plans.items() if plan.cut.take_equal}
        if tied:
            yield from self._counts(path, tied)

    def _counts(self, path: str, tied: Mapping[int, ClassPlan]):
        rows = TableRows.read(path, self._min_confidence, self._seed)
        for label, plan in sorted(tied.items()):
            threshold = plan.cut.threshold
            same = np.flatnonzero((rows.labels == label) & (rows.hi == np.uint64(threshold >> 64)))
            if len(same):
                count = int(np.sum(rows.hashes(same) == np.uint64(threshold & ((1 << 64) - 1))))
                if count:
                    yield label, (path, count)


def _tie_starts(element) -> tuple[int, dict[str, int]]:
    """(label, [(file, tied rows)]) → (label, {file: tied rows in files sorted before it})."""
    label, counts = element
    starts, total = {}, 0
    for path, count in sorted(counts):
        starts[path] = total
        total += count
    return label, starts


def file_copies(rows: pa.Table, path: str, plans: Mapping[int, ClassPlan],
                tie_starts: Mapping[int, Mapping[str, int]], min_confidence: float,
                seed: int) -> np.ndarray:
    """Copies of every row of one table file (`label`, `confidence`, `id` columns) by the plans.

    Failed rows and rows below `min_confidence` get 0. Ids are hashed only for rows whose
    confidence equals their class threshold's.
    """
    labels = rows.column(table.LABEL).fill_null(-1).to_numpy().astype(np.int64)
    confidence = rows.column(table.CONFIDENCE).fill_null(0.0).to_numpy().astype(np.float32)
    labels[confidence < np.float32(min_confidence)] = -1
    ids = rows.column(table.ID)

    def hashes(positions):
        return balance.id_hashes(ids.take(positions).to_pylist(), seed)

    starts = {label: files[path] for label, files in tie_starts.items() if path in files}
    return balance.copies_for_rows(labels, balance.confidence_bits(confidence), hashes, plans,
                                   starts)


class Selection(NamedTuple):
    """What BalancePerClass decides: per class, a plan; per tied class, where its ties start.

    Attributes:
      plans: (label, ClassPlan) for every class with an image above the threshold.
      tie_starts: (label, {table file: tied rows before it}) for classes whose threshold key is
        shared by several images (identical ids and confidences), ordered by (file, row).
    """

    plans: beam.PCollection
    tie_starts: beam.PCollection


class BalancePerClass(beam.PTransform):
    """Table file paths → `Selection`: exact per-class top-K with duplication.

    A class with n images above `min_confidence` gets exactly `images_per_class` (K) records:
    its K most confident when n > K (ties broken by a hash of (id, seed)), else every image
    K // n or K // n + 1 times (or once each with `duplicate=False`).
    """

    def __init__(self, min_confidence: float, images_per_class: int, duplicate: bool = True,
                 seed: int = 0, collect_limit: int = balance.DEFAULT_COLLECT_LIMIT):
        super().__init__()
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
        if collect_limit < 1:
            raise ValueError(f"collect_limit must be >= 1, got {collect_limit}")
        self._min_confidence = min_confidence
        self._k = images_per_class
        self._duplicate = duplicate
        self._seed = seed
        self._collect_limit = collect_limit

    def expand(self, paths):
        radix = _RadixPass(self._min_confidence, self._seed)
        state = (paths
                 | "Digits0" >> beam.ParDo(radix)
                 | "Merge0" >> beam.CombinePerKey(_MergePartials())
                 | "Start" >> beam.FlatMap(_Start(self._k, self._duplicate,
                                                  self._collect_limit)))
        for p in range(1, balance.MAX_PASSES):
            states = beam.pvalue.AsDict(state)
            advanced = (paths
                        | f"Digits{p}" >> beam.ParDo(radix, states)
                        | f"Merge{p}" >> beam.CombinePerKey(_MergePartials())
                        | f"Advance{p}" >> beam.Map(_advance, states, self._collect_limit))
            resolved = state | f"Resolved{p}" >> beam.Filter(_resolved)
            state = (resolved, advanced) | f"State{p}" >> beam.Flatten()
        plans = state | "ToPlans" >> beam.MapTuple(_to_plan)
        tie_starts = (paths
                      | "CountTies" >> beam.ParDo(_TieCounts(self._min_confidence, self._seed),
                                                  beam.pvalue.AsDict(plans))
                      | "GroupTies" >> beam.GroupByKey()
                      | "TieStarts" >> beam.Map(_tie_starts))
        return Selection(plans, tie_starts)


def _count_file(path: str) -> dict[str, Any]:
    columns = table.read_table_file(path, [table.LABEL, table.ERROR_STAGE])
    labels = columns.column(table.LABEL).drop_null().to_numpy()
    stages = columns.column(table.ERROR_STAGE).drop_null().to_pylist()
    failed: dict[str, int] = {}
    for stage in stages:
        failed[stage] = failed.get(stage, 0) + 1
    values, counts = np.unique(labels, return_counts=True)
    return {_COUNT_ROWS: columns.num_rows, _FAILED: failed,
            _SCORED: dict(zip(values.tolist(), counts.tolist()))}


def _add_counts(counts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {_COUNT_ROWS: 0, _FAILED: {}, _SCORED: {}}
    for c in counts:
        total[_COUNT_ROWS] += c[_COUNT_ROWS]
        for key in (_FAILED, _SCORED):
            for k, v in c[key].items():
                total[key][k] = total[key].get(k, 0) + v
    return total


@dataclasses.dataclass(frozen=True)
class TableCounts:
    """What a predictions table holds: rows, failures per stage, scored images per class."""

    rows: int
    failed: Mapping[str, int]
    scored: Mapping[int, int]

    @classmethod
    def from_dict(cls, counts: Mapping[str, Any]) -> TableCounts:
        return cls(counts[_COUNT_ROWS], dict(counts[_FAILED]), dict(counts[_SCORED]))


class CountPredictions(beam.PTransform):
    """Table file paths → one `TableCounts` (from the label and error columns only)."""

    def expand(self, paths):
        return (paths
                | "CountFile" >> beam.Map(_count_file)
                | "AddCounts" >> beam.CombineGlobally(_add_counts)
                | "ToCounts" >> beam.Map(TableCounts.from_dict))
