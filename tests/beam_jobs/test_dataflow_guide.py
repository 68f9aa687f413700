"""docs/dataflow.md and docker/: the documented commands build the Dataflow jobs they describe,
and the worker images agree with requirements.txt and with the Beam that launches them.

Each `python -m beam_jobs...` command of the guide's bash blocks runs as written, except that its
`gs://` input, teacher and predictions become small local stand-ins and `--dry_run=True
--no_auth` is added: the job graph and the Dataflow environment are built offline and inspected.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import apache_beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, SetupOptions,
                                                  WorkerOptions)
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient
from packaging.requirements import Requirement

from beam_jobs import label_and_balance as job
from beam_jobs import rebalance
from ns_data import completion, predictions
from ns_data.records import Prediction

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "dataflow.md"
DOCKER = REPO / "docker"
FLAVORS = ("cpu", "gpu", "tpu")
SAMPLE_INPUT = str(REPO / "ns_data" / "sample" / "unlabeled.tfrecord")
NUM_CLASSES = 10
BEAM_BOOT = "/opt/apache/beam/boot"
# What Beam itself stages for every job; anything else (setup.py's sdist, a requirements file,
# extra packages) would mean workers pip-install the package the image already has.
BEAM_OWN_FILES = {"pickled_main_session", "submission_environment_dependencies.txt"}

# One command per worker type, keyed by machine type: the job, image, accelerator and device.
WORKER_TYPES = {
    "n2-standard-8": dict(module="beam_jobs.rebalance", flavor="cpu", accelerator=None,
                          device=None),
    "n1-standard-8": dict(module="beam_jobs.label_and_balance", flavor="gpu",
                          accelerator="worker_accelerator=type:nvidia-tesla-t4;count:1;"
                          "install-nvidia-driver", device="gpu"),
    "g2-standard-8": dict(module="beam_jobs.label_and_balance", flavor="gpu",
                          accelerator="worker_accelerator=type:nvidia-l4;count:1;"
                          "install-nvidia-driver", device="gpu"),
    "ct5lp-hightpu-1t": dict(module="beam_jobs.label_and_balance", flavor="tpu",
                             accelerator="worker_accelerator=type:tpu-v5-lite-podslice;"
                             "topology:1x1", device="tpu"),
}


def bash_commands(markdown: str) -> list[list[str]]:
    """The commands of a Markdown text's ```bash blocks, line continuations joined, shell-split."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return commands


def job_commands() -> list[list[str]]:
    return [c for c in bash_commands(GUIDE.read_text())
            if c[:2] == ["python", "-m"] and c[2].startswith("beam_jobs.")]


def flag(argv: list[str], name: str) -> str | None:
    """The value of the last `--name=value` in argv."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def machine_of(argv: list[str]) -> str:
    return flag(argv, "machine_type")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A 10-class SavedModel teacher and a one-file predictions table, in place of gs://."""
    root = tmp_path_factory.mktemp("guide")

    class Teacher(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal([8 * 8 * 3, NUM_CLASSES], [0, 1]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, images):
            return {"logits": tf.matmul(tf.reshape(images, [-1, 8 * 8 * 3]), self.w)}

    teacher = Teacher()
    teacher_dir = str(root / "teacher")
    tf.saved_model.save(teacher, teacher_dir, signatures={"serving_default": teacher.serve})

    table_dir = str(root / "predictions")
    os.makedirs(table_dir)
    metadata = predictions.TableMetadata(
        input=SAMPLE_INPUT, input_format="tfrecord", num_classes=NUM_CLASSES, topk=NUM_CLASSES,
        teacher=teacher_dir, image_shape=(8, 8, 3))
    classes, probs = predictions.topk(np.full(NUM_CLASSES, 0.1, np.float32), NUM_CLASSES)
    predictions.write_table_file(predictions.table_file(table_dir, SAMPLE_INPUT),
                                 [Prediction(SAMPLE_INPUT, 0, b"id-0", classes, probs)], metadata)
    completion.write_marker(table_dir, {"job": "label_and_balance"})  # a finished run's table
    return {"--input": SAMPLE_INPUT, "--teacher": teacher_dir, "--predictions": table_dir}


def localized(argv: list[str], stand_ins: dict[str, str]) -> list[str]:
    """argv with its gs:// input, teacher and predictions replaced, as an offline dry run."""
    out = []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name in stand_ins:
            assert value.startswith("gs://"), f"the guide should read {name} from GCS: {arg}"
            arg = f"{name}={stand_ins[name]}"
        out.append(arg)
    return out + ["--dry_run=True", "--no_auth"]


def staged_files(graph) -> set[str]:
    """The names of the files the job's environments would stage for the workers."""
    names = set()
    for environment in graph.components.environments.values():
        for dependency in environment.dependencies:
            role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                dependency.role_payload)
            names.add(role.staged_name)
    return names


def test_the_guide_has_one_command_per_worker_type():
    machines = [machine_of(c) for c in job_commands()]
    assert sorted(machines) == sorted(WORKER_TYPES)


@pytest.mark.parametrize("argv", job_commands(), ids=machine_of)
def test_documented_command_builds_its_dataflow_job(argv, stand_ins):
    machine = machine_of(argv)
    want = WORKER_TYPES[machine]
    assert argv[2] == want["module"]
    image = flag(argv, "sdk_container_image")
    assert re.fullmatch(rf"[a-z0-9-]+-docker\.pkg\.dev/[^/]+/[^/]+/ns-{want['flavor']}:[\w.-]+",
                        image), image
    assert flag(argv, "sdk_location") == "container"

    run = rebalance.run if want["module"] == "beam_jobs.rebalance" else job.run
    result = run(localized(argv[3:], stand_ins))

    options, graph = result.job.options, result.job.proto_pipeline
    # The image has the package: nothing of ours is staged, no setup.py, no requirements.
    assert options.view_as(SetupOptions).setup_file is None
    assert options.view_as(SetupOptions).requirements_file is None
    assert staged_files(graph) <= BEAM_OWN_FILES
    (environment,) = graph.components.environments.values()
    assert beam_runner_api_pb2.DockerPayload.FromString(
        environment.payload).container_image == image

    # What Dataflow would be asked for.
    env = apiclient.Environment([], options, "8", "gs://my-bucket/tmp/pipeline.pb", graph)
    (pool,) = env.proto.worker_pools
    assert pool.machine_type == machine
    assert pool.disk_size_gb == int(flag(argv, "disk_size_gb")) >= 50
    assert pool.autoscaling_settings.max_num_workers == int(flag(argv, "max_num_workers")) > 0
    (harness,) = pool.sdk_harness_container_images
    assert harness.container_image == image
    assert list(env.proto.service_options) == ([want["accelerator"]] if want["accelerator"]
                                               else [])
    experiments = set(env.proto.experiments)
    assert "use_runner_v2" in experiments

    transforms = {t.unique_name for t in graph.components.transforms.values()}
    if want["device"] is None:
        assert not any(name.startswith("TeacherInference") for name in transforms)
        assert "use_multiple_sdk_containers" in experiments
        return
    assert "TeacherInference" in transforms
    opts = options.view_as(job.LabelAndBalanceOptions)
    assert opts.device == want["device"]
    assert opts.batch_size == int(flag(argv, "batch_size"))
    assert job.shares_model(opts)  # one teacher per worker machine
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [want["accelerator"]]
    if want["device"] == "tpu":
        # A TPU chip has one owner: one SDK process per worker, its threads share the teacher.
        assert "no_use_multiple_sdk_containers" in experiments
        assert "use_multiple_sdk_containers" not in experiments
        threads = options.view_as(DebugOptions).number_of_worker_harness_threads
        assert pool.num_threads_per_worker == threads == int(
            flag(argv, "number_of_worker_harness_threads"))
        assert env.proto.worker_zone == options.view_as(WorkerOptions).worker_zone
        assert opts.batch_size % 8 == 0
    else:
        assert "use_multiple_sdk_containers" in experiments


def test_the_guide_builds_every_image_its_commands_use():
    commands = bash_commands(GUIDE.read_text())
    built = {}
    for c in commands:
        if c[:2] == ["docker", "build"]:
            dockerfile, tag = c[c.index("-f") + 1], c[c.index("-t") + 1]
            assert (REPO / dockerfile).is_file(), dockerfile
            assert re.search(r"ns-(\w+):", tag).group(1) == dockerfile.rsplit(".", 1)[1]
            built[tag] = dockerfile
    pushed = {c[2] for c in commands if c[:2] == ["docker", "push"]}
    used = {flag(c, "sdk_container_image") for c in job_commands()}
    assert set(built) == pushed >= used
    assert sorted(built.values()) == [f"docker/Dockerfile.{f}" for f in FLAVORS]


@pytest.mark.parametrize("image_flag",
                         ["--sdk_container_image", "--worker_harness_container_image"])
def test_no_setup_file_is_staged_with_a_container_image(image_flag):
    with_image = job.pipeline_options(["--runner=DataflowRunner", f"{image_flag}=r/ns-cpu:1"])
    assert with_image.view_as(SetupOptions).setup_file is None
    explicit = job.pipeline_options(["--runner=DataflowRunner", f"{image_flag}=r/ns-cpu:1",
                                     "--setup_file=./other/setup.py"])
    assert explicit.view_as(SetupOptions).setup_file == "./other/setup.py"
    without = job.pipeline_options(["--runner=DataflowRunner"])
    assert without.view_as(SetupOptions).setup_file == str(REPO / "setup.py")


# --- The Dockerfiles ---------------------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    lines = [line for line in dockerfile.read_text().splitlines()
             if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def requirement(name: str) -> Requirement:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    (req,) = [Requirement(line) for line in lines
              if line.strip() and not line.startswith("#") and Requirement(line).name == name]
    return req


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dockerfile_matches_requirements_and_the_launching_beam(flavor):
    steps = instructions(DOCKER / f"Dockerfile.{flavor}")
    kinds = [kind for kind, _ in steps]
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    runs = [a for kind, a in steps if kind == "RUN"]

    # Beam's SDK image of the Beam in requirements.txt and of the Beam launching the job, and
    # the Python this test runs under (Dataflow needs the launcher's and workers' to agree).
    (base,) = [a for kind, a in steps if kind == "FROM"]
    beam_version = apache_beam.__version__
    assert base == f"apache/beam_python3.11_sdk:{beam_version}"
    assert requirement("apache-beam").specifier.contains(beam_version)
    assert f'"apache-beam[gcp]=={beam_version}"' in runs[0]

    tf_version = args["TF_VERSION"]
    assert requirement("tensorflow").specifier.contains(tf_version)
    assert tf_version == tf.__version__
    deps = runs[0]
    assert "pip install --no-cache-dir -r requirements.txt" in deps and "pip check" in deps
    tensorflow = {"cpu": '"tensorflow==${TF_VERSION}"',
                  "gpu": '"tensorflow[and-cuda]==${TF_VERSION}"',
                  "tpu": '"tensorflow-tpu==${TF_VERSION}"'}[flavor]
    assert tensorflow in deps
    if flavor == "tpu":
        assert args["LIBTPU_TF_INDEX"] == (
            "https://storage.googleapis.com/libtpu-tf-releases/index.html")
        assert '--find-links "${LIBTPU_TF_INDEX}"' in deps
        assert 'test -f "${TF_PLUGGABLE_DEVICE_LIBRARY_PATH}"' in deps
        env = " ".join(a for kind, a in steps if kind == "ENV")
        for setting in ("TPU_SKIP_MDS_QUERY=1", "TPU_ACCELERATOR_TYPE=v5litepod-1",
                        "TPU_WORKER_HOSTNAMES=localhost", "NEXT_PLUGGABLE_DEVICE_USE_C_API=true",
                        "TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/usr/local/lib/python3.11/"
                        "site-packages/libtpu/libtpu.so"):
            assert setting in env

    # Dependencies are one layer before the code; the package is installed without them.
    copies = [a for kind, a in steps if kind == "COPY"]
    assert copies[0] == "requirements.txt requirements-test.txt ./"
    assert kinds.index("RUN") < steps.index(("COPY", "ns_data ./ns_data"))
    assert {"ns_data ./ns_data", "beam_jobs ./beam_jobs", "ns_train ./ns_train"} <= set(copies)
    assert runs[-1].startswith("pip install --no-cache-dir --no-deps . ")
    assert "import beam_jobs.label_and_balance, beam_jobs.rebalance" in runs[-1]

    # Beam's boot stays the entrypoint.
    entrypoints = [a for kind, a in steps if kind == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == [BEAM_BOOT]


def test_dockerignore_keeps_what_the_images_copy():
    kept = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.startswith("!")}
    for flavor in FLAVORS:
        for kind, a in instructions(DOCKER / f"Dockerfile.{flavor}"):
            if kind == "COPY":
                assert set(a.split()[:-1]) <= kept, a


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_dockerfiles_pass_hadolint():
    files = [str(DOCKER / f"Dockerfile.{f}") for f in FLAVORS]
    done = subprocess.run(["hadolint", *files], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
