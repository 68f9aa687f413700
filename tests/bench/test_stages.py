"""bench.stages: a DirectRunner job's wall time, per fused stage, after the job's own output."""
from __future__ import annotations

import os
import re
import subprocess
import sys

JOB = '''
import sys
import time
import apache_beam as beam
from beam_jobs import cli

def slow(kv):
    time.sleep(0.3)
    return kv[0], sum(kv[1])

if __name__ == "__main__":
    pipeline = cli.new_pipeline(cli.pipeline_options(["--runner=DirectRunner"]))
    _ = (pipeline | beam.Create([(k % 3, k) for k in range(30)]) | "Group" >> beam.GroupByKey()
         | "Slow" >> beam.Map(slow) | beam.Map(print))
    pipeline.run().wait_until_finish()
    print("job args", sys.argv[1:])
'''


def test_prints_each_stage_and_the_time_outside_them(tmp_path):
    (tmp_path / "tiny_job.py").write_text(JOB)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), repo])}
    run = subprocess.run([sys.executable, "-m", "bench.stages", "--top", "3", "--",
                          "tiny_job", "--flag=1"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "job args ['--flag=1']" in out  # the job ran as `python -m tiny_job --flag=1`
    assert sorted(re.findall(r"^\(\d, \d+\)$", out, re.M)) == ["(0, 135)", "(1, 145)", "(2, 155)"]
    total, total_cpu, staged, stages, staged_cpu, outside, outside_cpu = re.search(
        r"tiny_job: ([\d.]+) s in this process \(([\d.]+) CPU s\), ([\d.]+) s in (\d+) stages "
        r"\(([\d.]+) CPU s\), ([\d.]+) s outside them \(([\d.]+) CPU s\)", out).groups()
    assert abs(float(total) - float(staged) - float(outside)) < 0.11
    assert abs(float(total_cpu) - float(staged_cpu) - float(outside_cpu)) < 0.11
    rows = re.findall(r"^ *([\d.]+) +([\d.]+)% +([\d.]+) +([\d.]+) +(\d+)  (.+)$", out, re.M)
    assert len(rows) == 3 and int(stages) >= 3
    seconds = [float(row[0]) for row in rows]
    assert seconds == sorted(seconds, reverse=True)
    # Three groups, each 0.3 s in the step after the GroupByKey: the slowest stage is that one,
    # and it sleeps, so it keeps a core busy a small part of its wall time.
    assert "Group/Read" in rows[0][5] and "Slow" in rows[0][5] and seconds[0] >= 0.9
    slow_cpu, slow_cores = float(rows[0][2]), float(rows[0][3])
    assert slow_cpu < 0.5 * seconds[0] and abs(slow_cores - slow_cpu / seconds[0]) < 0.01
