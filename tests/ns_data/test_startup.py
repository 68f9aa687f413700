"""ns_data.startup: TensorFlow's and Beam's start-up lines stay out of a command's output unless
NS_VERBOSE_STARTUP=1; what else is printed meanwhile, and everything of a failed import, stays.

Each case runs in its own process: what is filtered is file descriptor 2 during TensorFlow's
first import, which this test process has long done.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from ns_data import startup
from tests.data_files import png

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CUDA = ("I0000 00:00:1796218328.091957    8319 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.")


def python(code: str, env: dict[str, str] | None = None, path: str = "",
           check: bool = True) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", startup.VERBOSE_ENV)}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, REPO) if p)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_the_known_lines_are_chatter_and_nothing_else_is():
    assert startup.is_chatter(ABSL) and startup.is_chatter(CUDA)
    assert startup.is_chatter(
        "I0000 00:00:1796218328.091658    8319 port.cc:153] oneDNN custom operations are on. You "
        "may see slightly different numerical results")
    assert not startup.is_chatter("E0000 00:00:1796218328.1 8319 cudart_stub.cc:31] Could not "
                                  "find cuda drivers")  # an error, not the INFO line
    assert not startup.is_chatter("Traceback (most recent call last):")
    assert not startup.is_chatter(f"prefix {ABSL}")


def test_a_job_prints_none_of_tensorflows_or_beams_start_up_lines_unless_asked(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(png(np.full((4, 4, 3), 60 * i, np.uint8)))
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", startup.VERBOSE_ENV)}
    done = subprocess.run(
        [sys.executable, "-m", "beam_jobs.reshard", f"--input={images}/*",
         "--input_format=images", f"--output_dir={tmp_path}/out", "--num_shards=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr
    # Without the filter: the absl, oneDNN, CUDA and CPU-feature lines (twice), and Beam's INFO
    # lines about its state cache and BatchElements; with it, nothing at all.
    assert done.stderr == ""
    assert done.stdout.splitlines()[-1] == "3 images in 2 shards (1..2 per shard)"

    # Asked for: TensorFlow's lines as it prints them, every known one among them.
    verbose = python("from ns_data import startup\nstartup.quiet_startup()\n"
                     "from ns_data.lazy import tf\nprint(tf.constant(2).numpy())",
                     env={startup.VERBOSE_ENV: "1"})
    assert verbose.stdout == "2\n"
    lines = verbose.stderr.splitlines()
    assert lines.count(ABSL) == 2
    # The oneDNN line prints only where TensorFlow turns oneDNN on by default (CPUs with
    # AVX512_VNNI, AVX_VNNI or AMX; not on an AMD EPYC seen here); every other line prints anywhere.
    for pattern in startup.CHATTER:
        if "oneDNN" not in pattern.pattern:
            assert any(pattern.search(line) for line in lines), pattern.pattern
    # Nothing printed at the import is unknown; the cuInit error comes at the first op, after.
    assert [line for line in lines
            if not startup.is_chatter(line) and "cuda_platform.cc" not in line] == []


def test_a_value_the_user_exported_wins_over_the_defaults():
    code = ("import os\nfrom ns_data import startup\nstartup.quiet_startup()\n"
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    assert python(code).stdout == "3\n"
    assert python(code, env={"TF_CPP_MIN_LOG_LEVEL": "0"}).stdout == "0\n"
    assert python(code, env={startup.VERBOSE_ENV: "1"}).stdout == "None\n"
    assert python(code, env={startup.VERBOSE_ENV: "0"}).stdout == "3\n"


FAKE_MODULE = f"""
import os
os.write(2, b"{ABSL}\\n{CUDA}\\nsomething else\\n")
if os.environ.get("FAIL"):
    raise ImportError("the library did not load")
"""

IMPORT_FAKE = """
import os, sys
from ns_data import startup
sys.meta_path.insert(0, startup.QuietImport("fake_tensorflow"))
print(os.getpid(), flush=True)
print("before", file=sys.stderr, flush=True)
import fake_tensorflow
print("after", file=sys.stderr, flush=True)
print(fake_tensorflow.__loader__.__class__.__name__)
"""


def test_the_first_import_drops_the_chatter_and_keeps_every_other_line(tmp_path):
    (tmp_path / "fake_tensorflow.py").write_text(FAKE_MODULE)
    done = python(IMPORT_FAKE, path=str(tmp_path))
    assert done.stderr == "before\nsomething else\nafter\n"
    # The module keeps its own loader, as if imported plainly.
    assert done.stdout.splitlines()[1:] == ["SourceFileLoader"]


def test_a_failed_import_shows_all_it_printed_and_its_error(tmp_path):
    (tmp_path / "fake_tensorflow.py").write_text(FAKE_MODULE)
    done = python(IMPORT_FAKE, path=str(tmp_path), env={"FAIL": "1"}, check=False)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:4] == ["before", ABSL, CUDA, "something else"]
    assert lines[-1] == "ImportError: the library did not load"
    pid = done.stdout.split()[0]
    assert not os.path.exists(os.path.join(tempfile.gettempdir(),
                                           f"ns-tensorflow-import-{pid}.txt"))
