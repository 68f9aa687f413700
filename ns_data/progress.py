"""One updating progress line for a long step: images so far, rate, share of the input, ETA.

    read 120,000 images  43% of 1.2 GB  2,150 images/s  ETA 1m30s

A worker process keeps one `Progress` per step (`Progress.shared`), so on DirectRunner, where
the whole job runs in the launching process, the user sees the job move. On a terminal the line
is rewritten in place every `interval` seconds; elsewhere (Dataflow workers, CI logs, tests) it
is logged every `log_interval` seconds instead, so logs are not flooded. The share of the input
is of its bytes (known at launch from the matched files' sizes), so the ETA needs no count of
the records up front.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import ClassVar, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class Progress:
    """Counts what a step has done and reports it at most every `interval` seconds.

    Args:
      what: the verb and noun of the line, e.g. "read ... images".
      total_bytes: the input's size, for the share done and the ETA (0: unknown).
      stream: where the line goes; a terminal gets an in-place line, anything else log lines.
      clock: seconds, monotonic (tests pass their own).
    """

    _shared: ClassVar[dict[tuple[str, int], Progress]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, what: str = "read", total_bytes: int = 0, stream: TextIO | None = None,
                 interval: float = 2.0, log_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._what = what
        self._total = max(0, int(total_bytes))
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = interval if self._tty else log_interval
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self.images = 0
        self.bytes = 0
        self._count_lock = threading.Lock()

    @classmethod
    def shared(cls, what: str, total_bytes: int = 0) -> Progress:
        """This process's reporter for `what` of an input of `total_bytes` (one per step of a
        pipeline, whatever the DoFn instances)."""
        with cls._lock:
            key = (what, total_bytes)
            if key not in cls._shared:
                cls._shared[key] = cls(what, total_bytes)
            return cls._shared[key]

    @classmethod
    def finish_all(cls) -> None:
        """Ends this process's progress lines (after a pipeline ran in it) and forgets them, so
        the next run in the process starts its own."""
        with cls._lock:
            for reporter in cls._shared.values():
                reporter.finish()
            cls._shared.clear()

    def update(self, images: int, nbytes: int = 0) -> None:
        """Adds `images` and `nbytes` read; reports when `interval` has passed."""
        with self._count_lock:
            self.images += images
            self.bytes += nbytes
            now = self._clock()
            if now - self._last < self._interval:
                return
            self._last = now
            line = self.line(now)
        if self._tty:
            self._stream.write(f"\r{line}\033[K")
            self._stream.flush()
        else:
            logging.info("progress: %s", line)

    def line(self, now: float | None = None) -> str:
        """The progress line as of `now`."""
        elapsed = max((self._clock() if now is None else now) - self._start, 1e-9)
        parts = [f"{self._what} {self.images:,} images"]
        if self._total:
            done = min(self.bytes / self._total, 1.0)
            parts.append(f"{done:4.0%} of {format_bytes(self._total)}")
        parts.append(f"{self.images / elapsed:,.0f} images/s")
        if self._total and 0 < self.bytes < self._total:
            remaining = elapsed * (self._total - self.bytes) / self.bytes
            parts.append(f"ETA {format_duration(remaining)}")
        return "  ".join(parts)

    def finish(self) -> None:
        """Ends an in-place line with a newline (nothing to do for log lines)."""
        if self._tty and self.images:
            self._stream.write(f"\r{self.line()}\033[K\n")
            self._stream.flush()
