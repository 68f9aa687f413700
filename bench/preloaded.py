"""Runs `python -m MODULE ARGV` commands as children of one process that imported the heavy
libraries once.

bench.bad_inputs runs ~140 commands, most of which refuse a flag or read a few dozen records:
each spends more CPU importing TensorFlow, Keras and Beam (5-20 s on this shared 2-core machine)
than on its own work. Here one server process imports those libraries — nothing of this project,
and it runs no TensorFlow op, so no TensorFlow runtime or thread pool exists yet — and forks a
child per command. The child runs the module as `python -m` does (`runpy`, `__name__ ==
"__main__"`), with the same argv, environment, working directory and fresh project modules; its
stdout and stderr go to files, stdin is empty, and its exit status is the interpreter's: 0, the
`SystemExit` code (a message is printed and gives 1), or 1 after an uncaught exception's
traceback. (`bench.bad_inputs --spawn` runs every command in a fresh interpreter instead, to
check that the outcomes match.)

    python -m bench.preloaded   # the server: reads JSON requests, one a line, on stdin
"""
from __future__ import annotations

import atexit
import concurrent.futures
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading

# Imported by the server before any fork: what every job would import at start-up.
PRELOAD = ("numpy", "tensorflow", "keras", "apache_beam", "apache_beam.ml.inference.base",
           "apache_beam.runners.portability.fn_api_runner", "pyarrow.parquet", "PIL.Image")


def _run_as_main(module: str, argv: list[str], stdout: str, stderr: str) -> None:
    """In a forked child: `python -m module argv` with its output in the two files; never
    returns."""
    os.setsid()  # its own process group, which a timeout kills
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.stdin = open(0, closefd=False)
    for path, fd in ((stdout, 1), (stderr, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["-m", *argv]
    code = 1
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the interpreter's own handling of an uncaught error
        sys.excepthook(*sys.exc_info())
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    """The server loop: forks a child per request line {"id", "module", "argv", "stdout",
    "stderr"}, answers "started ID PID" at once and "exit PID CODE" when the child ends."""
    for name in PRELOAD:
        __import__(name)
    out = os.fdopen(os.dup(1), "w")
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        if readable:
            data = os.read(0, 65536)
            if not data:
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    out.close()
                    _run_as_main(request["module"], request["argv"], request["stdout"],
                                 request["stderr"])
                print(f"started {request['id']} {pid}", file=out, flush=True)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", file=out, flush=True)


class Server:
    """A running server, and `run` to start a command in it and wait for it (thread-safe)."""

    def __init__(self, cwd: str, env: dict[str, str]):
        self._proc = subprocess.Popen([sys.executable, "-m", "bench.preloaded"], cwd=cwd,
                                      env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
        self._lock = threading.Lock()
        self._next_id = 0
        self._started: dict[int, concurrent.futures.Future] = {}
        self._exits: dict[int, concurrent.futures.Future] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _exit_future(self, pid: int) -> concurrent.futures.Future:
        with self._lock:
            return self._exits.setdefault(pid, concurrent.futures.Future())

    def _read(self) -> None:
        for line in self._proc.stdout:
            kind, first, second = line.split()
            if kind == "started":
                with self._lock:
                    self._started.pop(int(first)).set_result(int(second))
            else:
                self._exit_future(int(first)).set_result(int(second))
        with self._lock:  # the server is gone: nothing waiting on it may wait forever
            for future in [*self._started.values(), *self._exits.values()]:
                if not future.done():
                    future.set_exception(RuntimeError("the bench.preloaded server exited"))

    def run(self, module: str, argv: list[str], stdout: str, stderr: str,
            timeout: float) -> int | None:
        """Runs `python -m module argv`, its output in the two files; returns its exit status,
        or None when it was killed after `timeout` seconds."""
        started: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._next_id += 1
            self._started[self._next_id] = started
            request = {"id": self._next_id, "module": module, "argv": argv, "stdout": stdout,
                       "stderr": stderr}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        pid = started.result()
        exited = self._exit_future(pid)
        try:
            code = exited.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            os.killpg(pid, signal.SIGKILL)  # the command's own process group only
            exited.result()
            code = None
        with self._lock:
            del self._exits[pid]
        return code

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait()
        self._reader.join()


if __name__ == "__main__":
    serve()
