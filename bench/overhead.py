"""What the job costs over a bare loop: label_and_balance end to end vs decode + predict alone.

    python -m bench.overhead [--work_dir /tmp/ns-bench-e2e] [--limit 0] [--decoders pillow,tf]
                             [--repeat_input 1] [--decode_ahead 2]

On the 50,000 unlabeled Fashion-MNIST images of `bench.end_to_end` (8 TFRecord files, 28x28
PNGs) with its tiny CNN teacher (a light teacher, so framework overhead is not hidden behind
model time), each in a fresh process, one after the other:

- **bare loop**: what a user would write by hand with the same teacher and images —
  `tf.data` reads the files, parses and decodes (`decode_and_resize`, parallel map), batches of
  `--batch_size`, the teacher's fixed-shape function (`ns_data.teacher.LoadedTeacher`), softmax
  and argmax. Nothing is written.
- **job**: `python -m beam_jobs.label_and_balance` on DirectRunner, keeping about every image
  without duplication (`--min_confidence=0`, K = the largest class, `--no_duplicate`), so it
  does everything the bare loop does plus the predictions table, the selection and the shards;
  once per `--decoders` entry and per `--decode_ahead` entry (batches decoded on a second
  thread while the teacher runs).

Both walls include Python and TensorFlow start-up and loading the teacher; the bare loop also
prints its loop alone. Every command runs `--repeats` times, interleaved; each "vs bare" is
the bare loop's median over the job's (so for the wall: the job's images/s over the loop's).
CPU s is the process's user + system time: the work done, steadier than the wall on a shared
machine (time spent waiting for a core is not in it) but blind to how well the work overlaps,
which the wall shows. `--repeat_input N` feeds both every image N times (copies with their own
ids, written once next to the input), to see how the ratio moves as fixed costs are amortised
over a larger input.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bare_loop(pattern: str, teacher_path: str, batch_size: int) -> None:
    """Decode + predict every image in a plain loop; prints a JSON line of counts and times."""
    start = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    from ns_data import schema, teacher
    from ns_data.images import decode_and_resize

    spec = teacher.inspect_teacher(teacher_path, batch_size=batch_size)
    model = teacher.LoadedTeacher(spec)
    features = schema.tf_feature_spec()

    def decode(serialized):
        parsed = tf.io.parse_single_example(serialized, features)
        return decode_and_resize(parsed[schema.IMAGE_ENCODED], spec.image)

    files = sorted(tf.io.gfile.glob(pattern))
    images = (tf.data.TFRecordDataset(files)
              .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
              .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    loop_start = time.perf_counter()
    count, labels = 0, np.zeros(spec.num_classes, np.int64)
    for batch in images:
        batch = batch.numpy()
        n = len(batch)
        padded = np.zeros((batch_size, *spec.image.shape), np.uint8)
        padded[:n] = batch
        probs = teacher.to_probabilities(model(teacher.scale_pixels(padded, spec))[:n],
                                         spec.outputs, spec.temperature)
        labels += np.bincount(probs.argmax(axis=1), minlength=spec.num_classes)
        count += n
    end = time.perf_counter()
    print(json.dumps({"images": count, "loop_s": end - loop_start, "in_process_s": end - start,
                      "per_class": labels.tolist()}))


def repeated_input(pattern: str, times: int) -> str:
    """A copy of the input with every record `times` times, each copy with its own id
    (`<id>~<k>`); made once next to the input. Returns its pattern."""
    import tensorflow as tf

    from ns_data import schema
    from ns_data.read import parse_image_record
    from ns_data.tfrecord import iter_records

    directory = os.path.join(os.path.dirname(pattern), f"repeated-x{times}")
    if not os.path.exists(os.path.join(directory, "_DONE")):
        os.makedirs(directory, exist_ok=True)
        for path in sorted(tf.io.gfile.glob(pattern)):
            name = os.path.basename(path).removesuffix(".tfrecord")
            for k in range(times):
                with tf.io.TFRecordWriter(os.path.join(directory, f"{name}-{k}.tfrecord")) as out:
                    for record in iter_records(path):
                        image_id, encoded = parse_image_record(record)
                        out.write(schema.image_example(encoded, b"%s~%d" % (image_id, k)))
        open(os.path.join(directory, "_DONE"), "w").close()
    return os.path.join(directory, "*.tfrecord")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one command in a fresh process."""
    env = {**os.environ, "PYTHONPATH": _ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start, cpu = time.perf_counter(), _cpu_seconds()
    run = subprocess.run([sys.executable, *argv], cwd=_ROOT, env=env, capture_output=True,
                         text=True)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if run.returncode:
        raise RuntimeError(f"{argv[:2]} failed:\n{run.stderr[-3000:]}")
    return seconds, cpu, run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="/tmp/ns-bench-e2e",
                        help="Where the data, teacher and outputs go (shared with "
                        "bench.end_to_end, reused).")
    parser.add_argument("--limit", type=int, default=0,
                        help="Use only the first LIMIT train images (0: all; 50,000 unlabeled).")
    parser.add_argument("--batch_size", type=int, default=64, help="Teacher batch, both sides.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Runs of every command, interleaved; medians are reported.")
    parser.add_argument("--decoders", default="pillow,tf",
                        help="Comma-separated --decoder values to run the job with.")
    parser.add_argument("--decode_ahead", default="2",
                        help="Comma-separated --decode_ahead values to run the job with.")
    parser.add_argument("--repeat_input", type=int, default=1,
                        help="Feed every image this many times (copies get their own ids), to "
                        "amortise fixed start-up costs over a larger input.")
    parser.add_argument("--bare", nargs=2, metavar=("PATTERN", "TEACHER"),
                        help=argparse.SUPPRESS)  # the bare loop's own process
    args = parser.parse_args()
    if args.bare:
        bare_loop(*args.bare, args.batch_size)
        return
    sys.path.insert(0, _ROOT)
    from bench.end_to_end import prepare
    pattern, teacher = prepare(args.work_dir, args.limit)
    if args.repeat_input > 1:
        pattern = repeated_input(pattern, args.repeat_input)

    jobs = [(d, a) for d in args.decoders.split(",") for a in args.decode_ahead.split(",")]
    bare_walls, job_walls, rows = [], {job: [] for job in jobs}, {}
    bare_cpu, job_cpu = [], {job: [] for job in jobs}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits every command
        seconds, cpu, out = _run(["-m", "bench.overhead", "--bare", pattern, teacher,
                                  f"--batch_size={args.batch_size}"])
        bare = json.loads(out.strip().splitlines()[-1])
        bare_walls.append(seconds)
        bare_cpu.append(cpu)
        images = bare["images"]
        rows["bare loop (tf.data, parallel decode)"] = bare["per_class"]
        for decoder, ahead in job_walls:
            name = f"--decoder={decoder} --decode_ahead={ahead}"
            out_dir = os.path.join(args.work_dir, "runs", f"overhead-{decoder}-{ahead}")
            seconds, cpu, _ = _run([
                "-m", "beam_jobs.label_and_balance", f"--input={pattern}",
                f"--teacher={teacher}", f"--output_dir={out_dir}", "--min_confidence=0",
                f"--images_per_class={images}", "--no_duplicate", "--label_type=hard",
                "--num_shards=16", f"--batch_size={args.batch_size}", f"--decoder={decoder}",
                f"--decode_ahead={ahead}", "--overwrite", "--runner=DirectRunner"])
            job_walls[decoder, ahead].append(seconds)
            job_cpu[decoder, ahead].append(cpu)
            with open(os.path.join(out_dir, "stats.json")) as f:
                stats = json.load(f)
            assert stats["totals"]["read"] == images, stats["totals"]
            rows[name] = [c["above_threshold"] for c in stats["classes"]]
    bare_s, bare_c = statistics.median(bare_walls), statistics.median(bare_cpu)
    print(f"{images} images, teacher {teacher}, batch {args.batch_size}; median of "
          f"{args.repeats} interleaved runs; bare loop alone {bare['loop_s']:.1f} s "
          f"({images / bare['loop_s']:.0f} images/s) in its last run\n")
    print(f"{'':<42}{'wall s':>8}{'images/s':>10}{'vs bare':>9}{'CPU s':>8}{'vs bare':>9}"
          "   all walls")
    walls = {"bare loop (tf.data, parallel decode)": (bare_walls, bare_cpu),
             **{f"--decoder={d} --decode_ahead={a}": (w, job_cpu[d, a])
                for (d, a), w in job_walls.items()}}
    for name, (seconds, cpu) in walls.items():
        median, median_cpu = statistics.median(seconds), statistics.median(cpu)
        print(f"{name:<42}{median:>8.1f}{images / median:>10.0f}{bare_s / median:>9.2f}"
              f"{median_cpu:>8.1f}{bare_c / median_cpu:>9.2f}   "
              + " ".join(f"{s:.1f}" for s in seconds))
    print("\nimages per predicted class:")
    for name, per_class in rows.items():
        print(f"  {name:<42}{per_class}")


if __name__ == "__main__":
    main()
