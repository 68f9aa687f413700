"""Device placement: every path (TPU, GPU, CPU, failures) taken with a fake TensorFlow backend."""
from __future__ import annotations

import contextlib

import pytest

from ns_data import devices
from ns_data.devices import TeacherRuntime

pytestmark = pytest.mark.usefixtures("fresh_placements")  # tests/conftest.py


class FakeBackend:
    """Records what placement asked TensorFlow to do."""

    def __init__(self, tpu: bool = False, gpus: int = 0, tpu_error: Exception | None = None,
                 initialized: bool = False):
        self._tpu, self._tpu_error, self._initialized = tpu, tpu_error, initialized
        self._gpus = [f"GPU:{i}" for i in range(gpus)]
        self.calls: list[tuple] = []

    def tpu_present(self):
        return self._tpu

    def gpus(self):
        self.calls.append(("gpus",))
        return list(self._gpus)

    def set_memory_growth(self, gpu):
        if self._initialized:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.calls.append(("growth", gpu))

    def set_memory_limit(self, gpu, megabytes):
        self.calls.append(("limit", gpu, megabytes))

    def initialize_tpu(self):
        self.calls.append(("initialize_tpu",))
        if self._tpu_error:
            raise self._tpu_error
        return FakeStrategy()

    def set_graph_options(self, options):
        self.calls.append(("graph_options", options))


class FakeStrategy:
    """Stands in for a TPUStrategy: records scopes and runs."""

    def __init__(self):
        self.scopes = 0

    @contextlib.contextmanager
    def scope(self):
        self.scopes += 1
        yield


def test_tpu_vm_takes_the_tpu_path_once_per_process():
    backend = FakeBackend(tpu=True, gpus=1)
    placement = devices.place(TeacherRuntime(), backend)
    assert (placement.kind, placement.device) == ("tpu", "/device:TPU:0")
    assert isinstance(placement.strategy, FakeStrategy)
    with placement.scope():
        pass
    assert placement.strategy.scopes == 1
    # A second handler in the same process reuses the initialised TPU system.
    assert devices.place(TeacherRuntime(), FakeBackend(tpu=True)) is placement
    assert backend.calls == [("initialize_tpu",)]


def test_gpu_sets_memory_growth_on_every_gpu():
    backend = FakeBackend(gpus=2)
    placement = devices.place(TeacherRuntime(), backend)
    assert (placement.kind, placement.device, placement.strategy) == (
        "gpu", "/device:GPU:0", None)
    assert backend.calls == [("gpus",), ("growth", "GPU:0"), ("growth", "GPU:1")]


def test_gpu_memory_limit_replaces_growth():
    backend = FakeBackend(gpus=1)
    devices.place(TeacherRuntime(device="gpu", gpu_memory_limit_mb=3000), backend)
    assert backend.calls == [("gpus",), ("limit", "GPU:0", 3000)]


def test_gpu_already_initialised_is_logged_not_raised(caplog):
    backend = FakeBackend(gpus=1, initialized=True)
    assert devices.place(TeacherRuntime(), backend).kind == "gpu"
    assert "already initialised" in caplog.text


def test_cpu_stays_as_today():
    backend = FakeBackend()
    placement = devices.place(TeacherRuntime(), backend)
    assert (placement.kind, placement.device, placement.strategy) == ("cpu", "/device:CPU:0", None)
    assert backend.calls == [("gpus",)]


def test_explicit_cpu_ignores_accelerators():
    backend = FakeBackend(tpu=True, gpus=1)
    assert devices.place(TeacherRuntime(device="cpu"), backend).kind == "cpu"
    assert backend.calls == []


def test_explicit_gpu_without_one_fails_loudly():
    with pytest.raises(RuntimeError, match=r"--device=gpu but TensorFlow sees no GPU"):
        devices.place(TeacherRuntime(device="gpu"), FakeBackend(tpu=False))


@pytest.mark.parametrize("device, backend, missing", [
    ("gpu", FakeBackend(), "--device=gpu but TensorFlow sees no GPU on this machine"),
    ("gpu", FakeBackend(gpus=1), None),
    ("tpu", FakeBackend(gpus=1), "--device=tpu but this machine is no TPU VM"),
    ("tpu", FakeBackend(tpu=True), None),
    ("auto", FakeBackend(), None),
    ("cpu", FakeBackend(), None),
])
def test_a_missing_device_is_found_without_setting_anything_up(device, backend, missing):
    found = devices.missing_device(device, backend)
    assert found == missing if missing is None else found.startswith(missing)
    assert ("initialize_tpu",) not in backend.calls


def test_explicit_tpu_that_does_not_initialise_fails_loudly():
    backend = FakeBackend(tpu=True, tpu_error=ValueError("no TPU found"))
    with pytest.raises(RuntimeError, match=r"--device=tpu .*ValueError: no TPU found"):
        devices.place(TeacherRuntime(device="tpu"), backend)


def test_auto_falls_back_when_the_tpu_does_not_initialise(caplog):
    backend = FakeBackend(tpu=True, gpus=1, tpu_error=ValueError("busy"))
    assert devices.place(TeacherRuntime(), backend).kind == "gpu"
    assert "did not initialise" in caplog.text


@pytest.mark.parametrize("gpus,tpu,options", [
    (1, False, [{"auto_mixed_precision": True}]),
    (0, False, [{"auto_mixed_precision_onednn_bfloat16": True}]),
    (0, True, []),
])
def test_mixed_precision_per_device(gpus, tpu, options):
    backend = FakeBackend(tpu=tpu, gpus=gpus)
    devices.place(TeacherRuntime(precision="mixed"), backend)
    assert [c[1] for c in backend.calls if c[0] == "graph_options"] == options


def test_float32_sets_no_graph_option():
    backend = FakeBackend(gpus=1)
    devices.place(TeacherRuntime(), backend)
    assert not [c for c in backend.calls if c[0] == "graph_options"]


@pytest.mark.parametrize("kwargs,match", [
    ({"device": "npu"}, "--device must be one of"),
    ({"precision": "int8"}, "--precision must be one of"),
    ({"gpu_memory_limit_mb": 0}, "--gpu_memory_limit_mb must be >= 1"),
])
def test_runtime_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeacherRuntime(**kwargs)


def test_configure_gpus_alone_is_what_decode_processes_call():
    backend = FakeBackend(gpus=1)
    devices.configure_gpus(TeacherRuntime(gpu_memory_limit_mb=512), backend)
    assert backend.calls == [("gpus",), ("limit", "GPU:0", 512)]
