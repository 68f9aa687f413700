"""From a predictions table to pseudo-label shards: the steps `label_and_balance` and `rebalance`
share, so a rebalance writes exactly what a fresh run with the same settings writes.

    table files → CountPredictions → MarkTable ─────────┐
               → BalancePerClass (plans, tie starts) ───┴→ CheckCopies → WriteLabeledShards
               → (the same file names) ───────────────────────────────┘        → WriteStats

Only `WriteLabeledShards` reads images; everything before it reads small table columns. Every
table file is written before `CountPredictions` can finish, so `MarkTable` (label_and_balance)
marks the table complete there, and `CheckCopies` refuses a runaway duplication
(`--max_copies`) from the plans before the writing pass starts: a run that duplicates one image
hundreds of times writes no shard, and its table is ready for `rebalance`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from ns_data import completion, schema, stats
from ns_data.balance import DEFAULT_COLLECT_LIMIT, ClassPlan
from ns_data.predictions import TableMetadata
from ns_data.select import BalancePerClass, CountPredictions, TableCounts
from ns_data.write import DEFAULT_CHUNK_RECORDS, OutputSpec, WriteLabeledShards


@dataclasses.dataclass(frozen=True)
class BalanceConfig:
    """Selection and output settings (the `--min_confidence` ... `--chunk_records` flags)."""

    min_confidence: float = 0.3
    images_per_class: int = 130_000
    duplicate: bool = True
    seed: int = 0
    collect_limit: int = DEFAULT_COLLECT_LIMIT
    num_shards: int = 16
    label_type: str = "soft"
    topk: int = 10
    chunk_records: int = DEFAULT_CHUNK_RECORDS
    max_copies: int = completion.DEFAULT_MAX_COPIES

    def output_spec(self) -> OutputSpec:
        return OutputSpec(num_shards=self.num_shards, label_type=schema.LabelType(self.label_type),
                          topk=self.topk, seed=self.seed, chunk_records=self.chunk_records,
                          min_confidence=self.min_confidence)

    def recorded(self) -> dict[str, Any]:
        """The settings stats.json records."""
        return {"min_confidence": self.min_confidence, "images_per_class": self.images_per_class,
                "duplicate": self.duplicate, "label_type": self.label_type, "topk": self.topk,
                "num_shards": self.num_shards, "seed": self.seed, "max_copies": self.max_copies}


def check_table_serves(metadata: TableMetadata, config: BalanceConfig) -> None:
    """Refuses a label type the table cannot give: soft needs every class, soft_topk k classes."""
    if config.label_type == schema.LabelType.SOFT.value and not metadata.dense:
        raise ValueError(
            f"--label_type=soft writes the whole distribution, but the predictions table keeps "
            f"the top {metadata.topk} of {metadata.num_classes} classes; use "
            f"--label_type=soft_topk (--topk <= {metadata.topk}) or hard")
    if config.label_type == schema.LabelType.SOFT_TOPK.value and config.topk > metadata.topk:
        raise ValueError(f"--topk={config.topk} exceeds the {metadata.topk} classes per image "
                         "the predictions table keeps")


def mark_table(counts: TableCounts, table_dir: str, job: str,
               config: Mapping[str, Any]) -> TableCounts:
    """Marks a finished predictions table complete (`completion.write_marker`) with what it
    holds; returns `counts`. A table of no rows is not marked: the run read nothing
    (`completion.check_read` refuses it)."""
    if counts.rows:
        failed = {stage: int(counts.failed.get(stage, 0)) for stage in stats.FAILURE_STAGES}
        completion.write_marker(table_dir, {
            "job": job, "config": dict(config),
            "totals": {"read": counts.rows, "failed": failed,
                       "failed_total": sum(failed.values()),
                       "scored": sum(counts.scored.values())}})
    return counts


def checked_plans(_, plans: Mapping[int, ClassPlan], max_copies: int, output_dir: str,
                 table: str):
    """Yields the plans, (label, ClassPlan), once none writes one image more than `max_copies`
    times (`completion.check_copies`)."""
    completion.check_copies(
        [{"class": label, "kept": plan.quota.kept, "written": plan.quota.written,
          "max_copies": plan.quota.max_copies} for label, plan in sorted(plans.items())],
        max_copies, output_dir, table)
    yield from sorted(plans.items())


def select_and_write(paths: beam.PCollection, output_dir: str, config: BalanceConfig,
                     metadata: TableMetadata, recorded: Mapping[str, Any], table: str,
                     mark: str | None = None) -> beam.PCollection:
    """Table file paths → shards, dead letters and stats.json in `output_dir`.

    Args:
      paths: the predictions table's file paths.
      output_dir: where the shards, dead letters and stats.json go.
      config: the selection and output settings.
      metadata: the table's settings.
      recorded: the run's settings, for stats.json (and the table's marker).
      table: the table as the user names it (`--predictions`), for messages.
      mark: the job whose teacher pass wrote the table: the table is marked complete in
        `table` once its files are all written (None: it is a finished table already).

    Returns the PCollection of the stats.json path.
    """
    counts = paths | "CountPredictions" >> CountPredictions()
    if mark:
        counts = counts | "MarkTable" >> beam.Map(mark_table, table, mark, recorded)
    selection = paths | "BalancePerClass" >> BalancePerClass(
        config.min_confidence, config.images_per_class, duplicate=config.duplicate,
        seed=config.seed, collect_limit=config.collect_limit)
    # The writing pass takes the checked plans as a side input, so it starts only once they
    # pass, and the table is marked first (the check reads the marked counts).
    plans = counts | "CheckCopies" >> beam.FlatMap(
        checked_plans, beam.pvalue.AsDict(selection.plans), config.max_copies, output_dir, table)
    shards = paths | "WriteLabeledShards" >> WriteLabeledShards(
        output_dir, config.output_spec(), metadata, plans, selection.tie_starts, counts)
    return shards | "WriteStats" >> stats.WriteRunStats(
        output_dir, recorded, metadata.num_classes, counts, plans, metadata.class_names)
