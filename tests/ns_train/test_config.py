"""ns_train.config: flags from the dataclass, config files, precedence and validation."""
from __future__ import annotations

import dataclasses

import pytest

from ns_train import config as cfg

FLAGS = ["--workdir=/w", "--labeled=l*.tfrecord"]


def test_every_option_is_a_documented_flag():
    text = cfg.parser().format_help()
    for field in dataclasses.fields(cfg.TrainConfig):
        assert f"--{field.name}" in text
        assert field.metadata["help"].split()[0] in text


def test_defaults_follow_the_paper():
    config = cfg.parse_args(FLAGS)
    assert (config.label_smoothing, config.stochastic_depth, config.randaugment_ops) == (
        0.1, 0.8, 2)
    assert not config.student and config.unlabeled_batch_size == config.batch_size


def test_config_file_then_flags_override(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("def get_config():\n"
                    "    return {'num_classes': 5, 'image_size': [32, 32], 'batch_size': 8,\n"
                    "            'unlabeled_ratio': 3, 'model': 'efficientnet-b1'}\n")
    config = cfg.parse_args(FLAGS + [f"--config={path}", "--batch_size=4",
                                     "--unlabeled=u*", "--resnet_widths", "8", "16"])
    assert (config.num_classes, config.image_size, config.model) == (5, (32, 32),
                                                                     "efficientnet-b1")
    assert (config.batch_size, config.unlabeled_batch_size) == (4, 12)
    assert config.resnet_widths == (8, 16) and config.student


def test_shipped_configs_parse():
    for name in ("fashion_mnist", "imagenet_efficientnet"):
        config = cfg.parse_args(FLAGS + [f"--config=ns_train/configs/{name}.py"])
        assert config.num_classes in (10, 1000)
    fashion = cfg.parse_args(FLAGS + ["--config=ns_train/configs/fashion_mnist.py"])
    assert fashion.class_name_list[-1] == "Ankle boot" and len(fashion.class_name_list) == 10


def test_the_small_data_config_trains_a_few_hundred_images_for_enough_steps():
    from ns_train import optim  # noqa: PLC0415 - imports TensorFlow

    small = cfg.parse_args(FLAGS + ["--config=ns_train/configs/small_data.py", "--num_classes=5",
                                    "--image_size", "64", "64", "--channels=3"])
    fashion = cfg.parse_args(FLAGS + ["--config=ns_train/configs/fashion_mnist.py"])
    assert (small.num_classes, small.image, small.normalization) == (
        5, cfg.ImageSpec(64, 64, 3), "tft")
    steps = {name: optim.total_steps(c, optim.steps_per_epoch(c, 300, 0))
             for name, c in (("small", small), ("fashion", fashion))}
    assert steps == {"small": 1875, "fashion": 71}


@pytest.mark.parametrize("text, message", [
    ("def get_config():\n    return {'batchsize': 8}\n", "did you mean 'batch_size'"),
    ("CONFIG = {}\n", "has no get_config() function"),
    (None, "c.py: no such file"),
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    path = tmp_path / "c.py"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit):
        cfg.parse_args(FLAGS + [f"--config={path}"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("python -m ns_train.train: error: ")
    assert message in last and str(path) in last


@pytest.mark.parametrize("flags, message", [
    (["--label_smoothing=1.5"], "label_smoothing must be in"),
    (["--stochastic_depth=0"], "stochastic_depth must be in"),
    (["--num_classes=1"], "num_classes must be >= 2"),
    (["--class_names=a,b", "--num_classes=3"], "has 2 names for 3 classes"),
    (["--steps=0", "--epochs=0"], "set --steps or a positive --epochs"),
    (["--model=resnet50"], "invalid choice"),
    (["--batchsize=3"], "unrecognized arguments"),
])
def test_impossible_flags_are_refused_with_the_reason(flags, message, capsys):
    with pytest.raises(SystemExit):
        cfg.parse_args(FLAGS + flags)
    assert message in capsys.readouterr().err


def test_workdir_and_labeled_are_required(capsys):
    with pytest.raises(SystemExit):
        cfg.parse_args(["--labeled=x"])
    assert "--workdir is required" in capsys.readouterr().err


def test_allow_incomplete_is_a_boolean_flag():
    from ns_train.config import parse_args
    base = ["--workdir=w", "--labeled=l", "--unlabeled=u*"]
    assert parse_args(base).allow_incomplete is False
    assert parse_args(base + ["--allow_incomplete"]).allow_incomplete is True
    assert parse_args(base + ["--no-allow_incomplete"]).allow_incomplete is False
