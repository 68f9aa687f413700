"""FilterByConfidence and BalancePerClass: the Beam side of the selection math in `balance.py`.

Balancing works on small keys only. The per-class thresholds come from a radix select over
(class, priority key) pairs — one histogram pass per 16-bit digit, combined per (class, digit),
then one exact pass over a bounded boundary bucket — and reach the images as a side input of a
few values per class. No step groups images by class, and no worker holds more than one digit's
histogram or one bounded bucket of keys per class, however many images a class has.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms.combiners import TupleCombineFn

from ns_data import balance
from ns_data.records import ScoredImage

COPIES = "copies"
PLANS = "plans"
_TIED = "tied"


class _ConfidenceFilter(beam.DoFn):
    def __init__(self, min_confidence: float):
        self._min_confidence = min_confidence
        self._kept = beam.metrics.Metrics.counter("ns_data", "above_threshold")
        self._dropped = beam.metrics.Metrics.counter("ns_data", "below_threshold")

    def process(self, image: ScoredImage):
        if image.confidence >= self._min_confidence:
            self._kept.inc()
            yield image
        else:
            self._dropped.inc()


class FilterByConfidence(beam.PTransform):
    """Keeps images whose top-1 probability is at least `min_confidence`."""

    def __init__(self, min_confidence: float):
        super().__init__()
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self._min_confidence = min_confidence

    def expand(self, scored):
        return scored | beam.ParDo(_ConfidenceFilter(self._min_confidence))


def _regroup(element):
    (label, d), count_and_min = element
    return label, (d, count_and_min)


def _histograms(keyed, label: str):
    """((label, digit), (1, key)) → (label, {digit: (count, smallest key)})."""
    return (keyed
            | f"CountDigits{label}" >> beam.CombinePerKey(TupleCombineFn(sum, min))
            | f"ByClass{label}" >> beam.Map(_regroup)
            | f"Histogram{label}" >> beam.GroupByKey()
            | f"ToDict{label}" >> beam.MapTuple(lambda c, hist: (c, dict(hist))))


def _first_digit(element):
    label, key = element
    return (label, balance.digit(key, 0)), (1, key)


def _next_digit(element, cuts):
    label, key = element
    _, cut = cuts[label]
    if not cut.done and not cut.collect and cut.in_bucket(key):
        yield (label, balance.digit(key, cut.bits)), (1, key)


def _bucket_key(element, cuts):
    label, key = element
    _, cut = cuts[label]
    if cut.collect and cut.in_bucket(key):
        yield label, key


class _RadixSelect(beam.PTransform):
    """(label, priority key) → (label, ClassPlan), in at most `balance.MAX_PASSES` passes."""

    def __init__(self, images_per_class: int, duplicate: bool, collect_limit: int):
        super().__init__()
        self._k = images_per_class
        self._duplicate = duplicate
        self._collect_limit = collect_limit

    def _start(self, label, hist):
        quota = balance.plan_quota(sum(c for c, _ in hist.values()), self._k, self._duplicate)
        cut = balance.start_cut(quota.extra)
        if not cut.done:
            cut = balance.refine(cut, hist, self._collect_limit)
        return label, (quota, cut)

    def _advance(self, element):
        label, grouped = element
        (quota, cut), = grouped["state"]
        hist = grouped["hist"][0] if grouped["hist"] else None
        keys = grouped["keys"][0] if grouped["keys"] else None
        return label, (quota, balance.advance(cut, hist, keys, self._collect_limit))

    def expand(self, keyed):
        state = (_histograms(keyed | "FirstDigit" >> beam.Map(_first_digit), "0")
                 | "StartCuts" >> beam.MapTuple(self._start))
        for p in range(1, balance.MAX_PASSES):
            cuts = beam.pvalue.AsDict(state)
            hist = _histograms(keyed | f"NextDigit{p}" >> beam.FlatMap(_next_digit, cuts), str(p))
            keys = (keyed
                    | f"BucketKeys{p}" >> beam.FlatMap(_bucket_key, cuts)
                    | f"CollectBucket{p}" >> beam.GroupByKey())
            state = ({"state": state, "hist": hist, "keys": keys}
                     | f"Join{p}" >> beam.CoGroupByKey()
                     | f"Advance{p}" >> beam.Map(self._advance))
        return state | "ToPlans" >> beam.MapTuple(
            lambda label, qc: (label, balance.ClassPlan(label, *qc)))


class _AssignCopies(beam.DoFn):
    """ScoredImage → (image, copies) from its class plan; threshold ties go to a side output."""

    def __init__(self, seed: int):
        self._seed = seed
        self._kept = beam.metrics.Metrics.counter("ns_data", "kept")
        self._capped = beam.metrics.Metrics.counter("ns_data", "dropped_by_cap")
        self._duplicates = beam.metrics.Metrics.counter("ns_data", "duplicates")

    def count(self, copies: int):
        if copies:
            self._kept.inc()
            self._duplicates.inc(copies - 1)
        else:
            self._capped.inc()

    def process(self, image: ScoredImage, plans):
        plan = plans[image.label]
        copies = plan.copies(balance.priority_key(image.confidence, image.image_id, self._seed))
        if copies is None:
            yield beam.pvalue.TaggedOutput(_TIED, (image.label, image))
            return
        self.count(copies)
        if copies:
            yield image, copies


class _ResolveTies(_AssignCopies):
    """Images whose key equals their class threshold (identical duplicates) → (image, copies)."""

    def process(self, element, plans):
        label, images = element
        ordered = sorted(images, key=lambda im: (im.image_id, im.encoded))
        for image, copies in zip(ordered, plans[label].tie_copies(len(ordered))):
            self.count(copies)
            if copies:
                yield image, copies


def _expand_copies(element):
    image, copies = element
    for copy in range(copies):
        yield image, copy


class BalancePerClass(beam.PTransform):
    """Exact per-class top-K with duplication; returns {"copies", "plans"}.

    "copies": (ScoredImage, copy index) records, exactly `images_per_class` per class with at
    least one image (or min(n, K) with `duplicate=False`). "plans": (label, ClassPlan).
    """

    def __init__(self, images_per_class: int, duplicate: bool = True, seed: int = 0,
                 collect_limit: int = balance.DEFAULT_COLLECT_LIMIT):
        super().__init__()
        if images_per_class < 1:
            raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
        if collect_limit < 1:
            raise ValueError(f"collect_limit must be >= 1, got {collect_limit}")
        self._k = images_per_class
        self._duplicate = duplicate
        self._seed = seed
        self._collect_limit = collect_limit

    def expand(self, images):
        seed = self._seed
        keyed = images | "PriorityKeys" >> beam.Map(
            lambda im: (im.label, balance.priority_key(im.confidence, im.image_id, seed)))
        plans = keyed | "ThresholdPerClass" >> _RadixSelect(
            self._k, self._duplicate, self._collect_limit)
        plan_side = beam.pvalue.AsDict(plans)
        assigned = images | "AssignCopies" >> beam.ParDo(
            _AssignCopies(seed), plan_side).with_outputs(_TIED, main=COPIES)
        tied = (assigned[_TIED]
                | "GroupTies" >> beam.GroupByKey()
                | "ResolveTies" >> beam.ParDo(_ResolveTies(seed), plan_side))
        copies = ((assigned[COPIES], tied)
                  | "MergeCopies" >> beam.Flatten()
                  | "ExpandCopies" >> beam.FlatMap(_expand_copies))
        return {COPIES: copies, PLANS: plans}
