"""One big input file read by more than one worker: Parquet split by row groups, and a huge
TFRecord file after `beam_jobs.reshard`.

    python -m bench.split_read [--images 4000] [--image_px 256] [--rows_per_group 100] \\
        [--split_mib 8] [--num_shards 8] [--workers 2] [--rounds 2]

Writes one Parquet file of `--images` photo-like JPEGs of `--image_px` squared in row groups of
`--rows_per_group` rows, and the same images as one TFRecord file. Each case runs `ReadImages`
on DirectRunner with `--workers` SDK worker processes (`--direct_num_workers`,
multi_processing), followed, fused in the same bundle, by the teacher pass's decode to a
224x224x3 input (`--decoder=pillow`), so the stage does the work of the teacher pass's first
stage without the teacher. A probe after the decode records, per bundle, its process,
the images it got, the splits or files they came from and when it ran. Printed per case: the
work items (splits or files), the bundles and processes that read images, images per bundle,
how many bundles ran at once on average, the CPU seconds of the busiest bundle (what the read
stage would take on free cores), the read stage's span (first bundle start to last bundle end)
and the pipeline's wall time, for each of `--rounds` interleaved rounds. On a machine whose
cores other work shares, the span shows the contention and the busiest bundle's CPU time shows
the split of the work.

Cases, in one run, side by side: the Parquet file read whole (`split_bytes` larger than the
file: one split) and in splits of about `--split_mib` MiB; the TFRecord file as it is; the same
file re-cut by `beam_jobs.reshard` into `--num_shards` shards, then read.
"""
from __future__ import annotations

import argparse
import bisect
import io
import json
import os
import tempfile
import time
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.window import GlobalWindow  # noqa: E402
from apache_beam.utils.timestamp import MIN_TIMESTAMP  # noqa: E402
from apache_beam.utils.windowed_value import WindowedValue  # noqa: E402
from PIL import Image  # noqa: E402

from beam_jobs import reshard  # noqa: E402
from ns_data import formats, schema  # noqa: E402
from ns_data.images import ImageSpec, make_decoder  # noqa: E402
from ns_data.progress import Progress  # noqa: E402
from ns_data.read import ReadImages  # noqa: E402
from ns_data.tfrecord import iter_records  # noqa: E402

_WHOLE = 1 << 50  # a split target no file reaches: one split per file
TEACHER_INPUT = ImageSpec(224, 224, 3)


def photo_jpegs(count: int, size: int, distinct: int = 256) -> list[bytes]:
    """Smooth random images with some noise, JPEG quality 90, which decode like photos: `count`
    of them cycling through `distinct` ones (each image has its own id; making every one
    different would take longer than the benchmark)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(min(count, distinct)):
        base = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC))
        noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(noisy).save(out, "JPEG", quality=90)
        images.append(out.getvalue())
    return [images[i % len(images)] for i in range(count)]


class _Probe(beam.DoFn):
    """[RawImage] batches → decoded, and one record per bundle: its process, images, the work
    items they came from (a split's first row, or a file) and when the bundle ran."""

    def __init__(self, split_starts: dict[str, list[int]]):
        self._split_starts = split_starts

    def setup(self):
        self._decode = make_decoder("pillow", TEACHER_INPUT)

    def start_bundle(self):
        self._bundle = uuid.uuid4().hex[:8]
        self._start = time.time()
        self._cpu = time.process_time()
        self._images = 0
        self._items: set[str] = set()

    def process(self, batch):
        for image in batch:
            self._decode(image.encoded)
            starts = self._split_starts.get(image.source)
            if starts:
                split = starts[bisect.bisect_right(starts, image.index) - 1]
                self._items.add(f"{os.path.basename(image.source)}@{split}")
            else:
                self._items.add(os.path.basename(image.source))
        self._images += len(batch)

    def finish_bundle(self):
        if self._images:
            yield WindowedValue({"bundle": self._bundle, "pid": os.getpid(),
                                 "images": self._images, "items": sorted(self._items),
                                 "start": self._start, "end": time.time(),
                                 "cpu": time.process_time() - self._cpu},
                                MIN_TIMESTAMP, [GlobalWindow()])


def _save(records: list[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump(records, f)


def measure(pattern: str, input_format: str, workers: int, work: str,
            split_bytes: int = _WHOLE) -> dict:
    """Runs ReadImages + decode + probe; returns the bundle records and the wall time."""
    split_starts = {}
    if input_format == formats.PARQUET:
        split_starts = {pattern: [s.first_row for s in formats.parquet_splits(
            pattern, target_bytes=split_bytes)]}
    out = os.path.join(work, f"bundles-{uuid.uuid4().hex[:8]}.json")
    options = PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={workers}",
                               "--direct_running_mode=multi_processing"])
    start = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        read = p | "ReadImages" >> ReadImages(pattern, input_format, split_bytes=split_bytes)
        _ = (read.images
             | "Probe" >> beam.ParDo(_Probe(split_starts))
             | "AllBundles" >> beam.combiners.ToList()
             | "Save" >> beam.Map(_save, out))
    wall = time.perf_counter() - start
    Progress.finish_all()
    with open(out) as f:
        bundles = json.load(f)
    items = (len(split_starts[pattern]) if split_starts else len(
        {item for b in bundles for item in b["items"]}))
    return {"bundles": bundles, "wall": wall, "items": items}


def report(name: str, results: list[dict]) -> None:
    """One row of the table: a case over its rounds (bundles and images per bundle of the
    last one)."""
    bundles = results[-1]["bundles"]
    per_bundle = sorted((b["images"] for b in bundles), reverse=True)
    spans, busy, longest = [], [], []
    for result in results:
        runs = result["bundles"]
        spans.append(max(b["end"] for b in runs) - min(b["start"] for b in runs))
        busy.append(sum(b["end"] - b["start"] for b in runs))
        longest.append(max(b["cpu"] for b in runs))
    cpu_text = " ".join(f"{x:.1f}" for x in longest)
    span_text = " ".join(f"{x:.1f}" for x in spans)
    wall_text = " ".join(f"{r['wall']:.0f}" for r in results)
    print(f"{name:<30}{results[-1]['items']:>6}{len(bundles):>8}"
          f"{len({b['pid'] for b in bundles}):>10}{sum(busy) / sum(spans):>8.2f}"
          f"{cpu_text:>12}{span_text:>12}{wall_text:>8}   {per_bundle}", flush=True)


def write_inputs(folder: str, images: list[bytes], rows_per_group: int) -> tuple[str, str]:
    """The images as one Parquet file and as one TFRecord file; their paths."""
    ids = [f"img-{i:06d}" for i in range(len(images))]
    parquet = os.path.join(folder, "big.parquet")
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "id": pa.array(ids)}),
                   parquet, row_group_size=rows_per_group)
    tfrecord = os.path.join(folder, "big.tfrecord")
    with tf.io.TFRecordWriter(tfrecord) as writer:
        for image_id, encoded in zip(ids, images):
            writer.write(schema.image_example(encoded, image_id.encode()))
    return parquet, tfrecord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000, help="Images in the big file.")
    parser.add_argument("--image_px", type=int, default=256, help="Image width and height.")
    parser.add_argument("--rows_per_group", type=int, default=100,
                        help="Rows per Parquet row group.")
    parser.add_argument("--split_mib", type=float, default=8,
                        help="Split target (ReadImages' split_bytes) in MiB.")
    parser.add_argument("--num_shards", type=int, default=8,
                        help="Shards beam_jobs.reshard cuts the TFRecord file into.")
    parser.add_argument("--workers", type=int, default=2,
                        help="DirectRunner SDK worker processes (--direct_num_workers).")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Rounds; each runs every case once, interleaved.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        parquet, tfrecord = write_inputs(work, photo_jpegs(args.images, args.image_px),
                                         args.rows_per_group)
        groups = pq.ParquetFile(parquet).metadata.num_row_groups
        print(f"{args.images} JPEGs of {args.image_px}x{args.image_px} decoded to 224x224; "
              f"one Parquet file of "
              f"{os.path.getsize(parquet) / 2**20:.1f} MiB in {groups} row groups, one TFRecord "
              f"file of {os.path.getsize(tfrecord) / 2**20:.1f} MiB; DirectRunner, "
              f"{args.workers} worker processes\n")
        shards = os.path.join(work, "shards")
        start = time.perf_counter()
        reshard.run([f"--input={tfrecord}", f"--output_dir={shards}",
                     f"--num_shards={args.num_shards}", "--runner=DirectRunner",
                     f"--direct_num_workers={args.workers}",
                     "--direct_running_mode=multi_processing"])
        resharded = time.perf_counter() - start
        counts = [sum(1 for _ in iter_records(os.path.join(shards, name)))
                  for name in sorted(os.listdir(shards)) if name.startswith("images-")]
        cases = {"parquet, whole file": (parquet, "parquet", _WHOLE),
                 f"parquet, splits of {args.split_mib:g} MiB": (
                     parquet, "parquet", int(args.split_mib * 2**20)),
                 "tfrecord, one file": (tfrecord, "tfrecord", _WHOLE),
                 f"tfrecord, {args.num_shards} shards (reshard)": (
                     os.path.join(shards, "images-*.tfrecord"), "tfrecord", _WHOLE)}
        results = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (pattern, input_format, split_bytes) in cases.items():
                results[name].append(measure(pattern, input_format, args.workers, work,
                                             split_bytes))
        print(f"\nreshard: {resharded:.1f} s wall for {args.images} images into "
              f"{len(counts)} shards of {counts} images\n")
        print(f"{'case':<30}{'items':>6}{'bundles':>8}{'processes':>10}{'overlap':>8}"
              f"{'CPU s':>12}{'span s':>12}{'wall s':>8}   images per bundle")
        for name, runs in results.items():
            report(name, runs)
        print("\nitems: work items read (Parquet splits, or files); overlap: the bundles' summed "
              "time over the span, the mean number of bundles running at once; CPU: the CPU "
              "seconds of the busiest bundle (its process), the span on free cores; span: first "
              "bundle's start to last one's end; wall: the whole pipeline, worker start-up "
              "included; CPU, span and wall per round")


if __name__ == "__main__":
    main()
