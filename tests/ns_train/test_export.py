"""ns_train.export: the SavedModel and ns_teacher.json the Beam job serves with no flags."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from ns_data.teacher import TeacherModelHandler, inspect_teacher, read_metadata
from ns_train import export, preprocess, train
from tests.ns_train import toy


def served_probabilities(export_dir: str, images: np.ndarray) -> np.ndarray:
    """What label_and_balance's handler gets from the export for `images`."""
    spec = inspect_teacher(export_dir, batch_size=16)
    assert (spec.image, spec.num_classes, spec.input_dtype, spec.outputs) == (
        toy.IMAGE, 4, "uint8", "probabilities")
    handler = TeacherModelHandler(spec)
    return np.stack([r.inference[1] for r in
                     handler.run_inference(list(images), handler.load_model())])


def test_an_export_serves_the_models_softmax_of_scaled_pixels(tmp_path):
    config = toy.train_config(tmp_path, "x")
    model = train.build_model(config)
    export_dir = str(tmp_path / "export")
    export.export_model(model, preprocess.Preprocessor(), config, export_dir, step=5)
    metadata = read_metadata(export_dir)
    assert metadata == export.metadata(config, 5)
    assert (metadata.step, metadata.eval_top1, metadata.class_names) == (5, None, ())
    assert (metadata.normalization, metadata.model) == ("none", "small_resnet")
    images, _ = toy.toy_images(20, seed=3)
    expected = tf.nn.softmax(model(images.astype(np.float32) / 255.0, training=False)).numpy()
    np.testing.assert_allclose(served_probabilities(export_dir, images), expected, atol=1e-5)
    assert not np.allclose(expected, expected[0])


@pytest.mark.slow
def test_a_trained_export_serves_through_the_beam_handler_with_the_same_probabilities(
        toy_files, tmp_path):
    config = toy.train_config(tmp_path, toy_files["labeled"], eval=toy_files["eval"],
                              normalization="tft", ema_decay=0.9, class_names="tl,tr,bl,br",
                              steps=8)
    result = train.train(config)
    assert result["step"] == 8 and result["eval"]["count"] == 40
    export_dir = result["export_dir"]
    metadata = read_metadata(export_dir)
    assert metadata.outputs == "probabilities" and metadata.class_names == ("tl", "tr", "bl",
                                                                             "br")
    assert metadata.eval_top1 == pytest.approx(result["eval"]["top1"])
    assert (metadata.image_size, metadata.input_range, metadata.step) == (
        tuple(config.image_size), (0.0, 255.0), 8)

    images, _ = toy.toy_images(20, seed=3)
    served = served_probabilities(export_dir, images)
    trainer = train.Trainer(config, 8, 1.0, str(tmp_path / "transform"))
    trainer.restore()
    normalized = trainer.preprocessor(tf.constant(images))
    expected = tf.nn.softmax(trainer.ema_model(normalized, training=False)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not np.allclose(expected, expected[0])
    # The export normalises with the labeled set's statistics, not a fixed 1/255.
    labeled, _ = toy.toy_images(64)
    np.testing.assert_allclose(normalized.numpy(),
                               (images - labeled.mean()) / labeled.std(), rtol=1e-4, atol=1e-4)

    # A second run on the same labeled files reuses this analysis (as iterate's students do)
    # and its export carries the normalisation: it serves with the analysis moved away.
    reused = dataclasses.replace(config, workdir=str(tmp_path / "reuse"), steps=2, eval="",
                                 transform_from=config.transform_dir)
    export_dir = train.train(reused)["export_dir"]
    assert not (tmp_path / "reuse" / "transform").exists()
    os.rename(tmp_path / "transform", tmp_path / "moved")
    trainer = train.Trainer(reused, 2, 1.0, str(tmp_path / "moved"))
    trainer.restore()
    expected = tf.nn.softmax(trainer.ema_model(trainer.preprocessor(tf.constant(images)),
                                               training=False)).numpy()
    np.testing.assert_allclose(served_probabilities(export_dir, images), expected, atol=1e-5)
    # Another labeled set's analysis is refused before any step.
    other = dataclasses.replace(reused, workdir=str(tmp_path / "other"),
                                labeled=toy_files["eval"], transform_from=str(tmp_path / "moved"))
    with pytest.raises(ValueError, match="--transform_from=.*moved: the analysis read other "
                                         "labeled files"):
        train.train(other)
    assert not (tmp_path / "other" / "checkpoints").exists()
