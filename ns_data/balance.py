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
from collections.abc import Callable, Iterable, Mapping, Sequence

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
    def max_copies(self) -> int:
        """The most records any one image of the class gets."""
        return self.base_copies + (1 if self.extra else 0)

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
    (`threshold` set): keys > threshold are selected, plus `take_equal` of the keys == threshold,
    and `lowest_confidence_bits` are the float32 bits of the least selected key's confidence (a
    capped class's effective threshold; found without hashing a single image id).
    """

    need: int
    prefix: int = 0
    bits: int = 0
    collect: bool = False
    threshold: int | None = None
    take_equal: int = 0
    lowest_confidence_bits: int | None = None

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
    """{next digit: (count, lowest confidence bits)} of keys sharing their `bits` high bits."""
    hist: dict[int, tuple[int, int]] = {}
    for key in keys:
        d = digit(key, bits)
        count, lowest = hist.get(d, (0, key >> 64))
        hist[d] = (count + 1, min(lowest, key >> 64))
    return hist


def refine(cut: Cut, hist: Mapping[int, tuple[int, int]], collect_limit: int) -> Cut:
    """One radix step: narrows the cut to the bucket of the next digit holding the boundary.

    Args:
      cut: an unresolved, non-collecting cut.
      hist: `histogram` of the keys in the cut's bucket, on the next digit (or the same built
        from arrays by `reduce_histogram`).
      collect_limit: a boundary bucket at most this large is collected on the next pass.
    """
    digits = sorted(hist, reverse=True)
    counts = np.array([hist[d][0] for d in digits], dtype=np.int64)
    return refine_arrays(cut, np.array(digits, dtype=np.uint64), counts,
                         np.array([hist[d][1] for d in digits], dtype=np.uint64), collect_limit)


def refine_arrays(cut: Cut, digits: np.ndarray, counts: np.ndarray, lowest: np.ndarray,
                  collect_limit: int) -> Cut:
    """`refine` on a histogram given as arrays sorted by digit, largest first."""
    above_incl = np.cumsum(counts)
    i = int(np.searchsorted(above_incl, cut.need))  # the first digit reaching `need`
    if i == len(counts):
        raise ValueError(f"histogram holds {int(above_incl[-1]) if len(counts) else 0} keys, "
                         f"fewer than the {cut.need} needed")
    d, count, low = int(digits[i]), int(counts[i]), int(lowest[i])
    above = int(above_incl[i]) - count
    need = cut.need - above
    prefix = (cut.prefix << DIGIT_BITS) | d
    bits = cut.bits + DIGIT_BITS
    lower = prefix << (KEY_BITS - bits)
    if need == count:  # the whole bucket is selected: everything from its lower bound up
        return Cut(need, prefix, bits, threshold=lower - 1, lowest_confidence_bits=low)
    if bits == KEY_BITS:  # the bucket is `count` identical keys, `need` of them selected
        return Cut(need, prefix, bits, threshold=lower, take_equal=need,
                   lowest_confidence_bits=lower >> 64)
    return Cut(need, prefix, bits, collect=count <= collect_limit)


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
                                   lowest_confidence_bits=boundary >> 64)
    return dataclasses.replace(cut, collect=False, threshold=boundary, take_equal=take,
                               lowest_confidence_bits=boundary >> 64)


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
        if self.quota.base_copies > 0 or self.cut.lowest_confidence_bits is None:
            return None
        return float(np.uint32(self.cut.lowest_confidence_bits).view(np.float32))


# --------------------------------------------------------------------------------------------
# The same math on columns of many images at once (numpy), as the pipeline runs it on the
# predictions table. A key is split in two columns: `hi`, the float32 bits of the confidence,
# and `lo`, the 63-bit id hash; both uint64. The hash is computed only for rows that need it:
# the first two radix passes and most copy decisions look at the confidence alone.
# --------------------------------------------------------------------------------------------

_U64 = (1 << 64) - 1


def id_hashes(image_ids: Sequence[bytes], seed: int) -> np.ndarray:
    """`id_hash` of each id (uint64), ~40% faster than calling it per id."""
    keyed = hashlib.blake2b(digest_size=8, key=seed.to_bytes(8, "little", signed=True))

    def digest(data: bytes) -> bytes:
        h = keyed.copy()  # the key block is hashed once, not once per id
        h.update(data)
        return h.digest()

    digests = np.frombuffer(b"".join(digest(i) for i in image_ids), dtype=">u8")
    return digests.astype(np.uint64) >> np.uint64(1)


def confidence_bits(confidences: np.ndarray) -> np.ndarray:
    """float32 confidences → the `hi` column (their bits, uint64; -0.0 as 0.0)."""
    conf = np.asarray(confidences, dtype=np.float32) + np.float32(0.0)
    return conf.view(np.uint32).astype(np.uint64)


def bucket_mask(hi: np.ndarray, lo: np.ndarray | None, bits: int, prefix: int) -> np.ndarray:
    """Rows whose key's `bits` highest bits equal `prefix` (`lo` is needed when bits > 32)."""
    if bits == 0:
        return np.ones(len(hi), dtype=bool)
    top = min(bits, 32)
    mask = (hi >> np.uint64(32 - top)) == np.uint64(prefix >> (bits - top))
    if bits > 32:
        low = bits - 32
        mask &= (lo >> np.uint64(64 - low)) == np.uint64(prefix & ((1 << low) - 1))
    return mask


def digits_of(hi: np.ndarray, lo: np.ndarray | None, bits: int) -> np.ndarray:
    """`digit(key, bits)` of each row (`lo` is needed when bits >= 32)."""
    shift = KEY_BITS - bits - DIGIT_BITS
    if shift >= 64:
        return (hi >> np.uint64(shift - 64)) & np.uint64(DIGIT_MASK)
    return (lo >> np.uint64(shift)) & np.uint64(DIGIT_MASK)


def reduce_histogram(codes: np.ndarray, counts: np.ndarray,
                     lowest: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums counts and keeps the lowest confidence bits per code; returns them sorted by code.

    Codes are digits, or (label << DIGIT_BITS | digit) for many classes at once.
    """
    if len(codes) == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, np.zeros(0, dtype=np.int64), empty
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return (codes[starts], np.add.reduceat(counts[order], starts),
            np.minimum.reduceat(lowest[order], starts))


def as_histogram(digits: np.ndarray, counts: np.ndarray,
                 lowest: np.ndarray) -> dict[int, tuple[int, int]]:
    """Arrays from `reduce_histogram` → the {digit: (count, lowest bits)} `refine` takes."""
    return {int(d): (int(c), int(b)) for d, c, b in zip(digits, counts, lowest)}


def copies_for_rows(labels: np.ndarray, hi: np.ndarray, hashes: Callable[[np.ndarray], np.ndarray],
                    plans: Mapping[int, ClassPlan],
                    tie_start: Mapping[int, int] | None = None) -> np.ndarray:
    """Copies of each row from its class plan, hashing only rows that need it.

    Args:
      labels: each row's class, or -1 for rows that take no part (failed, below the threshold).
      hi: each row's confidence bits (`confidence_bits`).
      hashes: row positions → their id hashes; called only for rows whose confidence equals their
        class threshold's.
      plans: the plan of every class that has rows here.
      tie_start: per class whose threshold key is tied (`take_equal`), how many of its tied rows
        come before this batch in the deterministic tie order; rows of a batch follow in order.
    """
    copies = np.zeros(len(labels), dtype=np.int64)
    taking = np.flatnonzero(labels >= 0)
    if not len(taking):
        return copies
    by_label = taking[np.argsort(labels[taking], kind="stable")]  # row order kept per class
    sorted_labels = labels[by_label]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(by_label)]):
        rows = by_label[start:end]
        label = int(sorted_labels[start])
        plan = plans.get(label)
        if plan is None:
            raise AssertionError(f"class {label} has images above the threshold but no plan")
        t_hi, t_lo = plan.cut.threshold >> 64, plan.cut.threshold & _U64
        h = hi[rows].astype(np.int64)
        c = np.full(len(rows), plan.quota.base_copies, dtype=np.int64)
        c[h > t_hi] += 1
        same = np.flatnonzero(h == t_hi)
        if len(same):
            lo = hashes(rows[same])
            c[same[lo > np.uint64(t_lo)]] += 1
            if plan.cut.take_equal:
                tied = same[lo == np.uint64(t_lo)]
                start = (tie_start or {}).get(label, 0)
                c[tied] += (start + np.arange(len(tied))) < plan.cut.take_equal
        copies[rows] = c
    return copies
