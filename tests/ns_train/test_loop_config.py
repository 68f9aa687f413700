"""ns_train.loop_config: loop configs load with variants, and every setting is checked when the
config is made."""
from __future__ import annotations

import dataclasses

import pytest

from ns_train import loop_config as lc

FASHION_MNIST = "ns_train/configs/fashion_mnist_loop.py"


def _config(**changes) -> lc.LoopConfig:
    fields = {"teacher": {"num_classes": 3, "resnet_widths": (4, 8), "steps": 20},
              "students": ({"resnet_widths": (4, 8)}, {"resnet_widths": (6, 12)}), **changes}
    return lc.LoopConfig(**fields)


def test_fashion_mnist_loop_is_the_replicate_run():
    config = lc.load(FASHION_MNIST)
    teacher = config.teacher_config(workdir="w")
    assert (teacher.resnet_widths, teacher.resnet_blocks, teacher.steps, teacher.batch_size,
            teacher.ema_decay, teacher.dropout, teacher.randaugment_ops,
            teacher.randaugment_magnitude, teacher.log_every, teacher.checkpoint_every,
            teacher.num_classes, teacher.workdir) == ((16, 32, 64), 1, 1500, 128, 0.99, 0.2, 2,
                                                      10, 150, 375, 10, "w")
    assert len(teacher.class_name_list) == 10
    students = [config.student_config(r) for r in range(2)]
    assert [(s.resnet_widths, s.steps, s.log_every) for s in students] == [
        ((24, 48, 96), 2400, 240), ((32, 64, 128), 2400, 240)]
    assert (config.rounds, config.ablations, config.seed, config.labeling) == (
        1, ("full",), 0, lc.LabelingConfig(min_confidence=0.3, images_per_class=0,
                                           label_type="soft", num_shards=8, batch_size=256))
    assert config.fashion_mnist == lc.FashionMNISTSplits(5000, 5000, 0)
    quiet = config.student_config(0, noise=False)
    assert (quiet.randaugment_ops, quiet.dropout, quiet.stochastic_depth) == (0, 0.0, 1.0)


def test_runlocal_is_a_tiny_variant():
    config = lc.load(FASHION_MNIST + ":runlocal")
    assert config.fashion_mnist == lc.FashionMNISTSplits(200, 100, 1000)
    assert config.teacher_config().steps == 400
    assert [config.student_config(r).resnet_widths for r in range(2)] == [(8, 16), (12, 24)]
    with pytest.raises(ValueError, match="unknown variant 'tiny'"):
        lc.load(FASHION_MNIST + ":tiny")


def test_a_trainer_config_is_not_a_loop_config():
    with pytest.raises(ValueError, match="returns a dict, not a LoopConfig"):
        lc.load("ns_train/configs/fashion_mnist.py")
    with pytest.raises(ValueError, match="get_config\\(\\) of .* takes no variant"):
        lc.load("ns_train/configs/fashion_mnist.py:runlocal")


def test_the_recorded_settings_name_each_value():
    recorded = _config().recorded()
    assert recorded["teacher.steps"] == 20
    assert recorded["students[1].resnet_widths"] == (6, 12)
    assert recorded["labeling.min_confidence"] == 0.3
    assert recorded["ablations"] == ("full",)


@pytest.mark.parametrize("changes, message", [
    ({"students": ({"resnet_widths": (2, 8)},)},
     r"students\[0\] is smaller than the teacher \(resnet_widths \[2, 8\] < \[4, 8\]\)"),
    ({"students": ({"resnet_widths": (8, 16)}, {"resnet_widths": (8, 12)})},
     r"students\[1\] is smaller than students\[0\] \(resnet_widths"),
    ({"students": ({"resnet_widths": (4, 8, 16)},)}, r"\(3 stages, not 2\)"),
    ({"students": ({"resnet_blocks": 1},)}, r"\(resnet_blocks 1 < 2\)"),
    ({"students": ({"resnet_blocks": 0},)}, "resnet_widths and resnet_blocks must be positive"),
    ({"rounds": 3}, r"rounds must be in \[1, 2\]: the config has students for 2 rounds"),
    ({"rounds": 0}, r"rounds must be in \[1, 2\]"),
    ({"ablations": ("full", "more_noise")}, r"\(unknown \['more_noise'\]\)"),
    ({"ablations": ()}, "ablations must name each of"),
    ({"rounds": 2, "ablations": ("hard",)}, "rounds > 1 needs the 'full' student"),
    ({"seed": -3}, "seed must be >= 0, got -3"),
    ({"teacher": {"num_classes": 3, "stepz": 5}}, "teacher: unknown option 'stepz'; did you "
                                                  "mean 'steps'?"),
    ({"teacher": {"workdir": "x"}}, "teacher: workdir may not be set here"),
    ({"students": ({"num_classes": 4},)}, r"students\[0\]: num_classes may not be set here"),
    ({"students": ({"unlabeled_ratio": -2},)}, "unlabeled_ratio must be > 0, got -2"),
    ({"teacher": {"randaugment_magnitude": 99}}, r"randaugment_magnitude must be in \[0, 30\]"),
])
def test_impossible_settings_are_refused_when_the_config_is_made(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)


def test_labeling_k_may_be_zero_not_negative():
    assert lc.LabelingConfig(images_per_class=0).images_per_class == 0
    with pytest.raises(ValueError, match="images_per_class must be >= 0"):
        lc.LabelingConfig(images_per_class=-1)


def test_overriding_a_field_is_checked_too():
    with pytest.raises(ValueError, match="rounds must be in"):
        dataclasses.replace(_config(), rounds=5)
