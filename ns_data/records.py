"""The element types that flow between the pipeline's steps.

Only `RawImage` carries image bytes, and only between reading and decoding: the teacher pass turns
each image into a `Prediction`, which names the image by where it is (input file and record
index) instead of carrying it, so the predictions table stays small and the images are read
again, once, by the pass that writes the shards.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, slots=True)
class RawImage:
    """An image as read: stable id, the original encoded bytes, and where they were read.

    Attributes:
      image_id: the stable image id (`image/id`, else a content hash; the path for image files).
      encoded: the encoded image bytes.
      source: the input file the image was read from.
      index: the record's position in `source` (0 for an image file).
    """

    image_id: bytes
    encoded: bytes
    source: str = ""
    index: int = 0

    def __reduce__(self):
        # Beam's coder pickles each one; the dataclass default looks its fields up every time.
        return RawImage, (self.image_id, self.encoded, self.source, self.index)


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """What the teacher said about one input record, or why it could not say anything.

    Attributes:
      source: the input file the record was read from.
      index: the record's position in `source`.
      image_id: the image id (a content hash of the whole record when it did not parse).
      classes: the most probable classes, most probable first (int32 [k]); None on failure.
      probs: their probabilities, not renormalised (float32 [k]); None on failure.
      stage: the dead-letter stage on failure (`STAGE_*`), else None.
      message: why it failed, else None.
      image_hash: `predictions.content_hash` of the image bytes scored (None when the record
        had no image bytes: it did not parse, or its file is damaged).
    """

    source: str
    index: int
    image_id: bytes
    classes: np.ndarray | None = None
    probs: np.ndarray | None = None
    stage: str | None = None
    message: str | None = None
    image_hash: int | None = None

    @property
    def ok(self) -> bool:
        return self.stage is None


# Dead-letter stages, also the keys of the failure counts in stats.json.
STAGE_PARSE = "parse"
STAGE_DECODE = "decode"
STAGE_INFERENCE = "inference"
STAGE_OUTPUT = "invalid_output"
# The part of an input file that cannot be read (a truncated or corrupt TFRecord from the damaged
# record on, an image file that cannot be opened): one row per damaged file, whose index is the
# first record lost; the records before it are read as usual.
STAGE_FILE = "damaged_file"
