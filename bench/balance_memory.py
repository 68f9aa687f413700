"""Peak memory of the per-class top-K threshold: streaming radix select vs holding the class.

    python -m bench.balance_memory [--sizes 100000 400000 1600000] [--k 130000]

For one class of n images, the pipeline finds its top-K threshold in passes over a stream of
keys, holding one digit histogram or one bounded bucket at a time (`ns_data.balance`). The naive
alternative — group the class, sort it — holds all n keys. Both run here side by side on the
same stream, peak memory measured with tracemalloc; the printed ratio is naive / streaming. Keys
get confidence ties on purpose (confidences rounded to 3 decimals, 10% exactly 1.0), the hard
case for a histogram on confidence alone.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np

from ns_data import balance

_CHUNK = 50_000


def key_stream(n: int, seed: int) -> Iterator[int]:
    """n priority keys, generated in chunks so the stream itself costs no memory."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        conf = np.round(rng.uniform(0.3, 1.0, m), 3).astype(np.float32)
        conf[rng.random(m) < 0.1] = 1.0
        hashes = rng.integers(0, 2**63, m, dtype=np.int64)
        for c, h in zip(conf.view(np.uint32).tolist(), hashes.tolist()):
            yield (c << 64) | h


def streaming_threshold(n: int, need: int, seed: int) -> tuple[balance.Cut, int]:
    """The pipeline's passes, each over a fresh stream; returns the cut and the pass count."""
    cut, passes = balance.start_cut(need), 0
    while not cut.done:
        in_bucket = (k for k in key_stream(n, seed) if cut.in_bucket(k))
        if cut.collect:
            cut = balance.resolve(cut, list(in_bucket))
        else:
            cut = balance.refine(cut, balance.histogram(in_bucket, cut.bits),
                                 balance.DEFAULT_COLLECT_LIMIT)
        passes += 1
    return cut, passes


def naive_threshold(n: int, need: int, seed: int) -> int:
    """Holds the whole class and sorts it; returns the need-th largest key."""
    keys = list(key_stream(n, seed))
    keys.sort(reverse=True)
    return keys[need - 1]


def measure(fn, *args):
    tracemalloc.start()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000],
                        help="Class sizes n to measure.")
    parser.add_argument("--k", type=int, default=130_000, help="Images per class K.")
    args = parser.parse_args()
    print(f"{'n':>10} {'passes':>6} {'streaming MiB':>14} {'naive MiB':>10} "
          f"{'naive/streaming':>16} {'stream s':>9} {'naive s':>8}")
    for n in args.sizes:
        need = min(args.k, n)
        (cut, passes), peak_s, secs_s = measure(streaming_threshold, n, need, 0)
        kth, peak_n, secs_n = measure(naive_threshold, n, need, 0)
        assert cut.lowest_confidence_bits == kth >> 64, "radix select disagrees with sorting"
        print(f"{n:>10} {passes:>6} {peak_s / 2**20:>14.2f} {peak_n / 2**20:>10.2f} "
              f"{peak_n / peak_s:>16.1f} {secs_s:>9.2f} {secs_n:>8.2f}")


if __name__ == "__main__":
    main()
