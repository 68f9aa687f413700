"""Selection math for per-class balancing, in plain Python (the Beam wiring is in `select.py`).

Every image above the confidence threshold gets a **priority key**, a 96-bit integer: the float32
bits of its confidence (monotonic for non-negative floats) followed by a 63-bit hash of
(image id, seed). Keys order images by confidence, ties broken deterministically by the hash.

For a class with n images and a target of K per class (`plan_quota`):

* n > K: the K largest keys get one copy, the rest none;
* n <= K with duplication: every image gets q = K // n copies and the r = K % n largest keys one
  more, so the class has exactly K records and each image appears q or q + 1 times;
* n <= K without duplication: every image once.

So the only rank question is "which keys are among the R largest of this class". It is answered
without ever holding a class in memory: a radix select (`start_cut`, `refine`, `resolve`) walks
down the key 16 bits at a time, each pass needing only a histogram of the next digit among the
keys that share the current prefix, until the boundary bucket is small enough to collect exactly.
The result is a threshold key per class: keys above it are selected, and `take_equal` of the
keys equal to it (only identical duplicates can tie on the full key).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

KEY_BITS = 96
DIGIT_BITS = 16
DIGIT_MASK = (1 << DIGIT_BITS) - 1
MAX_KEY = (1 << KEY_BITS) - 1
# Radix passes needed in the worst case: one per digit. A collecting pass only follows a refine
# that left digits to go, so it never adds a pass beyond the last digit's.
MAX_PASSES = KEY_BITS // DIGIT_BITS
# A boundary bucket this small is collected and sorted exactly instead of refined further.
DEFAULT_COLLECT_LIMIT = 50_000


def id_hash(data: bytes, seed: int) -> int:
    """A 63-bit hash of `data` salted by `seed`, stable across processes and machines.

    63 bits, so the value fits Beam's int64 coders wherever a runner infers one.
    """
    salted = hashlib.blake2b(data, digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(salted.digest(), "big") >> 1


def priority_key(confidence: float, image_id: bytes, seed: int) -> int:
    """The 96-bit sort key of an image: confidence bits, then hash(image id, seed)."""
    conf = np.float32(confidence) + np.float32(0.0)  # -0.0 → 0.0, whose bits sort lowest
    if not (conf >= 0 and np.isfinite(conf)):
        raise ValueError(f"confidence must be finite and >= 0, got {confidence}")
    return (int(conf.view(np.uint32)) << 64) | id_hash(image_id, seed)


def key_confidence(key: int) -> float:
    """The confidence a priority key was built from."""
    return float(np.uint32(key >> 64).view(np.float32))


def digit(key: int, bits: int) -> int:
    """The DIGIT_BITS-wide digit of `key` that follows its `bits` highest bits."""
    return (key >> (KEY_BITS - bits - DIGIT_BITS)) & DIGIT_MASK


@dataclasses.dataclass(frozen=True)
class Quota:
    """How many records one class gets.

    Attributes:
      count: images of the class above the confidence threshold (n).
      base_copies: copies every image of the class gets (q).
      extra: how many of the highest-priority images get one copy more (r, or K when capping).
    """

    count: int
    base_copies: int
    extra: int

    @property
    def written(self) -> int:
        return self.base_copies * self.count + self.extra

    @property
    def kept(self) -> int:
        """Distinct images written at least once."""
        return self.count if self.base_copies > 0 else self.extra


def plan_quota(count: int, images_per_class: int, duplicate: bool = True) -> Quota:
    """The quota of a class with `count` images for a target of `images_per_class`."""
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count > images_per_class:
        return Quota(count, 0, images_per_class)
    if count == 0 or not duplicate:
        return Quota(count, 1, 0)
    return Quota(count, images_per_class // count, images_per_class % count)


@dataclasses.dataclass(frozen=True)
class Cut:
    """Progress of a radix select for the `need` largest keys of one class.

    While unresolved, the boundary lies in the bucket of keys whose `bits` highest bits equal
    `prefix`, and `need` of that bucket's keys are still to be selected. Once resolved
    (`threshold` set): keys > threshold are selected, plus `take_equal` of the keys == threshold.
    """

    need: int
    prefix: int = 0
    bits: int = 0
    collect: bool = False
    threshold: int | None = None
    take_equal: int = 0
    smallest_selected: int | None = None

    @property
    def done(self) -> bool:
        return self.threshold is not None

    def in_bucket(self, key: int) -> bool:
        return (key >> (KEY_BITS - self.bits)) == self.prefix


def start_cut(need: int) -> Cut:
    """A radix select for the `need` largest keys; trivially resolved when need is 0."""
    if need < 0:
        raise ValueError(f"need must be >= 0, got {need}")
    if need == 0:
        return Cut(need=0, threshold=MAX_KEY)
    return Cut(need=need)


def histogram(keys: Iterable[int], bits: int) -> dict[int, tuple[int, int]]:
    """{next digit: (count, smallest key)} of keys (all sharing their `bits` high bits)."""
    hist: dict[int, tuple[int, int]] = {}
    for key in keys:
        d = digit(key, bits)
        count, smallest = hist.get(d, (0, key))
        hist[d] = (count + 1, min(smallest, key))
    return hist


def refine(cut: Cut, hist: Mapping[int, tuple[int, int]], collect_limit: int) -> Cut:
    """One radix step: narrows the cut to the bucket of the next digit holding the boundary.

    Args:
      cut: an unresolved, non-collecting cut.
      hist: `histogram` of the keys in the cut's bucket, on the next digit.
      collect_limit: a boundary bucket at most this large is collected on the next pass.
    """
    above = 0
    for d in sorted(hist, reverse=True):
        count, smallest = hist[d]
        if above + count < cut.need:
            above += count
            continue
        need = cut.need - above
        prefix = (cut.prefix << DIGIT_BITS) | d
        bits = cut.bits + DIGIT_BITS
        lower = prefix << (KEY_BITS - bits)
        if need == count:  # the whole bucket is selected: everything from its lower bound up
            return Cut(need, prefix, bits, threshold=lower - 1, smallest_selected=smallest)
        if bits == KEY_BITS:  # the bucket is `count` identical keys, `need` of them selected
            return Cut(need, prefix, bits, threshold=lower, take_equal=need,
                       smallest_selected=lower)
        return Cut(need, prefix, bits, collect=count <= collect_limit)
    raise ValueError(f"histogram holds {above} keys, fewer than the {cut.need} needed")


def resolve(cut: Cut, keys: Iterable[int]) -> Cut:
    """Resolves a collecting cut exactly from all keys of its bucket."""
    ordered = sorted(keys, reverse=True)
    if len(ordered) < cut.need:
        raise ValueError(f"bucket holds {len(ordered)} keys, fewer than the {cut.need} needed")
    boundary = ordered[cut.need - 1]
    above = sum(1 for k in ordered if k > boundary)
    equal = sum(1 for k in ordered if k == boundary)
    take = cut.need - above
    if take == equal:
        return dataclasses.replace(cut, collect=False, threshold=boundary - 1,
                                   smallest_selected=boundary)
    return dataclasses.replace(cut, collect=False, threshold=boundary, take_equal=take,
                               smallest_selected=boundary)


def advance(cut: Cut, hist: Mapping[int, tuple[int, int]] | None, keys: Iterable[int] | None,
            collect_limit: int) -> Cut:
    """One pass of the radix select: refine with a histogram or resolve with collected keys."""
    if cut.done:
        return cut
    if cut.collect:
        return resolve(cut, keys or ())
    return refine(cut, hist or {}, collect_limit)


def select_cut(keys: list[int], need: int, collect_limit: int = DEFAULT_COLLECT_LIMIT) -> Cut:
    """The radix select run in memory: the same passes the pipeline runs, for tests and benches."""
    cut = start_cut(need)
    passes = 0
    while not cut.done:
        in_bucket = [k for k in keys if cut.in_bucket(k)]
        cut = advance(cut, histogram(in_bucket, cut.bits), in_bucket, collect_limit)
        passes += 1
    assert passes <= MAX_PASSES, passes
    return cut


@dataclasses.dataclass(frozen=True)
class ClassPlan:
    """The final balancing decision for one class: how many copies each image gets."""

    label: int
    quota: Quota
    cut: Cut

    def copies(self, key: int) -> int | None:
        """Copies of the image with this key; None when it ties on the threshold key itself."""
        if key > self.cut.threshold:
            return self.quota.base_copies + 1
        if key == self.cut.threshold and self.cut.take_equal:
            return None
        return self.quota.base_copies

    def tie_copies(self, n_tied: int) -> list[int]:
        """Copies of the images tied on the threshold key, in their deterministic order."""
        take = self.cut.take_equal
        return [self.quota.base_copies + (1 if i < take else 0) for i in range(n_tied)]

    @property
    def threshold_confidence(self) -> float | None:
        """Confidence of the least confident kept image when the class was capped, else None."""
        if self.quota.base_copies > 0 or self.cut.smallest_selected is None:
            return None
        return key_confidence(self.cut.smallest_selected)
