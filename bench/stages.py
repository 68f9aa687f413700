"""Where a DirectRunner job's wall time goes: seconds per fused stage of Beam's FnApiRunner.

    python -m bench.stages [--top 12] -- python-module job flags...
    python -m bench.stages -- beam_jobs.label_and_balance --input='data/*.tfrecord' \\
        --teacher=models/teacher --output_dir=/tmp/out --overwrite

Runs the job's module in this process with `FnApiRunner._execute_bundle` timed per stage, and
prints, after the job, the stages by wall time (a stage's name lists the steps Beam fused into
it, e.g. `ReadImages/...` + `TeacherInference/...` for the teacher pass) with the time outside
any stage (imports, building the graph, the launch check, writing stats.json). Each stage also
gets the process's CPU seconds (every thread's) during its bundles: CPU s over wall s is how many
cores the stage kept busy. Everything runs as the job runs, on the job's threads; only the
bundle calls are timed. A private method of
Beam 2.77 is wrapped: a benchmark tool, not something a job relies on.
"""
from __future__ import annotations

import argparse
import collections
import runpy
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=12, help="Stages to list (the slowest).")
    parser.add_argument("--name_chars", type=int, default=110,
                        help="Characters of each stage's name to print.")
    parser.add_argument("job", nargs=argparse.REMAINDER,
                        help="`--` then the job's module and its flags.")
    args = parser.parse_args()
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job:
        parser.error("give the job after --, e.g. -- beam_jobs.label_and_balance --input=...")

    from apache_beam.runners.portability.fn_api_runner import fn_runner

    seconds: dict[str, float] = collections.defaultdict(float)
    cpu: dict[str, float] = collections.defaultdict(float)
    bundles: collections.Counter = collections.Counter()
    execute = fn_runner.FnApiRunner._execute_bundle

    def timed(self, context, bundle_manager, bundle_input):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return execute(self, context, bundle_manager, bundle_input)
        finally:
            seconds[bundle_manager.stage.name] += time.perf_counter() - start
            cpu[bundle_manager.stage.name] += time.process_time() - start_cpu
            bundles[bundle_manager.stage.name] += 1

    fn_runner.FnApiRunner._execute_bundle = timed
    start, start_cpu = time.perf_counter(), time.process_time()
    sys.argv = [job[0], *job[1:]]
    try:
        runpy.run_module(job[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code:
            raise
    total, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    staged, staged_cpu = sum(seconds.values()), sum(cpu.values())
    print(f"\n{job[0]}: {total:.1f} s in this process ({total_cpu:.1f} CPU s), {staged:.1f} s "
          f"in {len(seconds)} stages ({staged_cpu:.1f} CPU s), {total - staged:.1f} s outside "
          f"them ({total_cpu - staged_cpu:.1f} CPU s)")
    print(f"{'wall s':>8}{'share':>7}{'CPU s':>8}{'cores':>6}{'bundles':>8}  stage (fused steps)")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{s:8.2f}{100 * s / total:6.1f}%{cpu[name]:8.2f}{cpu[name] / max(s, 1e-9):6.2f}"
              f"{bundles[name]:8d}  {name[:args.name_chars]}")


if __name__ == "__main__":
    main()
