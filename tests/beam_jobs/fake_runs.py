"""label_and_balance runs with the fake teacher, shared by the job's tests and those of the jobs
that read its output (rebalance, report) or feed it other inputs (formats, fuzzing)."""
from __future__ import annotations

import collections
import glob
import os

import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from beam_jobs import label_and_balance as job
from ns_data import completion, schema
from ns_data.balance import id_hash
from tests import fakes
from tests.data_files import read_tfrecords, write_tfrecord

K = 10
SEED = 7


def corpus() -> list[fakes.FakeImage]:
    """Class 0: 30 images (> K, with tied confidences), class 1: 7 (< K), class 2: exactly K,
    class 3: only images below the 0.3 threshold; plus 4 low-confidence images of class 0."""
    specs = ([(0, 20 + (i % 12) * 19) for i in range(30)]
             + [(1, 40 + 30 * i) for i in range(7)]
             + [(2, 100 + 10 * i) for i in range(K)]
             + [(3, i) for i in range(5)]
             + [(0, 13 - i) for i in range(4)])
    return [fakes.fake_image(i, label, code) for i, (label, code) in enumerate(specs)]


def expected_copies(images, k, duplicate=True, min_confidence=0.3, seed=SEED):
    """Brute force: {image id: copies} from sorting each class by (confidence, hash)."""
    by_class = collections.defaultdict(list)
    for im in images:
        if im.confidence >= np.float32(min_confidence):
            by_class[im.label].append(im)
    copies = {}
    for members in by_class.values():
        members.sort(key=lambda im: (im.confidence, id_hash(im.image_id, seed)), reverse=True)
        n = len(members)
        for rank, im in enumerate(members):
            if n > k:
                copies[im.image_id] = 1 if rank < k else 0
            elif duplicate:
                copies[im.image_id] = k // n + (1 if rank < k % n else 0)
            else:
                copies[im.image_id] = 1
    return copies


def read_records(output_dir: str, prefix: str = "pseudo_labels") -> list[bytes]:
    """Every record of the run's `prefix` shards, shard after shard."""
    return read_tfrecords(*sorted(glob.glob(os.path.join(output_dir, f"{prefix}-*.tfrecord"))))


def pseudo_labels(output_dir: str) -> list[schema.PseudoLabel]:
    """The parsed records of the run's pseudo-label shards, shard after shard."""
    return [schema.parse_pseudo_label(r) for r in read_records(output_dir)]


def run_fake(tmp_path, images, *flags, name="out", batch_size=8, input_records=None):
    """label_and_balance with the fake teacher over `images` (or `input_records`), written to
    tmp_path/input.tfrecord unless there already, into tmp_path/`name`, finished as `run` does;
    returns (output directory, stats)."""
    input_path = tmp_path / "input.tfrecord"
    if not input_path.exists():
        if input_records is None:
            fakes.write_images(input_path, images)
        else:
            write_tfrecord(input_path, input_records)
    output_dir = str(tmp_path / name)
    argv = [f"--input={input_path}", "--teacher=unused", f"--output_dir={output_dir}",
            f"--images_per_class={K}", "--num_shards=3", f"--seed={SEED}", *flags]
    opts = PipelineOptions(argv).view_as(job.LabelAndBalanceOptions)
    with BeamTestPipeline(runner="DirectRunner") as p:
        job.build(p, opts, fakes.fake_spec(batch_size), fakes.FakeTeacherHandler(batch_size))
    # As `run` does after the pipeline; the corpora hold bad records on purpose.
    return output_dir, completion.finish_run(output_dir, "label_and_balance", 1.0)


def output_files(directory: str) -> dict[str, bytes]:
    """{name: bytes} of the .tfrecord files of `directory`."""
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if name.endswith(".tfrecord")}
