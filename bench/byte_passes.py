"""How many times image bytes cross a shuffle or materialisation: today's code vs the table path.

    python -m bench.byte_passes [--images 1500] [--image_kib 20] [--base 25259ea]

Runs `label_and_balance` (fake teacher, DirectRunner) on the same input twice per code tree,
without and with a kept scores/predictions directory: the tree at `--base` (the code before
the predictions table, checked out with `git archive` into a temp directory) and this working
tree. Each run happens in its own process with that tree first on the path, and reads Beam's
own measurements afterwards: per PCollection, the element count and the sampled mean element
size (the `beam:metric:sampled_byte_size:v1` monitoring info), so bytes = count x mean size.

A *full-byte pass* is a PCollection whose elements carry images — their mean size is at least
half the mean encoded image — that is (a) the input of a GroupByKey, (b) a side input, or (c)
the main input of a ParDo with side inputs (Dataflow materialises it while the side input is
computed). The input images are tiny 4x4 PNGs padded with a `--image_kib` ancillary chunk, so
an image is far larger than its prediction, as real JPEGs are.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the measured tree: build the job with the fake teacher, run it, measure.
_CHILD = r'''
import json, sys
import apache_beam as beam
from apache_beam.metrics import monitoring_infos as mi
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from beam_jobs import label_and_balance as job
from tests import fakes

from apache_beam.runners.portability.fn_api_runner import fn_runner

# The graph the runner executes: its PCollection ids are the ones the metrics name.
graphs = []
run_via_runner_api = fn_runner.FnApiRunner.run_via_runner_api


def capture(self, pipeline_proto, *args, **kwargs):
    graphs.append(pipeline_proto)
    return run_via_runner_api(self, pipeline_proto, *args, **kwargs)


fn_runner.FnApiRunner.run_via_runner_api = capture
argv, image_bytes, image_size = sys.argv[3:], int(sys.argv[1]), float(sys.argv[2])
opts = PipelineOptions(argv).view_as(job.LabelAndBalanceOptions)
p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
job.build(p, opts, fakes.fake_spec(8), fakes.FakeTeacherHandler(8))
result = p.run()
result.wait_until_finish()
counts, means = {}, {}
for info in result.monitoring_infos():
    pcoll = info.labels.get("PCOLLECTION")
    if info.urn == common_urns.monitoring_info_specs.ELEMENT_COUNT.spec.urn and pcoll:
        counts[pcoll] = mi.extract_metric_result_map_value(info)
    elif info.urn == common_urns.monitoring_info_specs.SAMPLED_BYTE_SIZE.spec.urn and pcoll:
        means[pcoll] = mi.extract_metric_result_map_value(info).mean
size = {pc: counts[pc] * (means.get(pc) or 0) for pc in counts}
images = {pc for pc in counts if (means.get(pc) or 0) >= image_size / 2}
graph, = graphs
leaves = {t.unique_name: t for t in graph.components.transforms.values() if not t.subtransforms}
# The runner adds PCollections of its own (lifted combines, transcodings); every PCollection of
# the graph must have been measured.
# Combines are lifted: their GroupByKey shuffles per-bundle accumulators, not their input, and
# its output is renamed by the runner. Every other PCollection must have been measured.
parent = {child: t for t in graph.components.transforms.values() for child in t.subtransforms}
by_id = {name: tid for tid, t in graph.components.transforms.items() for name in [t.unique_name]}
combine_urn = common_urns.composites.COMBINE_PER_KEY.urn
lifted = {name for name in leaves if by_id[name] in parent
          and parent[by_id[name]].spec.urn == combine_urn}
producer = {pc: name for name, t in leaves.items() for pc in t.outputs.values()}
unmeasured = {pc for pc in set(graph.components.pcollections) - set(size)
              if producer.get(pc) not in lifted}
assert not unmeasured, f"PCollections without measurements: {sorted(unmeasured)[:3]}"
passes, shuffled = [], 0
for name, t in leaves.items():
    inputs = list(t.inputs.values())
    if t.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn and name not in lifted:
        shuffled += sum(size.get(pc, 0) for pc in inputs)
        passes += [(name, "shuffle", size.get(pc, 0)) for pc in inputs if pc in images]
    elif t.spec.urn == common_urns.primitives.PAR_DO.urn:
        side = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs
        for local, pc in t.inputs.items():
            if side and pc in images:
                kind = "side input" if local in side else "materialised main input"
                passes.append((name, kind, size.get(pc, 0)))
print(json.dumps({"passes": passes, "shuffled": shuffled}))
'''


def png_with_padding(index: int, label: int, code: int, kib: int, rng: random.Random) -> bytes:
    """A 4x4 PNG the fake teacher reads (class, confidence code) with a `kib` KiB chunk."""
    from tests import fakes
    png = fakes.fake_image(index, label, code).encoded
    data = rng.randbytes(kib * 1024)
    chunk = struct.pack(">I", len(data)) + b"zzPd" + data + struct.pack(
        ">I", zlib.crc32(b"zzPd" + data) & 0xFFFFFFFF)
    end = png.rindex(b"IEND") - 4  # the IEND chunk's length field
    return png[:end] + chunk + png[end:]


def make_input(path: str, images: int, kib: int) -> int:
    """Writes the input TFRecord; returns the encoded image bytes in it."""
    import tensorflow as tf

    from ns_data import schema
    rng = random.Random(0)
    total = 0
    with tf.io.TFRecordWriter(path) as w:
        for i in range(images):
            encoded = png_with_padding(i, i % 4, rng.randrange(256), kib, rng)
            total += len(encoded)
            w.write(schema.image_example(encoded, b"img-%06d" % i))
    assert tf.io.decode_png(encoded).shape == (4, 4, 1), "the padded PNG must still decode"
    return total


def old_tree(base: str, directory: str) -> str:
    """`git archive` of `base` into `directory` (once)."""
    if not os.path.exists(os.path.join(directory, "beam_jobs")):
        os.makedirs(directory, exist_ok=True)
        archive = subprocess.run(["git", "-C", _ROOT, "archive", base], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    return directory


def measure(tree: str, input_path: str, image_bytes: int, images: int, keep_dir: bool,
            work: str) -> dict:
    out = tempfile.mkdtemp(dir=work)
    argv = [f"--input={input_path}", "--teacher=unused", f"--output_dir={out}/out",
            "--images_per_class=100", "--num_shards=4", "--seed=7"]
    if keep_dir:
        argv.append(f"--scores_dir={out}/kept")  # today: scores; now: the predictions table
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CHILD, str(image_bytes),
                          str(image_bytes / images), *argv], cwd=tree,
                         env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"run in {tree} failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="Input images.")
    parser.add_argument("--image_kib", type=int, default=20,
                        help="KiB of padding per image (images are ~this large).")
    parser.add_argument("--base", default="25259ea",
                        help="The commit measured as today's code (before the table path).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        input_path = os.path.join(work, "input.tfrecord")
        image_bytes = make_input(input_path, args.images, args.image_kib)
        trees = {f"today ({args.base})": old_tree(args.base, os.path.join(work, "old")),
                 "predictions table": _ROOT}
        print(f"{args.images} images, {image_bytes / 2**20:.1f} MiB encoded\n")
        print(f"{'code':<22}{'kept dir':>9}{'full-byte passes':>18}{'GBK bytes/image bytes':>23}"
              f"{'seconds':>9}")
        details = []
        for name, tree in trees.items():
            for keep in (False, True):
                r = measure(tree, input_path, image_bytes, args.images, keep, work)
                print(f"{name:<22}{'yes' if keep else 'no':>9}{len(r['passes']):>18}"
                      f"{r['shuffled'] / image_bytes:>23.2f}{r['seconds']:>9.1f}", flush=True)
                details.append((name, keep, r["passes"]))
        for name, keep, passes in details:
            print(f"\n{name}, kept dir {'yes' if keep else 'no'}:")
            for transform, kind, size in passes:
                print(f"  {kind:<24} {size / image_bytes:5.2f}x image bytes  {transform}")


if __name__ == "__main__":
    main()
