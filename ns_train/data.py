"""tf.data input for the trainer: labeled and pseudo-labeled TFRecords, parsed by `ns_data.schema`.

Every batch is (uint8 images [N, H, W, C], float32 targets [N, num_classes]). Targets come from
`schema.dense_targets`, so one reader serves labeled records (one-hot of `label`) and the
hard, soft and soft_topk output of `beam_jobs.label_and_balance` alike. Images are decoded with
`ns_data.images.decode_and_resize`, the same function the Beam job feeds the teacher with.
"""
from __future__ import annotations

import dataclasses

from ns_data import schema
from ns_data.images import ImageSpec, decode_and_resize
from ns_data.lazy import tf


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one input stream reads and how.

    Attributes:
      pattern: glob of TFRecord files.
      image: decoded image geometry.
      num_classes: width of the targets.
      batch_size: examples per batch.
      training: shuffle and repeat forever (else one ordered pass, last batch kept).
      seed: shuffle seed; the same seed gives the same order.
      shuffle_buffer: examples in the shuffle buffer.
      target_temperature: soft targets t become softmax(log t / T); 1 keeps them.
      files: (path, records) per file: read only the first `records` of each, e.g. the
        readable records `checks.scan_stream` found before a file's damage. Empty: every file
        matching `pattern`, to its end.
    """

    pattern: str
    image: ImageSpec
    num_classes: int
    batch_size: int
    training: bool = True
    seed: int = 0
    shuffle_buffer: int = 10_000
    target_temperature: float = 1.0
    files: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.target_temperature > 0:
            raise ValueError(f"target_temperature must be > 0, got {self.target_temperature}")


def temper(targets: tf.Tensor, temperature: float) -> tf.Tensor:
    """Sharpens (T < 1) or flattens (T > 1) target distributions; one-hot rows stay one-hot."""
    if temperature == 1.0:
        return targets
    logits = tf.math.log(tf.maximum(targets, 1e-30)) / temperature
    tempered = tf.nn.softmax(logits, axis=-1)
    return tf.where(targets > 0, tempered, tf.zeros_like(tempered))


def parse(serialized: tf.Tensor, image: ImageSpec, num_classes: int,
          target_temperature: float = 1.0) -> tuple[tf.Tensor, tf.Tensor]:
    """The trainer's parser: serialized records [N] → (uint8 images, float32 targets).

    `dataset` maps it over every batch; `checks` runs it over the labeled and eval records
    before training, so a record passes the check exactly when training can read it.

    Raises:
      tf.errors.InvalidArgumentError: when a record is not an Example of `schema`, has no
        usable target (`schema.dense_targets`) or an image `decode_and_resize` cannot decode.
    """
    parsed = tf.io.parse_example(serialized, schema.tf_feature_spec())
    targets = temper(schema.dense_targets(parsed, num_classes), target_temperature)
    images = tf.map_fn(lambda b: decode_and_resize(b, image), parsed[schema.IMAGE_ENCODED],
                       fn_output_signature=tf.TensorSpec(image.shape, tf.uint8))
    return images, targets


def dataset(spec: InputSpec) -> tf.data.Dataset:
    """Batches of (uint8 images, float32 targets) from `spec.files`, else `spec.pattern`.

    Raises:
      ValueError: when the pattern matches no file, or no file has a record to read.
    """
    files = spec.files or tuple((path, -1) for path in sorted(tf.io.gfile.glob(spec.pattern)))
    if not files:
        raise ValueError(f"{spec.pattern} matches no files")
    files = [(path, records) for path, records in files if records]
    if not files:
        raise ValueError(f"{spec.pattern} has no readable records")
    paths, counts = zip(*files)
    files_ds = tf.data.Dataset.from_tensor_slices((list(paths), tf.constant(counts, tf.int64)))
    if spec.training:
        files_ds = files_ds.shuffle(len(files), seed=spec.seed, reshuffle_each_iteration=True)
    # take() stops each file before its damage: tf.data never reads the bytes that would fail.
    records = files_ds.interleave(
        lambda path, count: tf.data.TFRecordDataset(path).take(count),
        cycle_length=min(len(files), 16), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if spec.training:
        records = records.shuffle(spec.shuffle_buffer, seed=spec.seed).repeat()
    return (records
            .batch(spec.batch_size, drop_remainder=spec.training)
            .map(lambda serialized: parse(serialized, spec.image, spec.num_classes,
                                          spec.target_temperature),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def mixed_dataset(labeled: InputSpec, unlabeled: InputSpec) -> tf.data.Dataset:
    """Each step: a labeled batch and an unlabeled batch, zipped as ((x_l, y_l), (x_u, y_u)).

    The unlabeled batch size relative to the labeled one is the paper's `unlabeled_ratio`.
    """
    if not (labeled.training and unlabeled.training):
        raise ValueError("mixed_dataset is for training streams (training=True)")
    return tf.data.Dataset.zip((dataset(labeled), dataset(unlabeled)))
