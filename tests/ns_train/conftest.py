"""Fixtures shared by the trainer's tests."""
from __future__ import annotations

import pytest

from ns_data import completion, schema
from tests.ns_train import toy


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict:
    """Toy TFRecords: 64 labeled, 40 eval, and 48 pseudo-labeled per label type, in a directory
    marked complete as label_and_balance marks its output."""
    root = tmp_path_factory.mktemp("toy")
    labeled = str(root / "labeled.tfrecord")
    toy.write_labeled(labeled, 64)
    evaluation = str(root / "eval.tfrecord")
    toy.write_labeled(evaluation, 40, seed=7)
    pseudo = {}
    for label_type in schema.LabelType:
        pseudo[label_type] = str(root / f"pseudo-{label_type.value}.tfrecord")
        toy.write_pseudo_labeled(pseudo[label_type], 48, label_type)
    completion.write_marker(str(root), {"job": "test fixture"})
    return {"labeled": labeled, "eval": evaluation, "pseudo": pseudo}
