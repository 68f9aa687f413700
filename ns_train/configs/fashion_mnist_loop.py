"""Noisy Student on Fashion-MNIST with `beam_jobs.iterate` (the README's table), about an hour on
2 cores; `:runlocal` is the same loop on 1,000 images in a few minutes, a smoke test.

    python -m beam_jobs.iterate --config=ns_train/configs/fashion_mnist_loop.py \
        --workdir=out/replicate
    python -m beam_jobs.iterate --config=ns_train/configs/fashion_mnist_loop.py:runlocal \
        --workdir=out/quick

Without --labeled/--unlabeled/--eval the loop prepares the splits (`prepare_fashion_mnist`):
5,000 labeled images, a 5,000-image holdout for choices, 50,000 unlabeled, the 10,000 test
images. The models are the trainer's Fashion-MNIST config (`fashion_mnist.py`) made small enough
for the hour: a 16/32/64 ResNet teacher trained 1,500 steps, and students that grow each round
(24/48/96, then 32/64/128, 2,400 steps), as the paper's do. With an equal-size student
(16/32/64, 3,000 steps) round 0 gained +0.84 holdout / +0.64 test points.

`:few_labels` is the paper's same-size setting on 1,000 labeled images (54,000 unlabeled): the
round-0 student is the teacher's model, steps and noise, so the teacher is its baseline.
"""
import os

from ns_train.config import load_config_file
from ns_train.loop_config import FashionMNISTSplits, LoopConfig


def get_config(arg: str | None = None) -> LoopConfig:
    trainer = load_config_file(os.path.join(os.path.dirname(__file__), "fashion_mnist.py"))
    teacher = {**trainer, "resnet_widths": (16, 32, 64), "resnet_blocks": 1, "steps": 1500,
               "dropout": 0.2, "ema_decay": 0.99}
    students = ({"resnet_widths": (24, 48, 96), "steps": 2400},
                {"resnet_widths": (32, 64, 128), "steps": 2400})
    splits = FashionMNISTSplits(num_labeled=5000, num_holdout=5000)
    if arg == "runlocal":
        # On 1,000 test images one point is 10 images; at 150 steps the teacher was too unsure
        # to label 4 classes at 0.3.
        teacher.update(resnet_widths=(8, 16), steps=400, batch_size=32)
        students = ({"resnet_widths": (8, 16), "steps": 400},
                    {"resnet_widths": (12, 24), "steps": 400})
        splits = FashionMNISTSplits(num_labeled=200, num_holdout=100, limit=1000)
    elif arg == "few_labels":
        # The paper's same-size setting on 1,000 labels: round 0's student is the teacher's
        # model, steps and noise, so the teacher is also its baseline; round 1 grows.
        students = ({}, {"resnet_widths": (24, 48, 96)})
        splits = FashionMNISTSplits(num_labeled=1000, num_holdout=5000)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of fashion_mnist_loop.py; the variants "
                         "are 'runlocal' and 'few_labels'")
    return LoopConfig(teacher=teacher, students=students, name="Fashion-MNIST",
                      fashion_mnist=splits)
