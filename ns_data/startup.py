"""What a command prints before its own output: TensorFlow's and Beam's start-up lines are kept
out, unless `NS_VERBOSE_STARTUP=1`.

Every entry point calls `quiet_startup()` first. What TensorFlow 2.21 (the CPU wheel) prints on
stderr, and what silences each line, measured with a fresh `python -c 'import tensorflow'` and a
first op:

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 ... port.cc:153] oneDNN custom operations are on. ...  (CPUs where TensorFlow turns
      oneDNN on by default: those with AVX512_VNNI, AVX_VNNI or AMX; not this AMD EPYC)
  I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
      printed while the shared libraries load, by absl's logging before anything initialises
      it, twice (libtensorflow_framework and the profiler plugin each carry a copy of absl). No
      environment variable reaches them: TF_CPP_MIN_LOG_LEVEL (any value) does not, absl reads
      no GLOG_*/ABSL_* variables. TF_ENABLE_ONEDNN_OPTS=0 drops the oneDNN line only by turning
      the oneDNN kernels off, which changes numerics, so it is not set here. These lines are
      filtered out of file descriptor 2 while `import tensorflow` runs (`filtered_stderr`).
  I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...
  To enable the following instructions: AVX2 ... rebuild TensorFlow with the appropriate ...
      silenced by TF_CPP_MIN_LOG_LEVEL >= 1, and filtered at the import too.
  E0000 ... cuda_platform.cc:52] failed call to cuInit: ... (303)
      at the first op, after the import, on a machine without a GPU: silenced by
      TF_CPP_MIN_LOG_LEVEL=3, the default set here (`os.environ.setdefault`, so a value the
      user exported wins). Level 3 hides TensorFlow's C++ ERROR lines too; the errors that
      stop a job reach Python as exceptions and are reported as such.

Beam's INFO lines (its state cache, BatchElements statistics, ...) are held at WARNING by
`quiet_startup`, except the Dataflow runner's (the job's console address and state). So is a
WARNING Beam 2.77's RunInference logs on the root logger at every model load, "Resource module
is not available for current platform, memory usage cannot be fetched.": its `base.py` imports
`resource` in one try block with its `ModelManager`, which needs PyTorch, so without PyTorch it
says so on Linux too.

With NS_VERBOSE_STARTUP=1 nothing is set or filtered: every line prints as the libraries print it.
A crash inside the import (an abort, not a Python exception) cannot replay what was captured: it
stays in `$TMPDIR/ns-tensorflow-import-PID.txt`; rerun with NS_VERBOSE_STARTUP=1 to see it live.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_ENV = "NS_VERBOSE_STARTUP"
# The --help line saying so.
HELP = (f"TensorFlow's and Beam's start-up lines are kept out of the output; {VERBOSE_ENV}=1 "
        "shows them.")
ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "3"}
# Lines known to be start-up chatter (the module docstring says where each comes from); any
# other line written while TensorFlow imports is passed on.
CHATTER = tuple(re.compile(pattern) for pattern in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\. ",
    r"^I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized ",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    r"compiler flags\.$",
))
_RESOURCE_WARNING = "Resource module is not available for current platform"
_RESOURCE_WARNING_FILE = os.path.join("apache_beam", "ml", "inference", "base.py")
# Beam's loggers whose INFO lines are progress a user wants: a Dataflow job's console address
# and its state changes.
_BEAM_INFO = "apache_beam.runners.dataflow"


def verbose() -> bool:
    """Whether the user asked for every start-up line (NS_VERBOSE_STARTUP=1)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_startup() -> None:
    """Sets `ENV_DEFAULTS` where the user has not, has TensorFlow's first import filter
    `CHATTER` out of stderr, and holds Beam's, TensorFlow's and absl's Python loggers at WARNING
    (Dataflow's job address and state stay at INFO); nothing with NS_VERBOSE_STARTUP=1. Call it
    before anything imports TensorFlow (an entry point's first line: its modules import
    TensorFlow lazily)."""
    if verbose():
        return
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if "tensorflow" not in sys.modules and not any(
            isinstance(finder, QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietImport("tensorflow"))
    for name in ("apache_beam", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(_BEAM_INFO).setLevel(logging.INFO)
    root = logging.getLogger()
    if _no_resource_warning not in root.filters:
        root.addFilter(_no_resource_warning)


def _no_resource_warning(record: logging.LogRecord) -> bool:
    """False for RunInference's false "Resource module is not available" (module docstring)."""
    return not (isinstance(record.msg, str) and record.msg.startswith(_RESOURCE_WARNING)
                and record.pathname.endswith(_RESOURCE_WARNING_FILE))


def is_chatter(line: str) -> bool:
    return any(pattern.search(line) for pattern in CHATTER)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Captures what is written to file descriptor 2 (C++ libraries write there directly, past
    `sys.stderr`) and then writes it back, minus the `CHATTER` lines; everything, when the body
    raises, so an import that fails shows all it printed. Writes by other threads meanwhile are
    held back, not lost."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr (closed): nothing would show anyway
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"ns-tensorflow-import-{os.getpid()}.txt")
    failed = True
    try:
        with open(path, "w+b") as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
                failed = False
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                _write_back(captured.read(), everything=failed)
    finally:
        os.close(saved)
        with contextlib.suppress(OSError):
            os.remove(path)


def _write_back(captured: bytes, everything: bool) -> None:
    """Writes `captured` to file descriptor 2, without its `CHATTER` lines unless `everything`."""
    if not everything:
        captured = b"".join(line for line in captured.splitlines(keepends=True)
                            if not is_chatter(line.decode(errors="replace").rstrip("\r\n")))
    view = memoryview(captured)
    while view:
        view = view[os.write(2, view):]


class QuietImport(importlib.abc.MetaPathFinder):
    """A finder that imports the module `name` under `filtered_stderr`, wherever it is first
    imported from (`ns_data.lazy`, a plain `import tensorflow`, Keras importing its backend).

    It stays in `sys.meta_path` after that, doing nothing: removing it while another thread
    walks `sys.meta_path` could make that thread skip a finder.
    """

    def __init__(self, name: str):
        self.name = name
        self.done = False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name or self.done:
            return None
        self.done = True
        for finder in sys.meta_path:
            spec = (None if finder is self or not hasattr(finder, "find_spec")
                    else finder.find_spec(fullname, path, target))
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader's `exec_module` under `filtered_stderr`; the module keeps that
    loader as its `__loader__`, as if imported plainly."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        with filtered_stderr():
            self.loader.exec_module(module)
