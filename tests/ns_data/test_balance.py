"""Tests for the per-class selection math in `ns_data/balance.py`.

The end-to-end tests compare the production path (`plan_quota` → `select_cut` → `ClassPlan`,
with threshold ties resolved through `tie_copies` in image-id order, as `select.py` does) against
a brute-force oracle that sorts the whole class by priority key.
"""
from __future__ import annotations

import hashlib
import struct
from collections import defaultdict

import numpy as np
import pytest

from ns_data import balance

SEED = 1234
LABEL = 7
COLLECT_LIMITS = [1, 2, 10, balance.DEFAULT_COLLECT_LIMIT]

Image = tuple[bytes, float]


# --------------------------------------------------------------------------------------------
# Oracle and production path
# --------------------------------------------------------------------------------------------

def oracle_copies(images: list[Image], k: int, duplicate: bool, seed: int) -> list[int]:
    """Per-image copies by brute force: sort the whole class by priority key, descending."""
    n = len(images)
    order = sorted(range(n), key=lambda i: balance.priority_key(images[i][1], images[i][0], seed),
                   reverse=True)
    copies = [0] * n
    if n > k:
        for i in order[:k]:
            copies[i] = 1
    elif duplicate:
        for rank, i in enumerate(order):
            copies[i] = k // n + (1 if rank < k % n else 0)
    else:
        copies = [1] * n
    return copies


def assert_cut_semantics(keys: list[int], need: int, cut: balance.Cut) -> None:
    """Exactly the `need` largest keys (as a multiset) are selected by the resolved cut."""
    assert cut.done
    threshold = cut.threshold
    above = [k for k in keys if k > threshold]
    equal = sum(1 for k in keys if k == threshold)
    assert len(above) + cut.take_equal == need
    assert 0 <= cut.take_equal <= equal
    if cut.take_equal:
        # A tie on the threshold is only reported when some, but not all, equal keys are taken.
        assert cut.take_equal < equal
    selected = sorted(above + [threshold] * cut.take_equal, reverse=True)
    assert selected == sorted(keys, reverse=True)[:need]
    if need:
        assert cut.lowest_confidence_bits == sorted(keys, reverse=True)[need - 1] >> 64
    else:
        assert cut.lowest_confidence_bits is None


def production_copies(images: list[Image], k: int, duplicate: bool, seed: int,
                      collect_limit: int) -> tuple[list[int], balance.ClassPlan, int]:
    """Per-image copies through the production math; also returns the plan and #tied images."""
    keys = [balance.priority_key(conf, image_id, seed) for image_id, conf in images]
    quota = balance.plan_quota(len(images), k, duplicate)
    cut = balance.select_cut(keys, quota.extra, collect_limit=collect_limit)
    assert_cut_semantics(keys, quota.extra, cut)
    plan = balance.ClassPlan(LABEL, quota, cut)

    copies: list[int | None] = [None] * len(images)
    tied = []
    for i, key in enumerate(keys):
        c = plan.copies(key)
        if c is None:
            assert key == cut.threshold
            tied.append(i)
        else:
            copies[i] = c
    tied.sort(key=lambda i: images[i][0])
    for i, c in zip(tied, plan.tie_copies(len(tied)), strict=True):
        copies[i] = c
    assert None not in copies
    return copies, plan, len(tied)


def by_identity(images: list[Image], copies: list[int]) -> dict[tuple[bytes, float], list[int]]:
    """Copies grouped by (id, float32 confidence): images in one group have identical keys."""
    groups: dict[tuple[bytes, float], list[int]] = defaultdict(list)
    for (image_id, conf), c in zip(images, copies, strict=True):
        groups[(image_id, float(np.float32(conf)))].append(c)
    return {g: sorted(cs) for g, cs in groups.items()}


def check_class(images: list[Image], k: int, duplicate: bool, seed: int = SEED,
                collect_limit: int = balance.DEFAULT_COLLECT_LIMIT) -> tuple[list[int], int]:
    """Asserts production == oracle for one class; returns the copies and #tied images."""
    n = len(images)
    expected = oracle_copies(images, k, duplicate, seed)
    actual, plan, n_tied = production_copies(images, k, duplicate, seed, collect_limit)

    assert by_identity(images, actual) == by_identity(images, expected)
    total = k if (duplicate and n > 0) else min(n, k)
    assert sum(actual) == total
    assert plan.quota.written == total
    assert sum(1 for c in actual if c > 0) == plan.quota.kept
    assert set(actual) <= {plan.quota.base_copies, plan.quota.base_copies + 1}
    return actual, n_tied


def make_images(rng: np.random.Generator, n: int, confidences=None) -> list[Image]:
    if confidences is None:
        confidences = rng.random(n)
    return [(f"img-{i:06d}".encode(), float(c)) for i, c in enumerate(confidences)]


# --------------------------------------------------------------------------------------------
# End to end: production vs oracle
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rng_seed", [0, 1, 2, 3])
@pytest.mark.parametrize("duplicate", [True, False])
@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
def test_random_classes_match_oracle(rng_seed, duplicate, collect_limit):
    rng = np.random.default_rng(rng_seed)
    for _ in range(6):
        n = int(rng.integers(0, 120))
        k = int(rng.integers(1, 100))
        images = make_images(rng, n)
        check_class(images, k, duplicate, seed=int(rng.integers(-2**63, 2**63)),
                    collect_limit=collect_limit)


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
@pytest.mark.parametrize("duplicate", [True, False])
@pytest.mark.parametrize("n, k", [
    (1, 1), (1, 10), (10, 10), (11, 10), (500, 10), (500, 1), (7, 1), (3, 10), (4, 10),
    (5, 10), (9, 10), (2000, 37),
])
def test_sizes_match_oracle(n, k, duplicate, collect_limit):
    rng = np.random.default_rng(n * 1000 + k)
    copies, _ = check_class(make_images(rng, n), k, duplicate, collect_limit=collect_limit)
    assert len(copies) == n


def test_single_image_duplicated_k_times():
    copies, n_tied = check_class([(b"only", 0.5)], 10, duplicate=True)
    assert copies == [10]
    assert n_tied == 0


def test_n_equals_k_gives_one_copy_each():
    rng = np.random.default_rng(5)
    copies, _ = check_class(make_images(rng, 10), 10, duplicate=True)
    assert copies == [1] * 10


def test_n_k_plus_one_drops_exactly_the_lowest_key():
    images = [(f"i{i}".encode(), c) for i, c in enumerate([0.9, 0.1, 0.5, 0.7, 0.3, 0.8])]
    copies, _ = check_class(images, 5, duplicate=True)
    assert copies == [1, 0, 1, 1, 1, 1]


def test_k_one_picks_the_most_confident():
    images = [(f"i{i}".encode(), c) for i, c in enumerate([0.2, 0.95, 0.4, 0.94])]
    copies, _ = check_class(images, 1, duplicate=True)
    assert copies == [0, 1, 0, 0]


def test_duplication_favours_the_most_confident():
    images = [(b"a", 0.2), (b"b", 0.9), (b"c", 0.5)]
    copies, _ = check_class(images, 10, duplicate=True)  # q = 3, r = 1
    assert copies == [3, 4, 3]
    copies, _ = check_class(images, 11, duplicate=True)  # q = 3, r = 2
    assert copies == [3, 4, 4]


@pytest.mark.parametrize("duplicate", [True, False])
@pytest.mark.parametrize("k", [1, 5, 100])
def test_empty_class(duplicate, k):
    quota = balance.plan_quota(0, k, duplicate)
    assert quota == balance.Quota(0, 1, 0)
    assert (quota.written, quota.kept) == (0, 0)
    cut = balance.select_cut([], quota.extra)
    assert cut.threshold == balance.MAX_KEY
    plan = balance.ClassPlan(LABEL, quota, cut)
    assert plan.threshold_confidence is None
    assert plan.tie_copies(0) == []
    copies, n_tied = check_class([], k, duplicate)
    assert (copies, n_tied) == ([], 0)


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
@pytest.mark.parametrize("n, k, duplicate", [
    (50, 10, True), (50, 10, False), (7, 10, True), (7, 10, False), (10, 23, True), (200, 1, True),
])
def test_all_confidences_equal_ties_broken_by_hash(n, k, duplicate, collect_limit):
    images = [(f"same-{i}".encode(), 1.0) for i in range(n)]
    copies, n_tied = check_class(images, k, duplicate, collect_limit=collect_limit)
    assert n_tied == 0  # distinct ids: the hash separates every key


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
@pytest.mark.parametrize("rng_seed", [10, 11, 12])
@pytest.mark.parametrize("duplicate", [True, False])
def test_few_distinct_confidences(rng_seed, duplicate, collect_limit):
    rng = np.random.default_rng(rng_seed)
    for n, k in [(300, 40), (40, 300), (3, 7), (100, 99)]:
        confidences = rng.choice([0.25, 0.5, 0.75], size=n)
        check_class(make_images(rng, n, confidences), k, duplicate, collect_limit=collect_limit)


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
def test_zero_confidence(collect_limit):
    images = [(f"z{i}".encode(), 0.0) for i in range(20)] + [(b"pos", 1e-30)]
    copies, _ = check_class(images, 5, duplicate=True, collect_limit=collect_limit)
    assert copies[-1] == 1  # the only positive confidence outranks all zeros
    assert balance.priority_key(0.0, b"z0", SEED) >> 64 == 0


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
@pytest.mark.parametrize("n, k, duplicate, expected_tied", [
    (5, 3, True, 5),    # capped: 3 of 5 identical keys
    (5, 3, False, 5),
    (4, 10, True, 4),   # q = 2, r = 2: 2 of 4 identical keys get a third copy
    (3, 9, True, 0),    # r = 0: no cut at all
    (4, 4, True, 0),
    (1, 3, True, 0),
])
def test_identical_duplicate_ids_resolved_by_tie_path(n, k, duplicate, expected_tied,
                                                      collect_limit):
    images = [(b"dup", 1.0)] * n
    copies, n_tied = check_class(images, k, duplicate, collect_limit=collect_limit)
    assert n_tied == expected_tied
    assert sum(copies) == (k if duplicate else min(n, k))


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7, 8])
def test_identical_group_straddling_the_boundary(k, collect_limit):
    # Ranks: hi (0.9), then 4 identical "dup" (0.5), then two low images (0.1).
    images = ([(b"lo-a", 0.1), (b"dup", 0.5)] + [(b"hi", 0.9)] + [(b"dup", 0.5)] * 3
              + [(b"lo-b", 0.1)])
    copies, n_tied = check_class(images, k, duplicate=True, collect_limit=collect_limit)
    dup_copies = sorted(c for (image_id, _), c in zip(images, copies) if image_id == b"dup")
    if k < len(images):
        assert copies[2] == 1  # "hi" always kept
        assert sum(dup_copies) == min(max(k - 1, 0), 4)
        assert n_tied == (4 if 1 < k < 5 else 0)
    else:
        assert n_tied == (4 if 1 < k % 7 < 5 else 0)


@pytest.mark.parametrize("duplicate", [True, False])
def test_repeated_ids_with_random_confidences(duplicate):
    rng = np.random.default_rng(99)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        ids = [f"id{j}".encode() for j in rng.integers(0, 6, size=n)]
        confidences = rng.choice([0.3, 0.6, 1.0], size=n)
        images = list(zip(ids, (float(c) for c in confidences)))
        for collect_limit in COLLECT_LIMITS:
            check_class(images, int(rng.integers(1, 80)), duplicate, collect_limit=collect_limit)


def test_tie_copies_in_order():
    quota = balance.Quota(count=6, base_copies=2, extra=3)
    cut = balance.Cut(need=3, threshold=5, take_equal=2)
    plan = balance.ClassPlan(LABEL, quota, cut)
    assert plan.tie_copies(4) == [3, 3, 2, 2]
    assert plan.copies(6) == 3
    assert plan.copies(5) is None
    assert plan.copies(4) == 2


def test_copies_at_threshold_without_tie_is_not_selected():
    plan = balance.ClassPlan(LABEL, balance.Quota(10, 0, 3), balance.Cut(need=3, threshold=5))
    assert (plan.copies(6), plan.copies(5), plan.copies(4)) == (1, 0, 0)


# --------------------------------------------------------------------------------------------
# Radix select on raw keys
# --------------------------------------------------------------------------------------------

def counted_select(keys: list[int], need: int, collect_limit: int) -> tuple[balance.Cut, int]:
    """`select_cut`'s loop with the passes counted."""
    cut = balance.start_cut(need)
    passes = 0
    while not cut.done:
        in_bucket = [k for k in keys if cut.in_bucket(k)]
        cut = balance.advance(cut, balance.histogram(in_bucket, cut.bits), in_bucket,
                              collect_limit)
        passes += 1
    return cut, passes


def check_select(keys: list[int], need: int, collect_limit: int) -> tuple[balance.Cut, int]:
    cut = balance.select_cut(keys, need, collect_limit=collect_limit)
    assert_cut_semantics(keys, need, cut)
    counted, passes = counted_select(keys, need, collect_limit)
    assert counted == cut
    assert passes <= balance.MAX_PASSES
    return cut, passes


def low_bit_keys(rng: np.random.Generator, n: int, shared_bits: int, dup: bool) -> list[int]:
    """Keys sharing their `shared_bits` highest bits, random below (with repeats if `dup`)."""
    top = int(rng.integers(0, 2**62)) << 34 | int(rng.integers(0, 2**34))
    low_bits = balance.KEY_BITS - shared_bits
    prefix = (top >> low_bits) << low_bits
    span = 2 ** low_bits
    lows = [int(x) for x in rng.integers(0, min(span, n // 2 + 1) if dup else span, size=n)]
    return [prefix | (x % span) for x in lows]


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
@pytest.mark.parametrize("shared_bits", [80, 88, 94, 95])
@pytest.mark.parametrize("dup", [False, True])
def test_adversarial_low_bit_keys(shared_bits, dup, collect_limit):
    rng = np.random.default_rng(shared_bits * 7 + dup)
    for n in [2, 3, 17, 200]:
        keys = low_bit_keys(rng, n, shared_bits, dup)
        for need in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            cut, passes = check_select(keys, need, collect_limit)
            if collect_limit == 1 and 0 < need < n and len(set(keys)) > 1:
                # Every digit above the lowest is shared: only the last digit separates keys.
                assert passes == balance.KEY_BITS // balance.DIGIT_BITS
                assert cut.bits == balance.KEY_BITS


def test_deepest_refine_hits_full_key_tie_branch():
    prefix = 0xABCDEF << 72
    keys = [prefix | 5] * 3 + [prefix | 4, prefix | 6]
    cut, passes = check_select(keys, 2, collect_limit=1)
    assert passes == 6
    assert (cut.threshold, cut.take_equal, cut.bits) == (prefix | 5, 1, balance.KEY_BITS)
    assert cut.lowest_confidence_bits == (prefix | 5) >> 64


def test_collect_then_resolve_at_the_last_allowed_depth():
    # Four keys share 64 high bits, so no bucket is small enough before bits = 80; the boundary
    # bucket there holds 2 keys, is collected, and resolved on the sixth pass.
    prefix = 0x1234_5678_9ABC_DEF0 << 32
    keys = [prefix | 6 << 16 | 1, prefix | 5 << 16 | 2, prefix | 5 << 16 | 1, prefix | 4 << 16]
    cut, passes = check_select(keys, 2, collect_limit=2)
    assert passes == 6
    assert cut.threshold == (prefix | 5 << 16 | 2) - 1
    assert cut.take_equal == 0
    assert cut.bits == 80


def test_collect_resolves_ties_exactly():
    keys = [10, 9, 9, 9, 8]
    cut, passes = check_select(keys, 3, collect_limit=10)
    assert passes == 2  # one refine (collect), one resolve
    assert (cut.threshold, cut.take_equal, cut.lowest_confidence_bits) == (9, 2, 0)
    cut, _ = check_select(keys, 4, collect_limit=10)
    assert (cut.threshold, cut.take_equal) == (8, 0)


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
def test_extreme_keys(collect_limit):
    keys = [0, 0, 1, 2**16 - 1, 2**16, 2**80 - 1, 2**80, balance.MAX_KEY, balance.MAX_KEY - 1]
    for need in range(len(keys) + 1):
        check_select(keys, need, collect_limit)


@pytest.mark.parametrize("collect_limit", COLLECT_LIMITS)
def test_random_raw_keys(collect_limit):
    rng = np.random.default_rng(42)
    for _ in range(15):
        n = int(rng.integers(1, 300))
        keys = [int(a) << 64 | int(b) for a, b in zip(rng.integers(0, 2**32, size=n),
                                                     rng.integers(0, 2**63, size=n))]
        keys += keys[: int(rng.integers(0, n))]  # some exact duplicates
        for need in [0, 1, len(keys) // 2, len(keys)]:
            check_select(keys, need, collect_limit)


def test_select_errors():
    with pytest.raises(ValueError, match="need must be >= 0"):
        balance.start_cut(-1)
    with pytest.raises(ValueError, match="fewer than the 4 needed"):
        balance.select_cut([1, 2, 3], 4)
    with pytest.raises(ValueError, match="fewer than the 2 needed"):
        balance.refine(balance.Cut(need=2), {0: (1, 5)}, collect_limit=10)
    with pytest.raises(ValueError, match="fewer than the 3 needed"):
        balance.resolve(balance.Cut(need=3, collect=True), [1, 2])


def test_start_cut_and_advance_on_done_cut():
    cut = balance.start_cut(0)
    assert cut.done and cut.threshold == balance.MAX_KEY and cut.take_equal == 0
    assert balance.advance(cut, None, None, 10) is cut
    assert not balance.start_cut(3).done


def test_histogram_and_digit():
    key = 0x0001_0002_0003_0004_0005_0006
    assert [balance.digit(key, b) for b in range(0, 96, 16)] == [1, 2, 3, 4, 5, 6]
    hist = balance.histogram([5 << 80 | 9, 5 << 80 | 3, 7 << 80], bits=0)
    assert hist == {5: (2, 5 << 16), 7: (1, 7 << 16)}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, k, duplicate, expected, written, kept", [
    (3, 10, True, (3, 3, 1), 10, 3),
    (20, 10, True, (20, 0, 10), 10, 10),
    (20, 10, False, (20, 0, 10), 10, 10),
    (3, 10, False, (3, 1, 0), 3, 3),
    (10, 10, True, (10, 1, 0), 10, 10),
    (11, 10, True, (11, 0, 10), 10, 10),
    (1, 1, True, (1, 1, 0), 1, 1),
    (1, 7, True, (1, 7, 0), 7, 1),
    (4, 10, True, (4, 2, 2), 10, 4),
    (0, 10, True, (0, 1, 0), 0, 0),
    (0, 10, False, (0, 1, 0), 0, 0),
])
def test_plan_quota(n, k, duplicate, expected, written, kept):
    quota = balance.plan_quota(n, k, duplicate)
    assert (quota.count, quota.base_copies, quota.extra) == expected
    assert quota.written == written
    assert quota.kept == kept


def test_plan_quota_defaults_to_duplicate():
    assert balance.plan_quota(3, 10) == balance.Quota(3, 3, 1)


def test_plan_quota_rejects_bad_arguments():
    with pytest.raises(ValueError, match="images_per_class"):
        balance.plan_quota(3, 0)
    with pytest.raises(ValueError, match="count"):
        balance.plan_quota(-1, 5)


def test_id_hash_is_stable_and_salted():
    h = balance.id_hash(b"image-1", 0)
    assert h == balance.id_hash(b"image-1", 0)
    assert 0 <= h < 2**63
    assert h == int.from_bytes(
        hashlib.blake2b(b"image-1", digest_size=8, key=bytes(8)).digest(), "big") >> 1
    assert balance.id_hash(b"image-1", 1) != h
    assert balance.id_hash(b"image-1", -1) not in (h, balance.id_hash(b"image-1", 1))
    assert balance.id_hash(b"image-2", 0) != h


def test_priority_key_layout_matches_independent_construction():
    for conf, image_id, seed in [(0.5, b"a", 0), (1.0, b"xyz", 7), (0.0, b"", -3),
                                 (0.123456789, b"\x00\xff", 2**62)]:
        conf_bits = struct.unpack(">I", struct.pack(">f", conf))[0]
        salt = seed.to_bytes(8, "little", signed=True)
        hashed = int.from_bytes(
            hashlib.blake2b(image_id, digest_size=8, key=salt).digest(), "big") >> 1
        assert balance.priority_key(conf, image_id, seed) == conf_bits << 64 | hashed


def test_priority_key_orders_by_confidence_first():
    confidences = [0.0, 1e-40, 1e-30, 0.1, 0.1000001, 0.5, 0.99, 1.0, 2.0]
    keys = [balance.priority_key(c, f"id{i}".encode(), SEED) for i, c in enumerate(confidences)]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert balance.priority_key(0.2, b"a", SEED) > balance.priority_key(0.1, b"b", SEED)
    assert balance.priority_key(0.2, b"b", SEED) > balance.priority_key(0.1, b"a", SEED)


def test_priority_key_same_confidence_follows_hash_and_seed():
    ids = [f"tie-{i}".encode() for i in range(30)]

    def order(seed):
        return sorted(ids, key=lambda i: balance.priority_key(0.75, i, seed))

    assert order(1) == sorted(ids, key=lambda i: balance.id_hash(i, 1))
    assert order(1) == order(1)
    assert order(1) != order(2)
    keys = {balance.priority_key(0.75, i, 1) >> 64 for i in ids}
    assert keys == {balance.priority_key(0.75, b"", 0) >> 64}


def test_confidences_equal_in_float32_tie_on_confidence_bits():
    a, b = 0.1, 0.1 + 1e-12
    assert a != b and np.float32(a) == np.float32(b)
    assert balance.priority_key(a, b"x", 0) >> 64 == balance.priority_key(b, b"y", 0) >> 64


@pytest.mark.parametrize("conf", [0.0, 1e-45, 1e-38, 0.1, 0.3333, 0.5, 0.999999, 1.0, 3.4e38])
def test_key_confidence_round_trips_float32(conf):
    key = balance.priority_key(conf, b"img", 5)
    assert balance.key_confidence(key) == float(np.float32(conf))
    f32 = np.float32(conf)
    assert np.float32(balance.key_confidence(key)).view(np.uint32) == f32.view(np.uint32)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [float("nan"), -1e-9, -0.5, -1.0, float("inf"), float("-inf"),
                                 1e39])
def test_priority_key_rejects_invalid_confidence(bad):
    with pytest.raises(ValueError, match="confidence must be finite and >= 0"):
        balance.priority_key(bad, b"img", 0)


def test_negative_zero_ranks_like_zero():
    assert balance.priority_key(-0.0, b"img", 0) == balance.priority_key(0.0, b"img", 0)
    assert balance.priority_key(-0.0, b"img", 0) < balance.priority_key(1e-30, b"img", 0)


@pytest.mark.parametrize("collect_limit", [1, 2, balance.DEFAULT_COLLECT_LIMIT])
@pytest.mark.parametrize("rng_seed", [0, 1, 2])
def test_threshold_confidence_is_kth_largest_when_capped(rng_seed, collect_limit):
    rng = np.random.default_rng(rng_seed)
    n, k = 200, 17
    confidences = rng.choice(np.round(rng.random(40), 3), size=n)
    images = make_images(rng, n, confidences)
    keys = [balance.priority_key(c, i, SEED) for i, c in images]
    quota = balance.plan_quota(n, k)
    plan = balance.ClassPlan(LABEL, quota, balance.select_cut(keys, quota.extra, collect_limit))
    kth = sorted((float(np.float32(c)) for c in confidences), reverse=True)[k - 1]
    assert plan.threshold_confidence == kth


def test_threshold_confidence_identical_keys_capped():
    keys = [balance.priority_key(0.625, b"same", 0)] * 5
    quota = balance.plan_quota(5, 2)
    plan = balance.ClassPlan(LABEL, quota, balance.select_cut(keys, quota.extra, collect_limit=1))
    assert plan.cut.take_equal == 2
    assert plan.threshold_confidence == 0.625


@pytest.mark.parametrize("n, k, duplicate", [(3, 10, True), (3, 10, False), (10, 10, True),
                                             (5, 5, False), (4, 8, True)])
def test_threshold_confidence_none_when_not_capped(n, k, duplicate):
    rng = np.random.default_rng(n + k)
    images = make_images(rng, n)
    keys = [balance.priority_key(c, i, SEED) for i, c in images]
    quota = balance.plan_quota(n, k, duplicate)
    plan = balance.ClassPlan(LABEL, quota, balance.select_cut(keys, quota.extra))
    assert plan.threshold_confidence is None


# --------------------------------------------------------------------------------------------
# The column versions the pipeline runs, against the per-key ones
# --------------------------------------------------------------------------------------------

def split_keys(keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([k >> 64 for k in keys], dtype=np.uint64),
            np.array([k & (2**64 - 1) for k in keys], dtype=np.uint64))


@pytest.mark.parametrize("bits", range(0, balance.KEY_BITS, balance.DIGIT_BITS))
def test_column_digits_buckets_and_histograms_match_per_key(bits):
    rng = np.random.default_rng(bits)
    base = [int(a) << 64 | int(b) for a, b in zip(rng.integers(0, 2**32, 40),
                                                 rng.integers(0, 2**63, 40))]
    # Keys sharing the first key's `bits` high bits, plus others, plus exact repeats.
    shift = balance.KEY_BITS - bits
    keys = base + [(base[0] >> shift << shift) | (k & ((1 << shift) - 1)) for k in base[1:20]]
    keys += keys[:5]
    hi, lo = split_keys(keys)
    prefix = base[0] >> shift
    mask = balance.bucket_mask(hi, lo, bits, prefix)
    assert mask.tolist() == [balance.Cut(need=1, prefix=prefix, bits=bits).in_bucket(k)
                             for k in keys]
    digits = balance.digits_of(hi[mask], lo[mask], bits)
    assert digits.tolist() == [balance.digit(k, bits) for k, m in zip(keys, mask) if m]
    in_bucket = [k for k, m in zip(keys, mask) if m]
    hist = balance.as_histogram(*balance.reduce_histogram(
        digits, np.ones(len(digits), dtype=np.int64), hi[mask]))
    assert hist == balance.histogram(in_bucket, bits)


@pytest.mark.parametrize("k, duplicate", [(1, True), (7, True), (30, True), (200, True),
                                          (7, False)])
def test_copies_for_rows_match_the_plan_per_key(k, duplicate):
    rng = np.random.default_rng(k)
    confidences = np.float32(rng.choice([0.4, 0.7, 1.0], size=60))
    ids = [b"id-%d" % (i % 25) for i in range(60)]  # repeats: full-key ties
    keys = [balance.priority_key(c, i, SEED) for c, i in zip(confidences, ids)]
    quota = balance.plan_quota(len(keys), k, duplicate)
    plan = balance.ClassPlan(3, quota, balance.select_cut(keys, quota.extra, collect_limit=4))
    hashed = []

    def hashes(positions):
        hashed.extend(positions.tolist())
        return balance.id_hashes([ids[p] for p in positions], SEED)

    labels = np.full(60, 3)
    labels[::7] = -1  # rows that take no part get nothing
    copies = balance.copies_for_rows(labels, balance.confidence_bits(confidences), hashes,
                                     {3: plan})
    expected, tied = [], 0
    for key, label in zip(keys, labels):
        c = plan.copies(key) if label >= 0 else 0
        if c is None:
            c = plan.tie_copies(tied + 1)[tied]
            tied += 1
        expected.append(c)
    assert copies.tolist() == expected
    threshold_conf = plan.cut.threshold >> 64
    assert all(keys[p] >> 64 == threshold_conf for p in hashed)  # only the boundary is hashed


@pytest.mark.parametrize("quota, most", [
    (balance.Quota(count=3, base_copies=4, extra=1), 5),   # duplicated, one extra copy
    (balance.Quota(count=4, base_copies=3, extra=0), 3),   # K a multiple of n
    (balance.Quota(count=10, base_copies=0, extra=5), 1),  # capped
    (balance.Quota(count=0, base_copies=0, extra=0), 0),
])
def test_max_copies_of_one_image(quota, most):
    assert quota.max_copies == most
