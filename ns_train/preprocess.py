"""Pixel normalisation shared by training and serving, computed with tensorflow-transform.

`analyze_labeled` is a Beam pipeline over the labeled TFRecords: it decodes every image with the
trainer's own parser (`data.parse`, the code the label_and_balance job's `ImageDecoder` runs)
and runs `tft_beam.AnalyzeDataset` to get the per-channel pixel mean and standard deviation.
The resulting transform graph is applied by `Preprocessor` in the training step *and* inside
the exported SavedModel, so a teacher served by label_and_balance sees exactly the
normalisation the student was trained with. Its input is what `checks.scan_stream` found
readable and checked in the labeled files, so no record fails here.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
from collections.abc import Iterator, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from ns_data.images import ImageSpec
from ns_train import checks

logger = logging.getLogger("ns_train")

RAW_FEATURE = "image"
TRANSFORM_DIR = "transform_fn"
STATS_FILE = "labeled_stats.json"
# A channel whose pixels vary by less than one grey level is divided by 1, not blown up.
_MIN_STD = 1.0


@dataclasses.dataclass(frozen=True)
class LabeledStats:
    """What the analysis saw: examples per class (index = class id)."""

    class_counts: tuple[int, ...]

    @property
    def count(self) -> int:
        return sum(self.class_counts)


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """tft: float pixels [N, H, W, C] in 0..255 → per-channel standardised pixels."""
    import tensorflow_transform as tft  # noqa: PLC0415 - heavy, only needed when analysing

    pixels = inputs[RAW_FEATURE]
    channels = pixels.shape[-1]
    flat = tf.reshape(pixels, [-1, channels])
    mean = tft.mean(flat, reduce_instance_dims=False)
    std = tf.maximum(tf.sqrt(tft.var(flat, reduce_instance_dims=False)), _MIN_STD)
    return {RAW_FEATURE: (pixels - mean) / std}


def _decode(records: list[bytes], parser: checks.RecordParser
            ) -> Iterator[tuple[int, np.ndarray]]:
    """A batch of checked labeled records → (class, float pixels) per record."""
    images, targets = parser(records)
    for pixels, target in zip(images, targets):
        yield int(target.argmax()), pixels.astype(np.float32)


def _write_json(path: str, value) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f)


def analyze_labeled(files: Sequence[tuple[str, int]], image: ImageSpec, num_classes: int,
                    output_dir: str, pipeline_args: list[str] | None = None) -> LabeledStats:
    """Runs the tensorflow-transform analysis over the labeled records into `output_dir`.

    Args:
      files: (path, records) of the labeled files, as `checks.scan_stream` found them readable
        and checked them (`StreamScan.files`); only those records are read.
    """
    import tensorflow_transform.beam as tft_beam  # noqa: PLC0415
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils  # noqa: PLC0415

    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {RAW_FEATURE: tf.io.FixedLenFeature(image.shape, tf.float32)}))
    options = PipelineOptions(pipeline_args or ["--runner=DirectRunner"])
    with beam.Pipeline(options=options) as p, \
            tft_beam.Context(temp_dir=posixpath.join(output_dir, "tmp")):
        decoded = (p
                   | "LabeledFiles" >> beam.Create([(path, n) for path, n in files if n])
                   | "ReadLabeled" >> beam.FlatMapTuple(checks.readable_records)
                   | "Batch" >> beam.BatchElements(max_batch_size=256)
                   | "Decode" >> beam.FlatMap(_decode,
                                              checks.RecordParser(image, num_classes)))
        _ = (decoded
             | "Labels" >> beam.Map(lambda example: example[0])
             | "CountPerClass" >> beam.combiners.Count.PerElement()
             | "Gather" >> beam.combiners.ToList()
             | "WriteStats" >> beam.Map(
                 lambda counts: _write_json(posixpath.join(output_dir, STATS_FILE), {
                     "class_counts": dict(counts), **_analysed(files, image)})))
        instances = decoded | "ToInstances" >> beam.Map(lambda e: {RAW_FEATURE: e[1]})
        transform_fn = (instances, metadata) | "Analyze" >> tft_beam.AnalyzeDataset(
            preprocessing_fn)
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
            posixpath.join(output_dir, TRANSFORM_DIR))

    stats = read_stats(output_dir, num_classes)
    tf.io.gfile.rmtree(posixpath.join(output_dir, "tmp"))
    logger.info("Analysed %d labeled images; per class %s", stats.count, stats.class_counts)
    return stats


def read_stats(output_dir: str, num_classes: int) -> LabeledStats:
    """The class counts `analyze_labeled` wrote to `output_dir`."""
    with tf.io.gfile.GFile(posixpath.join(output_dir, STATS_FILE)) as f:
        counts = {int(k): v for k, v in json.load(f)["class_counts"].items()}
    return LabeledStats(tuple(counts.get(c, 0) for c in range(num_classes)))


def has_analysis(output_dir: str) -> bool:
    return tf.io.gfile.exists(posixpath.join(output_dir, TRANSFORM_DIR)) and tf.io.gfile.exists(
        posixpath.join(output_dir, STATS_FILE))


def _analysed(files: Sequence[tuple[str, int]], image: ImageSpec) -> dict:
    """What an analysis read, as its stats file records it: (path, records) of each labeled file
    and the image shape."""
    return {"files": [[path, n] for path, n in files if n], "image": list(image.shape)}


def check_reusable(output_dir: str, files: Sequence[tuple[str, int]], image: ImageSpec) -> None:
    """Refuses to reuse the analysis in `output_dir` (`--transform_from`) unless it read exactly
    these labeled files, with these record counts, at this image shape: then its statistics are
    the ones a new analysis would compute.

    Raises:
      ValueError: naming the difference.
    """
    flag = f"--transform_from={output_dir}"
    if not has_analysis(output_dir):
        raise ValueError(f"{flag}: no finished tensorflow-transform analysis there (a training "
                         f"run's WORKDIR/transform holds {TRANSFORM_DIR}/ and {STATS_FILE})")
    with tf.io.gfile.GFile(posixpath.join(output_dir, STATS_FILE)) as f:
        recorded = json.load(f)
    if "files" not in recorded:
        raise ValueError(f"{flag}: the analysis does not record which files it read (written "
                         "by an older version); leave --transform_from empty to analyse again")
    wanted = _analysed(files, image)
    if recorded["image"] != wanted["image"]:
        raise ValueError(f"{flag}: the analysis saw images of shape {recorded['image']}, this "
                         f"run trains on {wanted['image']}")
    if recorded["files"] != wanted["files"]:
        different = sorted(set(map(tuple, recorded["files"])) ^ set(map(tuple, wanted["files"])))
        raise ValueError(f"{flag}: the analysis read other labeled files than --labeled "
                         f"matches now; (file, records) in one and not the other: "
                         f"{different[:3]}")


class Preprocessor(tf.Module):
    """uint8 images [N, H, W, C] → the float input the model is trained on.

    With a tensorflow-transform directory, applies its graph (per-channel standardisation);
    without one, scales pixels to [0, 1]. Tracked by the export, so serving applies the same.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(name="preprocessor")
        self._layer = None
        if output_dir:
            import tensorflow_transform as tft  # noqa: PLC0415

            transform = tft.TFTransformOutput(posixpath.join(output_dir, TRANSFORM_DIR))
            self._layer = transform.transform_features_layer()

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        pixels = tf.cast(images, tf.float32)
        if self._layer is None:
            return pixels / 255.0
        return self._layer({RAW_FEATURE: pixels})[RAW_FEATURE]
