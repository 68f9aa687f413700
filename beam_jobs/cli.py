"""What every job's command line shares."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ns_data import completion


def main(run: Callable[[list[str] | None], Any], prog: str,
         argv: list[str] | None = None) -> int:
    """Runs a job's `run(argv)` as a command.

    Bad settings (`ValueError`, whose messages name the flag) and a finished run that fails its
    checks (too many failures or copies) are one line on stderr, with exit status 2 and 1;
    anything else keeps its traceback, because it is a bug or an infrastructure failure.
    """
    try:
        run(argv)
    except completion.RunCheckError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def check_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parses a job's own flags in `argv` (others are left to Beam) the way its command line
    does, but raises `ValueError` with argparse's message (e.g. "argument --min_confidence: must
    be in [0, 1], got 1.5") instead of printing usage and exiting: a caller that runs the job
    later (`iterate`) checks its flags before any work."""
    parser.exit_on_error = False
    try:
        return parser.parse_known_args(list(argv))[0]
    except argparse.ArgumentError as e:
        raise ValueError(str(e)) from e
