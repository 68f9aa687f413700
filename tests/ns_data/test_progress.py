"""ns_data.progress: the line says how far, how fast and how long to go, without flooding."""
from __future__ import annotations

import io
import logging

from ns_data import progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_line_rewritten_at_most_every_interval():
    clock, out = Clock(), Terminal()
    p = progress.Progress("read", total_bytes=4_000_000, stream=out, interval=2.0, clock=clock)
    clock.now += 1.0
    p.update(1000, 1_000_000)
    assert out.getvalue() == ""  # not yet two seconds
    clock.now += 1.5
    p.update(500, 500_000)
    assert out.getvalue() == ("\rread 1,500 images   38% of 4.0 MB  600 images/s  ETA 4s"
                              "\033[K")
    clock.now += 1.0
    p.update(10, 10)
    assert out.getvalue().count("\r") == 1
    p.finish()
    assert out.getvalue().endswith("\rread 1,510 images   38% of 4.0 MB  431 images/s  ETA 6s"
                                   "\033[K\n")


def test_elsewhere_it_is_a_log_line_a_minute(caplog):
    clock = Clock()
    p = progress.Progress("read", stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO):
        for _ in range(30):
            clock.now += 5
            p.update(100)
    assert [r.getMessage() for r in caplog.records] == [
        "progress: read 1,200 images  20 images/s", "progress: read 2,400 images  20 images/s"]


def test_durations_and_sizes_read_like_a_person_wrote_them():
    assert [progress.format_duration(s) for s in (4.4, 65, 3600 * 2 + 61)] == [
        "4s", "1m05s", "2h01m"]
    assert [progress.format_bytes(n) for n in (999, 1_500_000, 3.2e12)] == [
        "999 B", "1.5 MB", "3.2 TB"]
