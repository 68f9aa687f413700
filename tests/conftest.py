"""Fixtures shared across the test packages (tests/ns_train/conftest.py has the trainer's)."""
from __future__ import annotations

import sys

import pytest

from ns_data import devices


@pytest.fixture
def fresh_placements():
    """The per-process device placement and TF's bfloat16 rewrite reset around a test, so a test
    that places a teacher on a (fake) device does not leak into the next."""
    devices.reset_for_tests()
    yield
    devices.reset_for_tests()
    if "tensorflow" in sys.modules:  # a test that never loaded TF cannot have set the rewrite
        sys.modules["tensorflow"].config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": False})
