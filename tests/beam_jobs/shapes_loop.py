"""A loop config for tests/beam_jobs/fake_shapes.py's three classes of 12x12 RGB shapes: two
rounds whose students grow (4/8, then 6/12 filters), trained a few steps each; seconds, not a
measurement. `:hard` adds the hard-label and unbalanced ablations."""
from ns_train.loop_config import LabelingConfig, LoopConfig


def get_config(arg=None):
    teacher = {"num_classes": 3, "class_names": "red square,green cross,blue bar",
               "image_size": (12, 12), "channels": 3, "model": "small_resnet",
               "resnet_widths": (4, 8), "resnet_blocks": 1, "batch_size": 16, "steps": 60,
               "randaugment_ops": 1, "randaugment_magnitude": 5, "ema_decay": 0.0,
               "normalization": "none", "shuffle_buffer": 100}
    students = ({"resnet_widths": (4, 8), "steps": 60}, {"resnet_widths": (6, 12), "steps": 60})
    return LoopConfig(teacher=teacher, students=students, rounds=2, name="shapes",
                      labeling=LabelingConfig(min_confidence=0.35, num_shards=2, batch_size=32),
                      ablations=("full", "hard", "no_balance") if arg == "hard" else ("full",))
