"""From a predictions table to pseudo-label shards: the steps `label_and_balance` and `rebalance`
share, so a rebalance writes exactly what a fresh run with the same settings writes.

    table files → CountPredictions ─────────────────────┐
               → BalancePerClass (plans, tie starts) ───┼→ WriteLabeledShards → WriteStats
               → (the same file names) ─────────────────┘

Only `WriteLabeledShards` reads images; everything before it reads small table columns.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from ns_data import schema, stats
from ns_data.balance import DEFAULT_COLLECT_LIMIT
from ns_data.predictions import TableMetadata
from ns_data.select import BalancePerClass, CountPredictions
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

    def output_spec(self) -> OutputSpec:
        return OutputSpec(num_shards=self.num_shards, label_type=schema.LabelType(self.label_type),
                          topk=self.topk, seed=self.seed, chunk_records=self.chunk_records,
                          min_confidence=self.min_confidence)

    def recorded(self) -> dict[str, Any]:
        """The settings stats.json records."""
        return {"min_confidence": self.min_confidence, "images_per_class": self.images_per_class,
                "duplicate": self.duplicate, "label_type": self.label_type, "topk": self.topk,
                "num_shards": self.num_shards, "seed": self.seed}


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


def select_and_write(paths: beam.PCollection, output_dir: str, config: BalanceConfig,
                     metadata: TableMetadata, recorded: Mapping[str, Any]) -> beam.PCollection:
    """Table file paths → shards, dead letters and stats.json in `output_dir`.

    Returns the PCollection of the stats.json path.
    """
    counts = paths | "CountPredictions" >> CountPredictions()
    selection = paths | "BalancePerClass" >> BalancePerClass(
        config.min_confidence, config.images_per_class, duplicate=config.duplicate,
        seed=config.seed, collect_limit=config.collect_limit)
    shards = paths | "WriteLabeledShards" >> WriteLabeledShards(
        output_dir, config.output_spec(), metadata, selection.plans, selection.tie_starts,
        counts)
    return shards | "WriteStats" >> stats.WriteRunStats(
        output_dir, recorded, metadata.num_classes, counts, selection.plans)
