"""A finished label_and_balance run without the pipeline: stats.json and _SUCCESS as the job
writes them, over shards the test wrote."""
from __future__ import annotations

from collections.abc import Sequence

from ns_data import completion, stats


def finish_run(directory: str, records: Sequence[int]) -> dict:
    """Writes the stats.json of a run that wrote `records` per shard (one class, nothing failed
    or duplicated) and marks `directory` complete as the job does; returns the stats."""
    n = sum(records)
    run_stats = {
        "config": {"num_shards": len(records)},
        "totals": {"read": n, "failed": {}, "failed_total": 0, "scored": n, "below_threshold": 0,
                   "above_threshold": n, "kept": n, "dropped_by_cap": 0, "duplicated": 0,
                   "written": n, "max_copies": 1},
        "classes": [{"class": 0, "kept": n, "written": n, "max_copies": 1}],
        "shards": {"count": len(records), "min_records": min(records),
                   "max_records": max(records), "records": list(records)},
    }
    stats.write_stats(directory, run_stats)
    completion.finish_run(directory, "label_and_balance", max_failure_fraction=0.0)
    return run_stats
