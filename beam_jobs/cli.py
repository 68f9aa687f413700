"""What every job's command line shares."""
from __future__ import annotations

import sys
from collections.abc import Callable
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
