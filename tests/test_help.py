"""Every entry point answers `--help` without importing TensorFlow, which takes seconds.

A module on an entry point's import path that imports TensorFlow (or Keras) at the top again
fails this test: it should read TensorFlow through `ns_data.lazy`, or be imported inside the
function that needs it.
"""
from __future__ import annotations

import os
import subprocess
import sys

ENTRY_POINTS = ("beam_jobs.label_and_balance", "beam_jobs.rebalance", "beam_jobs.reshard",
                "beam_jobs.report", "beam_jobs.seeds_table",
                "beam_jobs.iterate", "beam_jobs.prepare_fashion_mnist", "beam_jobs.demo",
                "ns_train.evaluate", "ns_train.train")

# Runs each entry point as `python -m NAME --help` does, all in one process (one Beam import),
# then names the TensorFlow and Keras modules it has imported.
_RUN_HELP = """
import runpy, sys, warnings
warnings.simplefilter("ignore", RuntimeWarning)  # runpy: a module imported before it runs
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        print(f"exit {name} {e.code or 0}")
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""


def test_every_entry_points_help_answers_without_importing_tensorflow():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _RUN_HELP, *ENTRY_POINTS], cwd=root,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("exit ")] == [
        f"exit {name} 0" for name in ENTRY_POINTS]
    assert sum(line.startswith("usage: ") for line in lines) == len(ENTRY_POINTS)
    assert "--predictions_dir" in done.stdout and "--max_failure_fraction" in done.stdout
    assert lines[-1] == "imported: []", lines[-1][:2000]
