"""ImageNet-scale Noisy Student student (paper, Section 3): EfficientNet, RMSProp, 350 epochs.

    python -m ns_train.train --config=ns_train/configs/imagenet_efficientnet.py \
        --model=efficientnet-b7 --image_size 600 600 --tpu=local \
        --labeled='gs://.../train-*' --unlabeled='gs://.../pseudo_labels-*' \
        --eval='gs://.../validation-*' --workdir=gs://.../student

The paper's student trains on 2048 labeled images per step with an unlabeled batch 3x larger
(for large models), learning rate 0.128 decaying by 0.97 every 2.4 epochs, after a 5-epoch
warmup here (625 steps per epoch for 1.28M labeled images).
"""


def get_config() -> dict:
    return {
        "num_classes": 1000,
        "image_size": (224, 224),
        "channels": 3,
        "model": "efficientnet-b0",
        "batch_size": 2048,
        "unlabeled_ratio": 3.0,
        "epochs": 350,
        "optimizer": "rmsprop",
        "learning_rate": 0.128,
        "momentum": 0.9,
        "weight_decay": 1e-5,
        "schedule": "exponential",
        "decay_rate": 0.97,
        "decay_epochs": 2.4,
        "warmup_steps": 5 * 625,
        "randaugment_ops": 2,
        "randaugment_magnitude": 27,
        "stochastic_depth": 0.8,
        "ema_decay": 0.9999,
        "label_smoothing": 0.1,
        "normalization": "tft",
        "log_every": 100,
        "eval_every": 5000,
        "checkpoint_every": 1000,
        "shuffle_buffer": 50_000,
    }
