"""A few hundred labeled images (about 30 to 100 per class): a small ResNet trained for enough
steps to learn from them, with the paper's noise kept strong because the data is small.

    python -m ns_train.train --config=ns_train/configs/small_data.py \
        --num_classes=5 --class_names=daisy,dandelion,rose,sunflower,tulip \
        --image_size 64 64 --channels=3 --labeled=... --eval=... --workdir=...

The dataset's facts (`num_classes`, `class_names`, `image_size`, `channels`) come from flags;
`beam_jobs.reshard --label_folders` prints them for a folder of class sub-folders. Steps come
from epochs: the Fashion-MNIST config's 30 epochs of 128 images are 118 steps on 500 images, too
few to learn anything; here one epoch of 300 images is about 9 steps of 32, and 200 epochs about
1,900 steps (a few minutes at 28x28 on 2 cores). A student trained from this config on labeled +
pseudo-labeled data takes its epochs over the longer, pseudo-labeled stream, so give it
`--steps` (e.g. 1.5x the teacher's) rather than 200 epochs of a large unlabeled set.
"""


def get_config() -> dict:
    return {
        "model": "small_resnet",
        "resnet_widths": (16, 32, 64),
        "resnet_blocks": 1,
        "batch_size": 32,
        "unlabeled_ratio": 1.0,
        "epochs": 200,
        "optimizer": "sgd",
        "learning_rate": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "randaugment_ops": 2,
        "randaugment_magnitude": 10,
        "stochastic_depth": 0.8,
        "dropout": 0.3,
        "ema_decay": 0.99,
        "normalization": "tft",
    }
