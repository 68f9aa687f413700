"""label_and_balance end to end on 50,000 real Fashion-MNIST images: today's code vs the table path.

    python -m bench.end_to_end [--limit 0] [--work_dir /tmp/ns-bench-e2e] [--base 25259ea]

Prepares the Fashion-MNIST splits (Debian's dataset-fashion-mnist; 50,000 unlabeled images in 8
TFRecord files) and a tiny CNN teacher once, then runs the job's command line, DirectRunner,
K = 5,000, soft labels, 8 shards, with the scores/predictions directory kept, for the code at
`--base` (a `git archive` into the work dir) and this working tree, one after the other in
fresh processes. For each: wall time; peak bytes on disk under the run's directories while it
runs (polled every 0.1 s: shards, pieces, temp files, scores or table); what is left at the
end; the records written per class (which must agree); the kept directory's bytes per image.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def disk_bytes(directories: list[str]) -> int:
    total = 0
    for directory in directories:
        for dirpath, _, names in os.walk(directory):
            for name in names:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass  # a temp file renamed or removed while we walk
    return total


def run_job(tree: str, argv: list[str], watched: list[str]) -> tuple[float, int]:
    """Runs the job from `tree`; returns (seconds, peak bytes under `watched`)."""
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "3"}
    peak, done = [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], disk_bytes(watched))
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    start = time.perf_counter()
    watcher.start()
    run = subprocess.run([sys.executable, "-m", "beam_jobs.label_and_balance", *argv], cwd=tree,
                         env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    if run.returncode:
        raise RuntimeError(f"job in {tree} failed:\n{run.stderr[-3000:]}")
    return seconds, peak[0]


def prepare(work_dir: str, limit: int) -> tuple[str, str]:
    """The unlabeled input pattern and the teacher, made once in `work_dir`."""
    sys.path.insert(0, _ROOT)
    from beam_jobs import prepare_fashion_mnist
    from ns_train.tiny_teacher import train_tiny_teacher
    data = os.path.join(work_dir, f"data-{limit}")
    if not os.path.exists(os.path.join(data, "splits.json")):
        held = min(5000, limit // 6) if limit else 5000  # 5,000 labeled + 5,000 holdout
        prepare_fashion_mnist.prepare(data, num_labeled=held, num_holdout=held, limit=limit)
    teacher = os.path.join(work_dir, f"teacher-{limit}")
    if not os.path.exists(os.path.join(teacher, "saved_model.pb")):
        train_tiny_teacher(os.path.join(data, "labeled-00000-of-00001.tfrecord"), teacher,
                           epochs=5, seed=0)
    return os.path.join(data, "unlabeled-*.tfrecord"), teacher


def old_tree(base: str, directory: str) -> str:
    if not os.path.exists(os.path.join(directory, "beam_jobs")):
        os.makedirs(directory, exist_ok=True)
        archive = subprocess.run(["git", "-C", _ROOT, "archive", base], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="/tmp/ns-bench-e2e",
                        help="Where the data, teacher, trees and outputs go (reused).")
    parser.add_argument("--limit", type=int, default=0,
                        help="Use only the first LIMIT train images (0: all 60,000, of which "
                        "50,000 are unlabeled), for a quick try.")
    parser.add_argument("--base", default="25259ea",
                        help="The commit measured as today's code (before the table path).")
    parser.add_argument("--images_per_class", type=int, default=5000, help="K.")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    pattern, teacher = prepare(args.work_dir, args.limit)
    trees = {f"today ({args.base})": old_tree(args.base, os.path.join(args.work_dir, "old")),
             "predictions table": _ROOT}
    results = {}
    for name, tree in trees.items():
        out = os.path.join(args.work_dir, "runs", name.split()[0])
        kept = out + "-kept"
        argv = [f"--input={pattern}", f"--teacher={teacher}", f"--output_dir={out}",
                f"--scores_dir={kept}", f"--images_per_class={args.images_per_class}",
                "--num_shards=8", "--batch_size=256", "--label_type=soft", "--seed=0",
                "--overwrite", "--runner=DirectRunner"]
        seconds, peak = run_job(tree, argv, [out, kept])
        with open(os.path.join(out, "stats.json")) as f:
            stats = json.load(f)
        results[name] = {"seconds": seconds, "peak": peak, "final": disk_bytes([out, kept]),
                         "kept": disk_bytes([kept]), "read": stats["totals"]["read"],
                         "written": [c["written"] for c in stats["classes"]]}
    (today, a), (new, b) = results.items()
    assert a["written"] == b["written"], f"per-class records differ: {a['written']} {b['written']}"
    print(f"{a['read']} images, written per class {a['written']}\n")
    print(f"{'code':<20}{'wall s':>8}{'peak disk MiB':>15}{'final MiB':>11}"
          f"{'kept dir B/image':>18}")
    for name, r in results.items():
        print(f"{name:<20}{r['seconds']:>8.1f}{r['peak'] / 2**20:>15.1f}{r['final'] / 2**20:>11.1f}"
              f"{r['kept'] / r['read']:>18.1f}")
    print(f"{'new / today':<20}{b['seconds'] / a['seconds']:>8.2f}{b['peak'] / a['peak']:>15.2f}"
          f"{b['final'] / a['final']:>11.2f}{b['kept'] / a['kept']:>18.2f}")


if __name__ == "__main__":
    main()
