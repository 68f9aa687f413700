"""Fashion-MNIST (28x28 grayscale, 10 classes) on a 2-core CPU: a small ResNet, minutes per run.

    python -m ns_train.train --config=ns_train/configs/fashion_mnist.py \
        --labeled=... --eval=... --workdir=...

Paper settings scaled to a small model: unlabeled ratio 1 ("1 for small models"), RandAugment
with 2 ops, stochastic depth 0.8 at the last block, dropout 0.2, label smoothing 0.1.
"""


def get_config() -> dict:
    return {
        "num_classes": 10,
        "class_names": "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,"
                       "Ankle boot",
        "image_size": (28, 28),
        "channels": 1,
        "model": "small_resnet",
        "resnet_widths": (32, 64, 128),
        "resnet_blocks": 2,
        "batch_size": 128,
        "unlabeled_ratio": 1.0,
        "epochs": 30,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-5,
        "schedule": "cosine",
        "randaugment_ops": 2,
        "randaugment_magnitude": 10,
        "stochastic_depth": 0.8,
        "ema_decay": 0.999,
        "normalization": "tft",
    }
