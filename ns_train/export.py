"""The trainer's export: a SavedModel `beam_jobs.label_and_balance` serves with no flags.

The export takes uint8 images [N, H, W, C] and returns {"probabilities": [N, num_classes]}; the
preprocessing the model was trained with (`ns_train.preprocess`) is inside it, so a server feeds
raw pixels. Beside it, `ns_teacher.json` (`ns_data.teacher.TeacherMetadata`) records the input
geometry, value range, output kind, class names, and the step and eval top-1 it was exported at.
"""
from __future__ import annotations

import logging

import keras
import tensorflow as tf

from ns_data.teacher import TeacherMetadata, write_metadata
from ns_train import preprocess
from ns_train.config import TrainConfig

logger = logging.getLogger("ns_train")


class _Serving(tf.Module):
    """uint8 images [N, H, W, C] → {"probabilities": [N, num_classes]}, through the preprocessor."""

    def __init__(self, model: keras.Model, preprocessor: preprocess.Preprocessor,
                 config: TrainConfig):
        super().__init__(name="ns_teacher")
        self.model = model
        self.preprocessor = preprocessor
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec((None, *config.image.shape), tf.uint8, name="images")])

    def _serve(self, images):
        logits = tf.cast(self.model(self.preprocessor(images), training=False), tf.float32)
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}


def metadata(config: TrainConfig, step: int, eval_top1: float | None = None) -> TeacherMetadata:
    """What `ns_teacher.json` says about an export of `config`'s model at `step`."""
    return TeacherMetadata(
        image_size=tuple(config.image_size), channels=config.channels, input_dtype="uint8",
        input_range=(0.0, 255.0), outputs="probabilities", num_classes=config.num_classes,
        class_names=tuple(config.class_name_list), model=config.model,
        normalization=config.normalization, step=step, eval_top1=eval_top1)


def export_model(model: keras.Model, preprocessor: preprocess.Preprocessor, config: TrainConfig,
                 export_dir: str, step: int, eval_top1: float | None = None) -> None:
    """Writes `model` (the trainer passes its EMA copy) + `preprocessor` as a SavedModel with
    its `ns_teacher.json` to `export_dir`."""
    serving = _Serving(model, preprocessor, config)
    tf.saved_model.save(serving, export_dir, signatures={"serving_default": serving.serve})
    write_metadata(export_dir, metadata(config, step, eval_top1))
    logger.info("Exported the model of step %d to %s", step, export_dir)
