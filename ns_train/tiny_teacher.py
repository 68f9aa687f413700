"""Train a tiny CNN teacher on labeled TFRecords in seconds and export it for label_and_balance.

    python -m ns_train.tiny_teacher --labeled=ns_data/sample/labeled.tfrecord --export_dir=out/t

Reads records through `ns_data.schema` and decodes with `ns_data.images`, the same code the Beam
job uses, and records the input size, value range and output kind in `ns_teacher.json` so
`label_and_balance` needs no flags to serve it.
"""
from __future__ import annotations

import argparse
import logging

import keras
import numpy as np
import tensorflow as tf

from ns_data import schema
from ns_data.images import ImageSpec, decode_and_resize
from ns_data.teacher import TeacherMetadata, write_metadata


def load_labeled(pattern: str, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """All labeled records matching `pattern` as (uint8 images [N,H,W,C], int labels [N])."""
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise ValueError(f"--labeled={pattern} matches no files")
    feature_spec = schema.tf_feature_spec()

    def parse(serialized):
        parsed = tf.io.parse_single_example(serialized, feature_spec)
        return decode_and_resize(parsed[schema.IMAGE_ENCODED], spec), parsed[schema.LABEL]

    images, labels = [], []
    for image, label in tf.data.TFRecordDataset(sorted(files)).map(parse):
        images.append(image.numpy())
        labels.append(int(label))
    labels = np.asarray(labels)
    if np.any(labels < 0):
        raise ValueError(f"{pattern} has records without a {schema.LABEL!r}")
    return np.stack(images), labels


def tiny_cnn(spec: ImageSpec, num_classes: int) -> keras.Model:
    """Two conv blocks and a dense head, taking float pixels in [0, 1], returning logits."""
    return keras.Sequential([
        keras.Input(spec.shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(num_classes),
    ])


def train_tiny_teacher(labeled: str, export_dir: str, *, spec: ImageSpec = ImageSpec(28, 28, 1),
                       epochs: int = 15, seed: int = 0,
                       class_names: list[str] | None = None) -> dict[str, float]:
    """Trains the tiny CNN on `labeled`, exports a SavedModel to `export_dir`.

    Returns:
      The final training loss and accuracy.
    """
    keras.utils.set_random_seed(seed)
    images, labels = load_labeled(labeled, spec)
    num_classes = int(labels.max()) + 1
    model = tiny_cnn(spec, num_classes)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(images.astype(np.float32) / 255.0, labels, batch_size=64, epochs=epochs,
                        shuffle=True, verbose=0)
    model.export(export_dir, verbose=False)
    write_metadata(export_dir, TeacherMetadata(
        image_size=(spec.height, spec.width), channels=spec.channels, input_range=(0.0, 1.0),
        outputs="logits", num_classes=num_classes, class_names=tuple(class_names or ())))
    return {"loss": float(history.history["loss"][-1]),
            "accuracy": float(history.history["accuracy"][-1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labeled", required=True, help="Glob of labeled TFRecords.")
    parser.add_argument("--export_dir", required=True, help="Where to export the SavedModel.")
    parser.add_argument("--image_size", type=int, nargs=2, default=(28, 28),
                        metavar=("HEIGHT", "WIDTH"), help="Input size (default: 28 28).")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1,
                        help="Input channels (default: %(default)s).")
    parser.add_argument("--epochs", type=int, default=15, help="Epochs (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    args = parser.parse_args(argv)
    spec = ImageSpec(args.image_size[0], args.image_size[1], args.channels)
    metrics = train_tiny_teacher(args.labeled, args.export_dir, spec=spec, epochs=args.epochs,
                                 seed=args.seed)
    print(f"Exported teacher to {args.export_dir}: train loss {metrics['loss']:.3f}, "
          f"accuracy {metrics['accuracy']:.3f}")


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    main()
