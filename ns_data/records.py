"""The element types that flow between the pipeline's steps."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, slots=True)
class RawImage:
    """An image as read: stable id and the original encoded bytes."""

    image_id: bytes
    encoded: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ScoredImage:
    """An image with the teacher's probabilities (float32 [num_classes])."""

    image_id: bytes
    encoded: bytes
    probabilities: np.ndarray

    @property
    def label(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> np.float32:
        return np.float32(np.max(self.probabilities))


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be pseudo-labeled, with the stage and reason."""

    stage: str
    image_id: bytes
    encoded: bytes | None
    message: str


# Dead-letter stages, also the keys of the failure counts in stats.json.
STAGE_PARSE = "parse"
STAGE_DECODE = "decode"
STAGE_INFERENCE = "inference"
STAGE_OUTPUT = "invalid_output"
