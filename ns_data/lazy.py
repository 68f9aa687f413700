"""TensorFlow, imported when first used instead of when a module using it is imported.

Importing TensorFlow takes seconds; `--help`, a flag error or a report job need none of it. The
modules an entry point imports write `from ns_data.lazy import tf` instead of `import tensorflow
as tf` (TFDS reads TensorFlow through its `lazy_imports_utils` for the same reason), so the first
`tf.<name>` a function reads imports TensorFlow and every later one is a plain attribute read.
A module that needs TensorFlow while it is imported (a class deriving from a Keras or TF class,
a constant built from TF) imports it plainly and is imported by its users inside the function
that needs it; `tests/test_help.py` keeps every entry point's `--help` free of TensorFlow.
"""
from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """The module named `name`, imported on the first attribute read."""

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)  # later reads find it here, without this call
        return value


tf = LazyModule("tensorflow")
keras = LazyModule("keras")  # Keras 3 imports TensorFlow, its backend, with itself
