"""label_and_balance with a real (tiny) exported SavedModel, and the Dataflow job graph."""
from __future__ import annotations

import collections
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

from beam_jobs import cli
from beam_jobs import label_and_balance as job
from beam_jobs import rebalance
from ns_data import completion, fashion_mnist, schema, stats
from ns_data.images import ImageDecoder, ImageSpec
from ns_train.tiny_teacher import train_tiny_teacher
from tests.data_files import write_tfrecord

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "ns_data", "sample")
N_IMAGES = 300
K = 25


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "saved_model")
    train_tiny_teacher(os.path.join(SAMPLE, "labeled.tfrecord"), path, epochs=3, seed=1,
                       class_names=fashion_mnist.CLASS_NAMES)
    return path


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """The first N_IMAGES records of the embedded sample."""
    records = [r.numpy() for r in
               tf.data.TFRecordDataset(os.path.join(SAMPLE, "unlabeled.tfrecord")).take(N_IMAGES)]
    return write_tfrecord(tmp_path_factory.mktemp("input") / "unlabeled.tfrecord", records), records


def input_with_two_bad_records(records: list[bytes], tmp_path) -> str:
    """An input file of `records` plus one undecodable image and one non-Example record."""
    return write_tfrecord(str(tmp_path / "input.tfrecord"), records + [
        schema.image_example(b"\x89PNG\r\n\x1a\n-not-really", b"corrupt"), b"not an Example"])


def keras_probabilities(teacher: str, records: list[bytes]) -> dict[bytes, np.ndarray]:
    """What the exported model says about each image, computed outside Beam."""
    decoder = ImageDecoder(ImageSpec(28, 28, 1))
    model = tf.saved_model.load(teacher)
    out = {}
    for r in records:
        f = schema.parse_example(r)
        pixels = decoder(f[schema.IMAGE_ENCODED][0]).astype(np.float32)[np.newaxis] / 255.0
        logits = model.serve(tf.constant(pixels)).numpy()[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        out[f[schema.IMAGE_ID][0]] = p / p.sum()
    return out


@pytest.mark.slow
def test_real_savedmodel_labels_and_counts(teacher, unlabeled, tmp_path, capsys):
    input_path, records = unlabeled
    output_dir = str(tmp_path / "out")
    job.run([f"--input={input_path}", f"--teacher={teacher}", f"--output_dir={output_dir}",
             f"--images_per_class={K}", "--num_shards=2", "--batch_size=32",
             "--label_type=soft"])
    printed = capsys.readouterr().out
    expected = keras_probabilities(teacher, records)
    written = [schema.parse_pseudo_label(r.numpy()) for r in tf.data.TFRecordDataset(
        sorted(glob.glob(os.path.join(output_dir, "pseudo_labels-*.tfrecord"))))]
    for r in written:
        want = expected[r.image_id]
        assert r.label == int(np.argmax(want))
        np.testing.assert_allclose(r.probabilities, want, atol=1e-5)

    above = collections.Counter(int(np.argmax(p)) for p in expected.values() if p.max() >= 0.3)
    assert collections.Counter(r.label for r in written) == {c: K for c in above}
    run_stats = stats.read_stats(output_dir)
    assert {c["class"]: c["above_threshold"] for c in run_stats["classes"] if c[
        "above_threshold"]} == dict(above)
    assert run_stats["totals"]["read"] == N_IMAGES
    assert run_stats["totals"]["written"] == K * len(above) == len(written)
    assert run_stats["config"]["image_shape"] == [28, 28, 1]
    assert run_stats["config"]["decoder"] == "pillow"
    stats.check_reconciles(run_stats)
    # The teacher's class names (its ns_teacher.json) name the classes in stats.json and the
    # summary, and travel with the predictions table to a rebalance of it.
    assert run_stats["class_names"] == fashion_mnist.CLASS_NAMES
    assert [c["name"] for c in run_stats["classes"]] == fashion_mnist.CLASS_NAMES
    assert "8 Bag" in printed and "9 Ankle boot" in printed
    rebalanced = str(tmp_path / "rebalanced")
    rebalance.run([f"--predictions={output_dir}/predictions", f"--output_dir={rebalanced}",
                   "--images_per_class=5", "--runner=DirectRunner"])
    again = stats.read_stats(rebalanced)
    assert again["class_names"] == fashion_mnist.CLASS_NAMES
    assert [c["name"] for c in again["classes"]] == fashion_mnist.CLASS_NAMES
    assert again["totals"]["written"] == 5 * len(above)


@pytest.mark.parametrize("accelerator,machine", [
    ("worker_accelerator=type:tpu-v5-lite-podslice;topology:1x1", "ct5lp-hightpu-1t"),
    ("worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver", "n1-standard-8"),
])
def test_dataflow_dry_run_builds_the_job_graph(teacher, unlabeled, accelerator, machine):
    result = job.run([
        f"--input={unlabeled[0]}", f"--teacher={teacher}", "--output_dir=gs://ns-bucket/out",
        "--runner=DataflowRunner", "--dry_run=True", "--no_auth", "--sdk_location=container",
        "--project=test-project", "--region=us-central1", "--temp_location=gs://ns-bucket/tmp",
        f"--dataflow_service_options={accelerator}", f"--machine_type={machine}",
        "--skip_teacher_check"])
    graph = result.job.proto_pipeline
    top_level = {t.unique_name for t in graph.components.transforms.values()
                 if "/" not in t.unique_name}
    assert {"ReadImages", "TeacherInference", "WritePredictions", "CountPredictions",
            "BalancePerClass", "WriteLabeledShards", "WriteStats"} <= top_level
    assert full_byte_passes(graph) == ["WriteLabeledShards/Write/GroupShards"]
    assert any(t.unique_name.endswith("RunInference") for t in graph.components.transforms.values())
    options = result.job.options
    assert options.view_as(GoogleCloudOptions).dataflow_service_options == [accelerator]
    # The job ships this package to workers unless told otherwise.
    assert options.view_as(SetupOptions).setup_file.endswith("setup.py")
    env = apiclient.Environment([], options, "8", "gs://ns-bucket/tmp/pipeline.pb", graph)
    assert list(env.proto.service_options) == [accelerator]
    assert env.proto.worker_pools[0].machine_type == machine


# Leaf transforms whose main output carries image bytes (encoded or decoded), and those that take
# such elements and emit none (their outputs are small: predictions, file names).
_BYTE_SOURCES = ("ReadImages/ReadFiles",
                 "WriteLabeledShards/PairWithImages")
_BYTE_SINKS = ("TeacherInference/ToPredictions",
               "WriteLabeledShards/Write/WriteChunks")
_SMALL_OUTPUTS = ("failed",)  # tagged outputs of byte transforms that carry failures only


def full_byte_passes(graph) -> list[str]:
    """Shuffles and materialisations of a job graph whose elements carry image bytes.

    A PCollection carries bytes when a byte source or a transform fed bytes produced it (minus
    the sinks and the failure outputs). A pass is a GroupByKey of such a PCollection, such a
    PCollection used as a side input, or such a PCollection as the main input of a ParDo with
    side inputs (Dataflow materialises it while the side input is computed).
    """
    leaves = {tid: t for tid, t in graph.components.transforms.items() if not t.subtransforms}
    consumers: dict[str, list] = collections.defaultdict(list)
    for t in leaves.values():
        for pcoll in t.inputs.values():
            consumers[pcoll].append(t)
    carrying, todo = set(), [t for t in leaves.values() if t.unique_name in _BYTE_SOURCES]
    seen = set()
    while todo:
        t = todo.pop()
        if t.unique_name in seen or t.unique_name in _BYTE_SINKS:
            continue
        seen.add(t.unique_name)
        for tag, pcoll in t.outputs.items():
            if tag not in _SMALL_OUTPUTS:
                carrying.add(pcoll)
                todo.extend(consumers[pcoll])
    passes = []
    for t in leaves.values():
        if t.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn:
            if any(p in carrying for p in t.inputs.values()):
                passes.append(t.unique_name)
        elif t.spec.urn == common_urns.primitives.PAR_DO.urn:
            side = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs
            if side and any(p in carrying for p in t.inputs.values()):
                passes.append(t.unique_name)
    assert carrying, "no transform of the graph reads image bytes: the names above are stale"
    return sorted(passes)


def test_rebalance_dry_run_graph_reads_images_once(teacher, unlabeled, tmp_path):
    output_dir = str(tmp_path / "first")
    job.run([f"--input={unlabeled[0]}", f"--teacher={teacher}", f"--output_dir={output_dir}",
             "--images_per_class=5", "--num_shards=2", "--label_type=hard"])
    result = rebalance.run([
        f"--predictions={output_dir}/predictions", "--output_dir=gs://ns-bucket/re",
        "--label_type=soft_topk", "--topk=3", "--runner=DataflowRunner", "--dry_run=True",
        "--no_auth", "--sdk_location=container", "--project=test-project",
        "--region=us-central1", "--temp_location=gs://ns-bucket/tmp"])
    graph = result.job.proto_pipeline
    assert full_byte_passes(graph) == ["WriteLabeledShards/Write/GroupShards"]
    assert not any(t.unique_name.startswith("TeacherInference")
                   for t in graph.components.transforms.values())


@pytest.mark.slow
def test_two_processes_write_identical_bytes(teacher, unlabeled, tmp_path):
    """The same inputs and seed give the same bytes in every output file, across processes.

    (Protobuf map order, hash seeds and TF function counters differ between processes, so two
    runs in one process prove less.)
    """
    input_path = input_with_two_bad_records(unlabeled[1][:120], tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONHASHSEED": "random"}
    # The same command line in two working directories (relative --output_dir), concurrently.
    for i in range(2):
        (tmp_path / f"run{i}").mkdir()
    runs = [subprocess.Popen(
        [sys.executable, "-m", "beam_jobs.label_and_balance", f"--input={input_path}",
         f"--teacher={teacher}", "--output_dir=out", "--images_per_class=7",
         "--num_shards=3", "--label_type=soft_topk", "--topk=3", "--seed=5",
         "--max_failure_fraction=0.05", "--runner=DirectRunner"],
        env=env, cwd=str(tmp_path / f"run{i}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err.decode()[-2000:]

    def files(run_dir):
        out = {}
        for dirpath, _, names in os.walk(run_dir):
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, run_dir)] = f.read()
        return out

    first, second = files(tmp_path / "run0" / "out"), files(tmp_path / "run1" / "out")
    assert sorted(first) == sorted(second)
    assert {name.split("-")[0] for name in first} == {
        "pseudo_labels", "dead_letters", "stats.json", "predictions/predictions", "_SUCCESS",
        "predictions/_SUCCESS"}
    for name in first:
        assert first[name] == second[name], name


@pytest.mark.slow
def test_too_many_failures_exit_1_with_counts_and_leave_no_marker(teacher, unlabeled, tmp_path,
                                                                   capsys):
    input_path = input_with_two_bad_records(unlabeled[1][:98], tmp_path)
    out = str(tmp_path / "out")
    argv = [f"--input={input_path}", f"--teacher={teacher}", f"--output_dir={out}",
            "--images_per_class=5", "--num_shards=2", "--runner=DirectRunner"]
    assert cli.main(job.run, "label_and_balance", argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("label_and_balance: error: 2 of 100 images failed (2.0%; parse 1, "
                            "decode 1), more than "
                            "--max_failure_fraction=0.01")
    # Everything was written and counted, the table is complete, the output is not.
    assert stats.read_stats(out)["totals"]["failed_total"] == 2
    assert completion.is_complete(os.path.join(out, "predictions"))
    assert not completion.is_complete(out)

    assert cli.main(job.run, "label_and_balance",
                    argv + ["--overwrite", "--max_failure_fraction=0.02"]) == 0
    marker = json.loads(open(os.path.join(out, "_SUCCESS")).read())
    assert marker["complete"] and marker["job"] == "label_and_balance"
    assert marker["totals"] == stats.read_stats(out)["totals"]
    assert marker["config"]["images_per_class"] == 5

    # A bad flag value is one line naming it, exit status 2.
    assert cli.main(job.run, "label_and_balance", argv + ["--temperature=-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "label_and_balance: error: --temperature must be a finite number > 0, got -1.0")


def test_launch_check_refuses_a_softmax_teacher_read_as_logits(teacher, unlabeled, tmp_path):
    loaded = tf.saved_model.load(teacher)

    class Softmax(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = loaded

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
        def serve(self, images):
            return tf.nn.softmax(self.inner.serve(images))

    softmax = Softmax()
    softmax_dir = str(tmp_path / "softmax")
    tf.saved_model.save(softmax, softmax_dir, signatures={"serving_default": softmax.serve})
    input_path, _ = unlabeled
    out = str(tmp_path / "out")
    argv = [f"--input={input_path}", f"--teacher={softmax_dir}", f"--output_dir={out}",
            "--runner=DirectRunner"]
    with pytest.raises(ValueError, match="fails its launch check: every output row on 64 input "
                                         "images is already a probability vector.*pass "
                                         "--teacher_outputs=probabilities"):
        job.run(argv)
    assert not os.path.exists(out)  # refused before any work
    spec = job.teacher_spec(job.pipeline_options(argv + ["--teacher_outputs=probabilities"])
                            .view_as(job.LabelAndBalanceOptions))
    job.check_teacher(spec)  # the right flag passes


def test_launch_check_refuses_flags_that_contradict_the_teachers_record(teacher, unlabeled,
                                                                         tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"fails its launch check: --input_range=0,255 overrides "
                       r"0,1, which the teacher's ns_teacher.json records for how it was trained "
                       r"\(--skip_teacher_check runs anyway\)"):
        job.run([f"--input={unlabeled[0]}", f"--teacher={teacher}", f"--output_dir={out}",
                 "--input_range=0,255"])
    assert not os.path.exists(out)


def test_launch_sample_is_the_first_decodable_images(unlabeled, tmp_path):
    _, records = unlabeled
    input_path = write_tfrecord(str(tmp_path / "input.tfrecord"), [
        b"not an Example", schema.image_example(b"junk", b"bad")] + records[:80])
    argv = [f"--input={input_path}", "--teacher=t", "--output_dir=o"]
    opts = job.pipeline_options(argv).view_as(job.LabelAndBalanceOptions)
    spec = type("Spec", (), {"image": ImageSpec(28, 28, 1)})()
    sample = job.launch_sample(opts, spec)
    decoder = ImageDecoder(ImageSpec(28, 28, 1))
    want = [decoder(schema.parse_example(r)[schema.IMAGE_ENCODED][0]) for r in records[:64]]
    np.testing.assert_array_equal(sample, np.stack(want))
