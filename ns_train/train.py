"""Train a Noisy Student teacher or student and export it for `beam_jobs.label_and_balance`.

    # teacher: labeled data only
    python -m ns_train.train --config=ns_train/configs/fashion_mnist.py \
        --labeled='data/labeled-*.tfrecord' --eval='data/test-*.tfrecord' --workdir=out/teacher
    # student: labeled + the pseudo-labeled shards of label_and_balance
    python -m ns_train.train --config=ns_train/configs/fashion_mnist.py \
        --labeled='data/labeled-*.tfrecord' --unlabeled='out/pl/pseudo_labels-*.tfrecord' \
        --eval='data/test-*.tfrecord' --workdir=out/student

Each step draws a labeled batch and an unlabeled batch `unlabeled_ratio` times larger, applies
RandAugment to both (the input noise), runs the model with dropout and stochastic depth (the
model noise) and minimises cross-entropy over the concatenation: labeled rows with label
smoothing against their class, unlabeled rows against the teacher's hard or soft target, so each
part is weighted by its batch size. An exponential moving average of the weights is evaluated and
exported. Rerunning with the same --workdir resumes from the latest checkpoint. The run's length,
schedule and optimiser come from `ns_train.optim`, the export from `ns_train.export`.

Before the first step every input file is read once and every labeled and eval record is run
through the trainer's parser (`ns_train.checks`): a record training could not use stops the run
there, named by flag, file and record; a damaged file costs only the records from its damage on.
Pseudo-label shards that are exactly a finished run's are counted from its stats.json, unread.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import sys
import time
from typing import Any

from ns_data import completion, startup
from ns_data.lazy import keras, tf
from ns_train import checks, data
from ns_train.augment import RandAugmentConfig, augment_batch
from ns_train.config import TrainConfig, configure_logging, parse_args

# `optim`, `preprocess`, `export`, `models` and `efficientnet` define Keras and TensorFlow
# classes, so importing them imports TensorFlow: they are imported where used, and `--help`
# answers without TensorFlow (tests/test_help.py).

logger = logging.getLogger("ns_train")

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
_MAY_CHANGE_ON_RESUME = {"workdir", "eval", "log_every", "eval_every", "checkpoint_every",
                         "keep_checkpoints", "export_dir", "tpu", "class_names", "shuffle_buffer",
                         "allow_incomplete", "transform_from"}
# Rows in which the un-normalised sums of a metric accumulate between log lines.
_METRICS = ("loss", "labeled_loss", "labeled_correct", "labeled_count", "unlabeled_loss",
            "unlabeled_agree", "unlabeled_count")


def make_strategy(tpu: str = "") -> tf.distribute.Strategy:
    """TPUStrategy for `tpu`, else MirroredStrategy over the GPUs, else the default strategy."""
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="" if tpu == "local" else tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(config: TrainConfig) -> keras.Model:
    """The configured architecture, taking preprocessed float images, returning logits."""
    from ns_train.efficientnet import efficientnet  # noqa: PLC0415 - imports TF (top of file)
    from ns_train.models import small_resnet  # noqa: PLC0415

    dropout = None if config.dropout < 0 else config.dropout
    if config.model == "small_resnet":
        return small_resnet(config.image, config.num_classes, widths=config.resnet_widths,
                            blocks_per_stage=config.resnet_blocks,
                            dropout=0.2 if dropout is None else dropout,
                            final_survival=config.stochastic_depth)
    return efficientnet(config.model, config.image, config.num_classes, dropout=dropout,
                        final_survival=config.stochastic_depth)


def per_example_losses(logits: tf.Tensor, labeled_targets: tf.Tensor,
                       unlabeled_targets: tf.Tensor | None,
                       label_smoothing: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Cross-entropy of each row of `logits` = [labeled rows; unlabeled rows].

    Labeled rows are smoothed towards uniform; unlabeled rows use the pseudo-label targets as
    they are (hard one-hot, or the teacher's soft distribution). The training loss sums both
    and divides by the labeled batch size, weighting each part by its batch size.
    """
    n_l = tf.shape(labeled_targets)[0]
    labeled = keras.losses.categorical_crossentropy(
        labeled_targets, logits[:n_l], from_logits=True, label_smoothing=label_smoothing)
    if unlabeled_targets is None:
        return labeled, tf.zeros([0], logits.dtype)
    unlabeled = keras.losses.categorical_crossentropy(unlabeled_targets, logits[n_l:],
                                                      from_logits=True)
    return labeled, unlabeled


def _noised(batches: tf.data.Dataset, config: TrainConfig, seed: int, start: int):
    """RandAugment on every training batch; the seed of batch i is (seed, start + i)."""
    if config.randaugment_ops == 0:
        return batches
    augment = RandAugmentConfig(config.randaugment_ops, config.randaugment_magnitude)
    indexed = tf.data.Dataset.zip((batches, tf.data.Dataset.counter(start)))
    return indexed.map(
        lambda batch, i: (augment_batch(batch[0], augment, tf.stack([tf.cast(seed, tf.int64), i])),
                          batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def training_dataset(config: TrainConfig, start_step: int = 0,
                     inputs: checks.Inputs | None = None) -> tf.data.Dataset:
    """Batches of (labeled, unlabeled) pairs; unlabeled is None in teacher mode.

    With `inputs`, reads only their readable records; without, every matching file to its end.
    A resumed run reseeds with the step it starts from, so it does not replay the first batches.
    """
    seed = config.seed + start_step
    labeled = data.InputSpec(config.labeled, config.image, config.num_classes, config.batch_size,
                             training=True, seed=seed, shuffle_buffer=config.shuffle_buffer,
                             files=inputs.labeled.files if inputs else ())
    streams = [_noised(data.dataset(labeled), config, seed, start_step)]
    if config.student:
        unlabeled = data.InputSpec(config.unlabeled, config.image, config.num_classes,
                                   config.unlabeled_batch_size, training=True, seed=seed + 1,
                                   shuffle_buffer=config.shuffle_buffer,
                                   target_temperature=config.target_temperature,
                                   files=inputs.unlabeled.files if inputs else ())
        streams.append(_noised(data.dataset(unlabeled), config, seed + 1, start_step))
    return tf.data.Dataset.zip(tuple(streams))


def eval_dataset(config: TrainConfig, inputs: checks.Inputs | None = None) -> tf.data.Dataset:
    """One ordered pass; the last batch is padded to full size with a zero mask (static shapes).

    With `inputs`, reads only their readable eval records; without, every file to its end.
    """
    spec = data.InputSpec(config.eval, config.image, config.num_classes, config.batch_size,
                          training=False, files=inputs.eval.files if inputs else ())
    size = config.batch_size

    def pad(images, targets):
        n = tf.shape(images)[0]
        images = tf.pad(images, [[0, size - n], [0, 0], [0, 0], [0, 0]])
        targets = tf.pad(targets, [[0, size - n], [0, 0]])
        images = tf.ensure_shape(images, (size, *config.image.shape))
        return images, targets, tf.sequence_mask(n, size, dtype=tf.float32)

    return data.dataset(spec).map(pad)


class _Sums:
    """Per-replica metric sums, summed across replicas when read (ON_READ / SUM variables)."""

    def __init__(self, names: tuple[str, ...]):
        self.vars = {name: tf.Variable(0.0, trainable=False, name=name,
                                       synchronization=tf.VariableSynchronization.ON_READ,
                                       aggregation=tf.VariableAggregation.SUM)
                     for name in names}

    def add(self, **values: tf.Tensor) -> None:
        for name, value in values.items():
            self.vars[name].assign_add(tf.cast(value, tf.float32))

    def read_and_reset(self) -> dict[str, float]:
        values = {name: float(v.numpy()) for name, v in self.vars.items()}
        for v in self.vars.values():
            v.assign(0.0)
        return values


class Trainer:
    """Model, EMA copy, optimizer and checkpoints for one workdir, under one strategy."""

    def __init__(self, config: TrainConfig, total: int, epoch_steps: float,
                 transform_dir: str | None, strategy: tf.distribute.Strategy | None = None):
        from ns_train import optim, preprocess  # noqa: PLC0415 - import TF (top of file)

        self.config = config
        self.total = total
        self.strategy = strategy or make_strategy(config.tpu)
        keras.utils.set_random_seed(config.seed)
        self.schedule = optim.make_schedule(config, total, epoch_steps)
        with self.strategy.scope():
            self.preprocessor = preprocess.Preprocessor(transform_dir)
            self.model = build_model(config)
            self.ema_model = build_model(config) if config.ema_decay else self.model
            self.ema_model.set_weights(self.model.get_weights())
            self.optimizer = optim.make_optimizer(config, self.schedule)
            self.optimizer.build(self.model.trainable_variables)
            self.train_sums = _Sums(_METRICS)
            self.eval_sums = _Sums(("loss", "correct", "count"))
        self.checkpoint = tf.train.Checkpoint(model=self.model, ema=self.ema_model,
                                              optimizer=self.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, posixpath.join(config.workdir, "checkpoints"),
            max_to_keep=config.keep_checkpoints)
        self._train_loop = tf.function(self._train_loop_fn)
        self._eval_step = tf.function(self._eval_step_fn)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def restore(self) -> int:
        """Restores the latest checkpoint of the workdir, if any; returns the step reached."""
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            logger.info("Resumed from %s at step %d", self.manager.latest_checkpoint, self.step)
        return self.step

    def save(self) -> str:
        return self.manager.save(checkpoint_number=self.step)

    def _replica_step(self, batches):
        config = self.config
        (x_l, y_l), unlabeled = batches[0], batches[1:]
        y_u = unlabeled[0][1] if unlabeled else None
        n_l = tf.shape(x_l)[0]
        images = tf.concat([x_l] + [u[0] for u in unlabeled], axis=0)
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(self.preprocessor(images), training=True), tf.float32)
            labeled_loss, unlabeled_loss = per_example_losses(logits, y_l, y_u,
                                                              config.label_smoothing)
            loss_sum = tf.reduce_sum(labeled_loss) + tf.reduce_sum(unlabeled_loss)
            # mean_l + ratio * mean_u, as the paper's code: each part weighted by its batch size,
            # and a student's gradient has the teacher's scale at the same learning rate.
            loss = loss_sum / config.batch_size
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        predicted = tf.argmax(logits, axis=-1)
        sums = {"loss": loss_sum, "labeled_loss": tf.reduce_sum(labeled_loss),
                "labeled_correct": tf.reduce_sum(tf.cast(
                    predicted[:n_l] == tf.argmax(y_l, axis=-1), tf.float32)),
                "labeled_count": n_l}
        if unlabeled:
            sums.update(unlabeled_loss=tf.reduce_sum(unlabeled_loss),
                        unlabeled_agree=tf.reduce_sum(tf.cast(
                            predicted[n_l:] == tf.argmax(y_u, axis=-1), tf.float32)),
                        unlabeled_count=tf.shape(y_u)[0])
        self.train_sums.add(**sums)

    def _update_ema(self):
        if self.ema_model is self.model:
            return
        step = tf.cast(self.optimizer.iterations, tf.float32)
        # Early on the average would be dominated by the random init; ramp the decay up.
        decay = tf.minimum(self.config.ema_decay, (1.0 + step) / (10.0 + step))
        # Weights and BatchNorm statistics are averaged alike (as the paper's code does), so the
        # exported statistics belong to the averaged weights; RNG states are not averaged.
        for ema, var in zip(self.ema_model.variables, self.model.variables):
            if keras.backend.is_float_dtype(var.dtype):
                ema.assign(decay * ema + (1.0 - decay) * var)

    def _train_loop_fn(self, iterator, steps):
        for _ in tf.range(steps):
            self.strategy.run(self._replica_step, args=(next(iterator),))
            self._update_ema()

    def _eval_replica(self, images, targets, mask):
        logits = tf.cast(self.ema_model(self.preprocessor(images), training=False), tf.float32)
        loss = keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
        correct = tf.cast(tf.argmax(logits, -1) == tf.argmax(targets, -1), tf.float32)
        self.eval_sums.add(loss=tf.reduce_sum(loss * mask), correct=tf.reduce_sum(correct * mask),
                           count=tf.reduce_sum(mask))

    def _eval_step_fn(self, batch):
        self.strategy.run(self._eval_replica, args=batch)

    def run_steps(self, iterator, steps: int) -> None:
        """`steps` training steps on batches from a distributed-dataset iterator, one call."""
        self._train_loop(iterator, tf.constant(steps))

    def train(self, batches: tf.data.Dataset, on_log=None, on_eval=None) -> dict[str, float]:
        """Trains from the current step to `self.total`; returns the last logged metrics."""
        config = self.config
        iterator = iter(self.strategy.experimental_distribute_dataset(batches))
        last: dict[str, float] = {}
        started, start_step = time.monotonic(), self.step
        while self.step < self.total:
            boundaries = [self.total]
            for every in (config.log_every, config.checkpoint_every, config.eval_every):
                if every:
                    boundaries.append((self.step // every + 1) * every)
            self.run_steps(iterator, min(boundaries) - self.step)
            step = self.step
            if step % config.log_every == 0 or step == self.total:
                rate = (step - start_step) / max(time.monotonic() - started, 1e-9)
                last = self._log(step, rate)
                if on_log:
                    on_log(step, last)
            if step % config.checkpoint_every == 0 and step < self.total:
                self.save()
            if (config.eval_every and step % config.eval_every == 0 and step < self.total
                    and on_eval):
                on_eval(step)
        self.save()
        return last

    def _log(self, step: int, rate: float) -> dict[str, float]:
        sums = self.train_sums.read_and_reset()
        n_l, n_u = sums["labeled_count"], sums["unlabeled_count"]
        metrics = {"loss": sums["loss"] / max(1.0, n_l + n_u),
                   "labeled_loss": sums["labeled_loss"] / max(1.0, n_l),
                   "labeled_top1": sums["labeled_correct"] / max(1.0, n_l),
                   "learning_rate": float(self.schedule(step)), "steps_per_second": rate}
        if n_u:
            metrics["unlabeled_loss"] = sums["unlabeled_loss"] / n_u
            metrics["unlabeled_agreement"] = sums["unlabeled_agree"] / n_u
        eta = (self.total - step) / rate if rate > 0 else 0.0
        logger.info("step %d/%d  loss %.4f  labeled loss %.4f  top-1 %.3f%s  lr %.5f  "
                    "%.2f steps/s  ETA %s", step, self.total, metrics["loss"],
                    metrics["labeled_loss"], metrics["labeled_top1"],
                    f"  unlabeled loss {metrics['unlabeled_loss']:.4f} agreement "
                    f"{metrics['unlabeled_agreement']:.3f}" if n_u else "",
                    metrics["learning_rate"], rate, _duration(eta))
        return metrics

    def evaluate(self, batches: tf.data.Dataset) -> dict[str, float]:
        """Top-1 and cross-entropy of the EMA model over one pass of `batches`."""
        self.eval_sums.read_and_reset()
        for batch in self.strategy.experimental_distribute_dataset(batches):
            self._eval_step(batch)
        sums = self.eval_sums.read_and_reset()
        count = max(1.0, sums["count"])
        return {"top1": sums["correct"] / count, "loss": sums["loss"] / count,
                "count": int(sums["count"])}


def _scalar(name: str, value: float) -> None:
    """A TensorBoard scalar, written without the tensorboard package (TF no longer ships it)."""
    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
    tf.summary.write(name, tf.constant(value, tf.float32), metadata=metadata)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def refuse_changed_settings(path: str, current: dict[str, Any], may_change: set[str],
                            workdir: str) -> bool:
    """Compares a run's settings with the record at `path` (JSON) before resuming it.

    Returns:
      Whether the record exists (False: a new run, nothing to compare).

    Raises:
      ValueError: listing each setting outside `may_change` that differs from the record.
    """
    if not tf.io.gfile.exists(path):
        return False
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)
    current = json.loads(json.dumps(current))
    changed = {name: (saved.get(name), value) for name, value in current.items()
               if name not in may_change and saved.get(name) != value}
    if changed:
        diff = ", ".join(f"{name}: {old!r} -> {new!r}" for name, (old, new) in changed.items())
        raise ValueError(f"{workdir} holds a run with other settings ({diff}); rerun with its "
                         f"settings to resume it, or use a new --workdir")
    return True


def check_workdir_config(config: TrainConfig) -> None:
    """Records the config in a new workdir; in an existing one, refuses a different training.

    Resuming is for finishing the same run; a checkpoint continued under other data, model or
    optimisation settings would be neither run. Operational flags (logging, checkpoint and eval
    cadence, eval data, export path, TPU address) may change.

    Raises:
      ValueError: listing each setting that differs from the workdir's config.json.
    """
    path = posixpath.join(config.workdir, CONFIG_FILE)
    current = dataclasses.asdict(config)
    if not refuse_changed_settings(path, current, _MAY_CHANGE_ON_RESUME, config.workdir):
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(current, f, indent=2)


def _finished_result(config: TrainConfig) -> dict[str, Any] | None:
    """The workdir's result.json if it holds this run finished, evaluated on the same data and
    exported where this config exports; None when anything is left to do."""
    path = posixpath.join(config.workdir, RESULT_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        result = json.load(f)
    export_dir = config.export_dir or posixpath.join(config.workdir, "export")
    done = (result["step"] == result["total_steps"] and result.get("eval_pattern") == config.eval
            and result["export_dir"] == export_dir
            and tf.io.gfile.exists(posixpath.join(export_dir, "saved_model.pb")))
    return result if done else None


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
    """Runs (or resumes) training in `config.workdir`, evaluates, exports; returns the result.

    The result (also written to WORKDIR/result.json) holds the step reached, the last training
    metrics, the final evaluation, the export path, and the damaged input files (flag, path,
    records kept, byte offset and problem of each) whose unreadable rest was left out.

    Raises:
      ValueError: before any training step, when the workdir is a file, an input has no
        readable record or a labeled or eval record cannot be used (listed in
        WORKDIR/bad_records.txt).
    """
    from ns_train import optim, preprocess  # noqa: PLC0415 - import TF (top of file)
    from ns_train.export import export_model  # noqa: PLC0415

    if tf.io.gfile.exists(config.workdir) and not tf.io.gfile.isdir(config.workdir):
        raise ValueError(f"--workdir={config.workdir} is a file, not a directory")
    if config.student and not config.allow_incomplete:
        completion.require_complete_inputs(config.unlabeled, "--unlabeled",
                                           "--allow_incomplete")
    tf.io.gfile.makedirs(config.workdir)
    check_workdir_config(config)
    finished = _finished_result(config)
    if finished:
        logger.info("%s is trained (%d steps) and exported to %s; nothing to do", config.workdir,
                    finished["step"], finished["export_dir"])
        return finished
    if config.eval_every and not config.eval:
        logger.warning("--eval_every=%d does nothing without --eval", config.eval_every)
    if not config.student and (config.unlabeled_ratio != 1 or config.target_temperature != 1):
        logger.warning("--unlabeled_ratio and --target_temperature do nothing without "
                       "--unlabeled (teacher mode)")
    # Every input file is read and every labeled and eval record checked before the first step.
    inputs = checks.scan_inputs(config)
    num_labeled = inputs.labeled.count
    num_unlabeled = inputs.unlabeled.count if inputs.unlabeled else 0
    transform_dir = None
    if config.normalization == "tft":
        transform_dir = config.transform_dir
        if config.transform_from:
            preprocess.check_reusable(transform_dir, inputs.labeled.files, config.image)
        elif not preprocess.has_analysis(transform_dir):
            preprocess.analyze_labeled(inputs.labeled.files, config.image, config.num_classes,
                                       transform_dir)
    epoch_steps = optim.steps_per_epoch(config, num_labeled, num_unlabeled)
    total = optim.total_steps(config, epoch_steps)
    logger.info("%s mode: %d labeled%s images, %d steps of %d labeled%s",
                "Student" if config.student else "Teacher", num_labeled,
                f" + {num_unlabeled} pseudo-labeled" if config.student else "", total,
                config.batch_size,
                f" + {config.unlabeled_batch_size} pseudo-labeled" if config.student else "")

    trainer = Trainer(config, total, epoch_steps, transform_dir, strategy)
    start = trainer.restore()
    writer = tf.summary.create_file_writer(posixpath.join(config.workdir, "tensorboard"))

    def on_log(step, metrics):
        with writer.as_default(step=step):
            for name, value in metrics.items():
                _scalar(f"train/{name}", value)

    def on_eval(step):
        result = trainer.evaluate(eval_dataset(config, inputs))
        logger.info("eval at step %d: top-1 %.4f  loss %.4f  (%d images, EMA weights)",
                    step, result["top1"], result["loss"], result["count"])
        with writer.as_default(step=step):
            _scalar("eval/top1", result["top1"])
            _scalar("eval/loss", result["loss"])
        return result

    train_metrics = {}
    if start < total:
        train_metrics = trainer.train(training_dataset(config, start, inputs), on_log,
                                      on_eval if config.eval else None)
    evaluation = on_eval(trainer.step) if config.eval else None
    export_dir = config.export_dir or posixpath.join(config.workdir, "export")
    export_model(trainer.ema_model, trainer.preprocessor, config, export_dir, trainer.step,
                 evaluation["top1"] if evaluation else None)
    writer.flush()
    result = {"step": trainer.step, "resumed_from": start, "total_steps": total,
              "num_labeled": num_labeled, "num_unlabeled": num_unlabeled,
              "train": train_metrics, "eval": evaluation, "eval_pattern": config.eval,
              "export_dir": export_dir,
              "damaged_files": [dataclasses.asdict(d) for d in inputs.damaged]}
    with tf.io.gfile.GFile(posixpath.join(config.workdir, RESULT_FILE), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure_logging()
    try:
        result = train(config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    evaluation = result["eval"]
    print(f"Trained to step {result['step']}"
          + (f"; eval top-1 {evaluation['top1']:.4f} on {evaluation['count']} images"
             if evaluation else "")
          + f"; exported to {result['export_dir']}")
    return 0


if __name__ == "__main__":
    startup.quiet_startup()
    sys.exit(main())
