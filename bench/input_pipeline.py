"""Is the trainer's input pipeline the bottleneck? Input batches/s vs training steps/s, same run.

    python -m bench.input_pipeline [--labeled=ns_data/sample/labeled.tfrecord] [--steps 30]
        [--config=ns_train/configs/fashion_mnist.py] [any ns_train.train flag]

Builds the student-mode input (labeled + "unlabeled" batches, both decoded and RandAugmented in
tf.data) and the training step of `ns_train.train` from the same config, then times (1) pulling
batches from the pipeline alone and (2) full training steps, which include pulling the batches.
The printed ratio input/train above 1 means the model, not the input, sets the pace; the
pipeline runs in parallel with the step, so anything well above 1 hides it completely.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

from ns_train import train
from ns_train.config import parse_args


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="Batches / steps timed.")
    args, rest = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        defaults = ["--config=ns_train/configs/fashion_mnist.py",
                    "--labeled=ns_data/sample/labeled.tfrecord",
                    "--unlabeled=ns_data/sample/labeled.tfrecord", "--normalization=none",
                    f"--workdir={workdir}", "--log_every=1000000"]
        config = parse_args(defaults + rest)
        batches = iter(train.training_dataset(config))
        next(batches)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
        input_rate = args.steps / (time.perf_counter() - start)

        trainer = train.Trainer(config, 10 * args.steps + 2, 1.0, None)
        iterator = iter(trainer.strategy.experimental_distribute_dataset(
            train.training_dataset(config)))
        trainer.run_steps(iterator, 2)  # trace and warm up
        float(trainer.optimizer.iterations.numpy())
        start = time.perf_counter()
        trainer.run_steps(iterator, args.steps)
        float(trainer.optimizer.iterations.numpy())
        train_rate = args.steps / (time.perf_counter() - start)
    images = config.batch_size + config.unlabeled_batch_size
    print(f"{'model':<14}{'batch':>7}{'input batches/s':>17}{'train steps/s':>15}"
          f"{'input/train':>13}")
    print(f"{config.model:<14}{images:>7}{input_rate:>17.2f}{train_rate:>15.2f}"
          f"{input_rate / train_rate:>13.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
