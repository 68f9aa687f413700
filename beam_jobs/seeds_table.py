"""Mean ± std over seeds of Noisy Student runs: `beam_jobs.iterate`'s results.json files.

    python -m beam_jobs.seeds_table out/seeds/seed-*/results.json [--output=seeds.md]

`python -m beam_jobs.iterate --seeds=0,1,2` writes this table itself (WORKDIR/seeds.md); this
entry point makes it from results.json files kept from separate runs (e.g. one seed per machine).
Per round: top-1 of the teacher, the baseline (the student's model and steps on the labeled data
alone) and the `full` student, then student - teacher and student - baseline in points, on the
test split (the holdout for runs without one); the mean ± sample standard deviation and each
seed's value.
"""
from __future__ import annotations

import argparse
import json
import sys

from ns_data import round_report


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.seeds_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json of each run (one per seed).")
    parser.add_argument("--output", default="",
                        help="Also write the Markdown table here (default: print only).")
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {path}: {e}")
        if not isinstance(result, dict) or "rounds" not in result or "seed" not in result.get(
                "config", {}):
            sys.exit(f"error: {path} is not the results.json of a beam_jobs.iterate run")
        results.append(result)
    try:
        text = round_report.format_seeds(round_report.seeds_table(results))
    except (KeyError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
