"""Where the teacher runs: TPU, GPU or CPU, chosen once per worker process.

TensorFlow does not put a loaded SavedModel on a TPU by itself, and on a GPU it grabs all of the
device's memory in every process that touches TensorFlow. `place` resolves a `TeacherRuntime`
(the flags) into a `Placement` once per process:

- **TPU** (a TPU VM: `/dev/accel*` or `/dev/vfio/<n>` present, or `--device=tpu`): connect to the
  local TPU, initialise the TPU system and build a `TPUStrategy`; the teacher's variables are
  loaded under its scope and every batch runs as one compiled TPU program (the batch shape is
  fixed, so it compiles once).
- **GPU** (TensorFlow sees one): memory growth on every GPU, or a fixed per-process limit
  (`--gpu_memory_limit_mb`), set before TensorFlow initialises the devices, so several SDK
  processes of one worker can share a GPU; the teacher is placed on the first GPU.
- **CPU**: as before.

An explicit `--device=gpu|tpu` that finds no such device fails loudly instead of running on the
CPU while the job pays for the accelerator. `--precision=mixed` turns on TensorFlow's automatic
mixed precision graph rewrite where the device has fast reduced-precision math (float16 on GPU,
bfloat16 with oneDNN on CPUs with avx512_bf16 or AMX; TPUs already multiply in bfloat16 under
XLA). The rewrite is a process-wide TensorFlow option, so every graph the process optimizes
afterwards is rewritten too (a worker process runs one teacher, so that is the teacher), and
XLA-compiled functions (`jit_compile`) do not go through it.

The TensorFlow calls go through `Backend` so tests can take every path with a fake.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import threading
from typing import Any, Protocol

DEVICES = ("auto", "cpu", "gpu", "tpu")
PRECISIONS = ("float32", "mixed")


@dataclasses.dataclass(frozen=True)
class TeacherRuntime:
    """How a worker runs the teacher (the `--device`, `--jit_compile`, ... flags).

    Attributes:
      device: "auto" (TPU if present, else GPU if TensorFlow sees one, else CPU), or one of
        "cpu", "gpu", "tpu" (failing when absent).
      jit_compile: XLA-compile the teacher call (always compiled on TPU).
      precision: "float32", or "mixed" for TensorFlow's automatic mixed precision rewrite.
      gpu_memory_limit_mb: a fixed memory limit per process on each GPU instead of growth.
    """

    device: str = "auto"
    jit_compile: bool = False
    precision: str = "float32"
    gpu_memory_limit_mb: int | None = None

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"--device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.gpu_memory_limit_mb is not None and self.gpu_memory_limit_mb < 1:
            raise ValueError(f"--gpu_memory_limit_mb must be >= 1, got {self.gpu_memory_limit_mb}")


@dataclasses.dataclass(frozen=True)
class Placement:
    """A resolved device: its kind, TensorFlow device name and, on TPU, the strategy."""

    kind: str
    device: str
    strategy: Any = None

    def scope(self):
        """The context the teacher's variables are created in."""
        if self.strategy is not None:
            return self.strategy.scope()
        return _tf().device(self.device)


class Backend(Protocol):
    """The TensorFlow calls device placement needs (a fake in tests)."""

    def tpu_present(self) -> bool: ...
    def gpus(self) -> list[Any]: ...
    def set_memory_growth(self, gpu: Any) -> None: ...
    def set_memory_limit(self, gpu: Any, megabytes: int) -> None: ...
    def initialize_tpu(self) -> Any: ...
    def set_graph_options(self, options: dict[str, bool]) -> None: ...


def _tf():
    import tensorflow as tf  # noqa: PLC0415 - keeps `import ns_data.devices` free of TF start-up
    return tf


class TensorFlowBackend:
    """The real calls."""

    def tpu_present(self) -> bool:
        # TPU VMs expose their chips as /dev/accel<n> (v2-v4) or VFIO groups (v5e, v6e).
        return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))

    def gpus(self) -> list[Any]:
        return _tf().config.list_physical_devices("GPU")

    def set_memory_growth(self, gpu: Any) -> None:
        _tf().config.experimental.set_memory_growth(gpu, True)

    def set_memory_limit(self, gpu: Any, megabytes: int) -> None:
        tf = _tf()
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=megabytes)])

    def initialize_tpu(self) -> Any:
        tf = _tf()
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)

    def set_graph_options(self, options: dict[str, bool]) -> None:
        _tf().config.optimizer.set_experimental_options(options)


_lock = threading.Lock()
_placements: dict[TeacherRuntime, Placement] = {}


def place(runtime: TeacherRuntime, backend: Backend | None = None) -> Placement:
    """The placement of `runtime` in this process, resolved (and the device set up) once.

    Raises:
      RuntimeError: when `--device` names a device this worker does not have, or the TPU
        system cannot be initialised.
    """
    with _lock:
        if runtime not in _placements:
            _placements[runtime] = _resolve(runtime, backend or TensorFlowBackend())
        return _placements[runtime]


def missing_device(device: str, backend: Backend | None = None) -> str | None:
    """Why an explicit `--device=gpu|tpu` cannot run on this machine, or None.

    Only looks (no TPU initialisation, no GPU memory taken), so a launcher whose runner runs
    the teacher on this same machine can refuse before any work instead of in every worker.
    """
    backend = backend or TensorFlowBackend()
    if device == "gpu" and not backend.gpus():
        return ("--device=gpu but TensorFlow sees no GPU on this machine: install "
                "tensorflow[and-cuda] (see docker/Dockerfile.gpu) and the NVIDIA driver")
    if device == "tpu" and not backend.tpu_present():
        return "--device=tpu but this machine is no TPU VM (no /dev/accel* or /dev/vfio/*)"
    return None


def _resolve(runtime: TeacherRuntime, backend: Backend) -> Placement:
    kind = runtime.device
    if kind in ("auto", "tpu") and (kind == "tpu" or backend.tpu_present()):
        placement = _tpu(backend, explicit=kind == "tpu")
        if placement is not None:
            return _with_precision(placement, runtime, backend)
        kind = "auto"  # TPU device files but no usable TPU: fall through, with a warning
    gpus = backend.gpus() if kind in ("auto", "gpu") else []
    if gpus:
        configure_gpus(runtime, backend, gpus)
        placement = Placement("gpu", "/device:GPU:0")
    elif kind == "gpu":
        raise RuntimeError(
            "--device=gpu but TensorFlow sees no GPU on this worker: install "
            "tensorflow[and-cuda] (see docker/Dockerfile.gpu) and the NVIDIA driver "
            "(worker_accelerator=...;install-nvidia-driver)")
    else:
        placement = Placement("cpu", "/device:CPU:0")
    logging.info("Teacher runs on %s (pid %d)", placement.device, os.getpid())
    return _with_precision(placement, runtime, backend)


def _tpu(backend: Backend, explicit: bool) -> Placement | None:
    try:
        strategy = backend.initialize_tpu()
    except Exception as e:  # noqa: BLE001 - re-raised when the TPU was asked for
        if explicit:
            raise RuntimeError(f"--device=tpu but the TPU system did not initialise: "
                               f"{type(e).__name__}: {e}") from e
        logging.warning("TPU device files found but the TPU did not initialise (%s: %s); "
                        "looking for a GPU or the CPU instead", type(e).__name__, e)
        return None
    logging.info("Teacher runs on the TPU (pid %d)", os.getpid())
    return Placement("tpu", "/device:TPU:0", strategy)


def configure_gpus(runtime: TeacherRuntime, backend: Backend | None = None,
                   gpus: list[Any] | None = None) -> None:
    """Memory growth (or the per-process limit) on every GPU, before TensorFlow claims them.

    Also called by processes that only decode with TensorFlow ops, so that they take the CUDA
    context and not the whole GPU. Once TensorFlow has initialised the GPUs the setting cannot
    change; that is logged, not raised.
    """
    backend = backend or TensorFlowBackend()
    for gpu in backend.gpus() if gpus is None else gpus:
        try:
            if runtime.gpu_memory_limit_mb:
                backend.set_memory_limit(gpu, runtime.gpu_memory_limit_mb)
            else:
                backend.set_memory_growth(gpu)
        except RuntimeError as e:
            logging.warning("GPU memory setting not applied (TensorFlow already initialised "
                            "the GPU in this process): %s", e)


def _with_precision(placement: Placement, runtime: TeacherRuntime, backend: Backend) -> Placement:
    if runtime.precision == "mixed":
        if placement.kind == "gpu":
            backend.set_graph_options({"auto_mixed_precision": True})
        elif placement.kind == "cpu":
            backend.set_graph_options({"auto_mixed_precision_onednn_bfloat16": True})
        else:
            logging.info("--precision=mixed: XLA already multiplies in bfloat16 on TPU")
    return placement


def reset_for_tests() -> None:
    """Forgets resolved placements (tests resolve with several fakes in one process)."""
    with _lock:
        _placements.clear()


@contextlib.contextmanager
def on_cpu():
    """Runs TensorFlow ops on the CPU (decoding), whatever accelerator the process has."""
    with _tf().device("/device:CPU:0"):
        yield
