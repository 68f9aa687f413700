"""Pseudo-label a corpus of unlabeled images with a teacher and balance it per class.

    python -m beam_jobs.label_and_balance --input='data/unlabeled-*.tfrecord' \\
        --teacher=models/teacher --output_dir=out/round1 [Beam options]

ReadImages → TeacherInference → WritePredictions → BalancePerClass → WriteLabeledShards, as in
Noisy Student (Xie et al., 2020): keep each class's K most confident images above a confidence
threshold, duplicate images of classes with fewer than K. The teacher pass writes what it said
about every image to a Parquet predictions table (`--predictions_dir`, default
OUTPUT_DIR/predictions) without the images; selection reads only that table; the writing pass
reads each input file again beside its table file and writes `pseudo_labels-*.tfrecord` shards,
`dead_letters-*.tfrecord` (records that failed, with the reason) and `stats.json`. Image bytes
cross one shuffle, the one that spreads records over shards. `beam_jobs.rebalance` re-selects
from the table with other settings without running the teacher. Runs on DirectRunner by
default; pass `--runner=DataflowRunner` and the usual Google Cloud options to run at scale.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import posixpath
import sys
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, TestOptions)
from apache_beam.runners.runner import PipelineResult

from beam_jobs import cli
from beam_jobs.cli import (BalanceOptions, BalanceSettings, InputOptions, balance_config,
                           check_input, check_output_dir, check_table_dir, configure_logging,
                           input_columns, pipeline_options, print_summary)
from ns_data import (completion, devices, formats, predictions, schema, startup,
                     teacher_flags)
from ns_data.images import DECODERS, DEFAULT_DECODER, DEFAULT_MAX_PIXELS, make_decoder
from ns_data.inference import TeacherInference
from ns_data.lazy import tf
from ns_data.pipeline import check_table_serves, select_and_write
from ns_data.progress import Progress
from ns_data.read import DEFAULT_READ_BATCH, ReadImages, check_input_pattern, encoded_images
from ns_data.teacher import (TeacherModelHandler, TeacherSpec, output_error, sample_problem)
from ns_data.teacher_flags import teacher_runtime, teacher_spec

# Runners (lower case, without "runner") whose workers are this machine's processes.
LOCAL_RUNNERS = ("direct", "switchingdirect", "bundlebaseddirect", "prism")
# Image files per predictions table file with --input_format=images.
IMAGES_PER_TABLE_FILE = 4096
# Batches decoded ahead of the teacher (--decode_ahead), the teacher on a thread of its own:
# 0.83x (Pillow) and 0.93x (tf) the wall of --decode_ahead=0 on this CPU-only job (BENCHMARKS.md,
# session 7); on an accelerator the host's cores are idle while the teacher runs, so the
# overlap matters more.
DECODE_AHEAD = 2
# Teacher calls at once (--teacher_threads), with --decode_ahead > 0: on this 2-core CPU, two
# calls kept the cores busy where one left a third of a core idle in its serial parts, 3-6 s
# less wall on 200,000 images (BENCHMARKS.md, session 10).
TEACHER_THREADS = 2


class LabelAndBalanceOptions(InputOptions, PipelineOptions):
    """Flags of `beam_jobs.label_and_balance`, the input flags of `cli.InputOptions` included
    (Beam's own options are accepted too)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("decoding")
        g.add_argument("--max_image_pixels", type=cli.positive_int, default=DEFAULT_MAX_PIXELS,
                       help="Images whose header declares more pixels are dead letters, not "
                       "decoded (default: %(default)s).")
        g.add_argument("--decoder", choices=sorted(DECODERS), default=DEFAULT_DECODER,
                       help="How images are decoded and resized for the teacher: pillow = "
                       "Pillow/libjpeg with DCT scaling of large JPEGs (plain 8-bit PNGs with "
                       "OpenCV, same pixels), several times faster and within a few levels of "
                       "the trainer's pixels; tf = the trainer's "
                       "own TensorFlow ops, pixel for pixel (default: %(default)s).")
        g.add_argument("--decode_ahead", type=cli.non_negative_int, default=DECODE_AHEAD,
                       help="Batches decoded on a thread of their own while the teacher runs "
                       "on those before, on threads of its own (--teacher_threads), so reading, "
                       "decoding, inference and writing the predictions overlap instead of "
                       "taking turns; 0 does each batch's steps in turn on one thread "
                       "(default: %(default)s).")
        g = teacher_flags.add_teacher_args(parser)
        g.add_argument("--teacher_threads", type=cli.positive_int, default=TEACHER_THREADS,
                       help="Teacher batches run at once, each on a thread of its own (with "
                       "--decode_ahead > 0): on a CPU two keep the cores busy where one call "
                       "alone leaves some idle; on a GPU or TPU one call's host work (padding, "
                       "copies, softmax) overlaps the other's device time. Each adds a batch's "
                       "activations to the memory in use. Ignored with --decode_ahead=0 "
                       "(default: %(default)s).")
        g.add_argument("--large_model", action="store_true",
                       help="Load one model per worker machine, shared by its SDK processes "
                       "(default when the workers have an accelerator: --device=gpu|tpu or a "
                       "worker_accelerator service option; a TPU chip admits one process).")
        g.add_argument("--no_large_model", action="store_true",
                       help="Load one model per SDK process even on accelerator workers.")
        g.add_argument("--model_copies", type=cli.positive_int, default=None,
                       help="Exact number of model copies per worker machine (implies sharing).")
        g = teacher_flags.add_device_args(parser)
        g.add_argument("--skip_teacher_check", action="store_true",
                       help="Do not load the teacher at launch to check it on a blank image and "
                       "on the first 64 input images (refused: logits read from a softmax "
                       "teacher, one class for every image, near-uniform probabilities), nor "
                       "refuse teacher flags that contradict its ns_teacher.json.")
        g = parser.add_argument_group("predictions table")
        g.add_argument("--predictions_dir", "--scores_dir", dest="predictions_dir", default=None,
                       help="Where the Parquet predictions table goes: per image its id, input "
                       "file and record index, label, confidence and top classes, no image "
                       "bytes; beam_jobs.rebalance re-selects from it without the teacher "
                       "(default: OUTPUT_DIR/predictions).")
        g.add_argument("--predictions_topk", type=cli.positive_int, default=None,
                       help="Classes kept per image in the table (default: all classes with "
                       "--label_type=soft, else max(--topk, 10)).")


@dataclasses.dataclass(frozen=True)
class LabelAndBalanceConfig:
    """Every flag of the job as one frozen value, named and defaulted as the flags are (Beam's
    own options aside): `run_job` takes it, from the command line or from another job.

    A value its flag would refuse is refused here, with the flag's message.
    """

    input: str | None = None
    input_format: str = "tfrecord"
    image_column: str | None = None
    id_column: str | None = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    decoder: str = DEFAULT_DECODER
    decode_ahead: int = DECODE_AHEAD
    teacher_threads: int = TEACHER_THREADS
    teacher: str | None = None
    teacher_signature: str = "serving_default"
    teacher_outputs: str | None = None
    output_key: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    input_range: tuple[float, float] | None = None
    temperature: float = 1.0
    batch_size: int = 64
    large_model: bool = False
    no_large_model: bool = False
    model_copies: int | None = None
    device: str = "auto"
    jit_compile: bool = False
    precision: str = "float32"
    gpu_memory_limit_mb: int | None = None
    skip_teacher_check: bool = False
    predictions_dir: str | None = None
    predictions_topk: int | None = None
    balance: BalanceSettings = BalanceSettings()

    def __post_init__(self):
        cli.check_values(_help_parser(), {name: getattr(self, name) for name in _OWN_FLAGS})
        teacher_flags.check_temperature(self.temperature)
        check_sharing(self.large_model, self.no_large_model, self.model_copies)

    @classmethod
    def from_options(cls, options: PipelineOptions) -> LabelAndBalanceConfig:
        view = options.view_as(LabelAndBalanceOptions)
        return cls(**{name: getattr(view, name) for name in _OWN_FLAGS},
                   balance=BalanceSettings.from_options(options))

    def flag_values(self) -> dict[str, Any]:
        """Every flag's value by its name (the Beam options of the run)."""
        own = {name: getattr(self, name) for name in _OWN_FLAGS}
        return {**own, **dataclasses.asdict(self.balance)}


_OWN_FLAGS = tuple(f.name for f in dataclasses.fields(LabelAndBalanceConfig)
                   if f.name != "balance")


def check_sharing(large_model: bool, no_large_model: bool, model_copies: int | None) -> None:
    """Refuses --no_large_model with a flag that asks for sharing."""
    if no_large_model and (large_model or model_copies):
        raise ValueError("--no_large_model contradicts --large_model/--model_copies; pick one")


def shares_model(opts: LabelAndBalanceOptions) -> bool:
    """Whether workers load one model per machine (Beam's `large_model`) instead of per process.

    On by default when the workers have an accelerator: Dataflow starts one SDK process per
    vCPU, and one teacher per process would multiply its device memory by the vCPU count (and a
    TPU chip can be opened by one process only).
    """
    if opts.no_large_model:
        return False
    return bool(opts.large_model or opts.model_copies) or on_accelerator(opts)


def on_accelerator(opts: LabelAndBalanceOptions) -> bool:
    """Whether the teacher runs on a GPU or TPU: `--device=gpu|tpu`, or workers with a
    `worker_accelerator` service option (`--device=auto` then finds it)."""
    service_options = opts.view_as(GoogleCloudOptions).dataflow_service_options or []
    return opts.device in ("gpu", "tpu") or any(
        option.startswith("worker_accelerator") for option in service_options)


def check_teacher(spec: TeacherSpec,
                  runtime: devices.TeacherRuntime = devices.TeacherRuntime(),
                  sample: np.ndarray | None = None) -> None:
    """Loads the teacher and runs it on a blank image and on a `sample` of the input [n, H, W, C]
    (`launch_sample`), so a wrong model or set-up fails at launch, not after the whole corpus:
    see `teacher.sample_problem`.

    It runs on whatever device the launching machine has, with the workers' compile settings.
    """
    images = [np.zeros(spec.image.shape, np.uint8), *([] if sample is None else sample)]
    handler = TeacherModelHandler(dataclasses.replace(spec, batch_size=len(images)),
                                  runtime=dataclasses.replace(runtime, device="auto"))
    results = handler.run_inference(images, handler.load_model())
    error = output_error(*results[0].inference, spec.outputs)
    if error:
        raise ValueError(f"teacher {spec.path} fails its launch check on a blank image: {error}")
    if len(results) > 1:
        raw = np.stack([r.inference[0] for r in results[1:]])
        probabilities = np.stack([r.inference[1] for r in results[1:]])
        problem = sample_problem(raw, probabilities, spec)
        if problem:
            raise ValueError(f"teacher {spec.path} fails its launch check: {problem} "
                             "(--skip_teacher_check runs anyway)")


def launch_sample(opts: LabelAndBalanceOptions, spec: TeacherSpec, limit: int = 64) -> np.ndarray:
    """Up to `limit` decodable images from the start of the input, for the launch check."""
    decoder = make_decoder(opts.decoder, spec.image, opts.max_image_pixels)
    pixels = []
    for encoded in encoded_images(opts.input, opts.input_format, input_columns(opts)):
        try:
            pixels.append(decoder(encoded))
        except Exception:  # noqa: BLE001 - the job counts bad images; the check skips them
            continue
        if len(pixels) == limit:
            break
    return np.stack(pixels) if pixels else np.zeros((0, *spec.image.shape), np.uint8)


def predictions_dir(opts: LabelAndBalanceOptions) -> str:
    return opts.predictions_dir or posixpath.join(
        opts.view_as(BalanceOptions).output_dir, "predictions")


def table_metadata(opts: LabelAndBalanceOptions, spec: TeacherSpec) -> predictions.TableMetadata:
    """What the teacher pass records in every predictions table file."""
    balance = opts.view_as(BalanceOptions)
    topk = opts.predictions_topk
    if topk is None:
        topk = (spec.num_classes if balance.label_type == schema.LabelType.SOFT.value
                else max(balance.topk, 10))
    return predictions.TableMetadata(
        input=opts.input, input_format=opts.input_format, num_classes=spec.num_classes,
        topk=min(topk, spec.num_classes), teacher=opts.teacher, teacher_outputs=spec.outputs,
        temperature=spec.temperature, image_shape=tuple(spec.image.shape),
        class_names=spec.class_names,
        **({"image_column": input_columns(opts).image, "id_column": input_columns(opts).id}
           if opts.input_format == formats.PARQUET else {}))


def run_config(opts: LabelAndBalanceOptions, spec: TeacherSpec) -> dict[str, Any]:
    """The settings recorded in stats.json."""
    return {
        "input": opts.input,
        "input_format": opts.input_format,
        "decoder": opts.decoder,
        "teacher": opts.teacher,
        "teacher_outputs": spec.outputs,
        "image_shape": list(spec.image.shape),
        "input_range": list(spec.input_range),
        "temperature": spec.temperature,
        "predictions_dir": predictions_dir(opts),
        **balance_config(opts.view_as(BalanceOptions)).recorded(),
    }


def validate(opts: LabelAndBalanceOptions, check_output: bool = True) -> None:
    """Clear errors for missing or impossible flags and for an output that would clobber.

    Nothing is deleted here: `clear_outputs` does that once every setting has been checked.
    """
    balance = opts.view_as(BalanceOptions)
    cli.require_flags(input=opts.input, teacher=opts.teacher,
                      output_dir=balance.output_dir)
    teacher_flags.check_temperature(opts.temperature)  # before the teacher is even opened
    check_sharing(opts.large_model, opts.no_large_model, opts.model_copies)
    if opts.precision == "mixed" and opts.jit_compile and opts.device != "tpu":
        logging.warning("--precision=mixed does nothing with --jit_compile: XLA compiles the "
                        "teacher without TensorFlow's mixed precision rewrite (outputs measured "
                        "bit-identical to float32 on CPU); drop one of them")
    runner = opts.view_as(StandardOptions).runner or ""
    if runner.lower().removesuffix("runner") in LOCAL_RUNNERS:
        missing = devices.missing_device(opts.device)
        if missing:
            raise ValueError(f"{missing}; with --runner={runner} the teacher runs here")
    if opts.device == "tpu" and not shares_model(opts):
        logging.warning("--device=tpu with --no_large_model: only one process can open a TPU "
                        "chip; run one SDK process per worker or drop --no_large_model")
    # The table names input files by path: an absolute --input still resolves for a rebalance
    # run from another directory.
    check_input(opts)
    if check_output:
        for flag, directory in (("--output_dir", balance.output_dir),
                                ("--predictions_dir", predictions_dir(opts))):
            if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
                raise ValueError(f"{flag}={directory} is a file, not a directory")
        check_output_dir(balance.output_dir, balance.overwrite)
        check_table_dir(predictions_dir(opts), balance.overwrite)


def clear_outputs(opts: LabelAndBalanceOptions) -> None:
    """Deletes an earlier run's shards and table (validated: only with --overwrite) and makes
    the output directories, so one that cannot be written is refused here, not by a worker."""
    balance = opts.view_as(BalanceOptions)
    check_output_dir(balance.output_dir, balance.overwrite, delete=True)
    check_table_dir(predictions_dir(opts), balance.overwrite, delete=True)
    for flag, directory in (("--output_dir", balance.output_dir),
                            ("--predictions_dir", predictions_dir(opts))):
        try:
            tf.io.gfile.makedirs(directory)
        except (OSError, tf.errors.OpError) as e:
            raise ValueError(f"{flag}={directory} cannot be created: {e}") from e


def build(pipeline: beam.Pipeline, opts: LabelAndBalanceOptions, spec: TeacherSpec,
          model_handler: ModelHandler | None = None) -> beam.PCollection:
    """Adds the job's steps to `pipeline`; returns the PCollection of the stats.json path.

    Args:
      pipeline: the pipeline to build into (a TestPipeline in tests).
      opts: the job's options.
      spec: the teacher's spec (`teacher_spec(opts)`).
      model_handler: the ModelHandler to run; defaults to `TeacherModelHandler(spec)`. Tests
        pass a fake with the same output contract.
    """
    config = balance_config(opts.view_as(BalanceOptions))
    metadata = table_metadata(opts, spec)
    check_table_serves(metadata, config)
    handler = model_handler or TeacherModelHandler(
        spec, runtime=teacher_runtime(opts), large_model=shares_model(opts),
        model_copies=opts.model_copies)
    # Whole teacher batches per element, so only a file's last batch is padded.
    read_batch = spec.batch_size * math.ceil(DEFAULT_READ_BATCH / spec.batch_size)
    read = pipeline | "ReadImages" >> ReadImages(opts.input, opts.input_format, read_batch,
                                                 input_columns(opts))
    undecodable, scored = read.images | "TeacherInference" >> TeacherInference(
        handler, spec.image, spec.outputs, metadata.topk, opts.max_image_pixels, opts.decoder,
        teacher_runtime(opts), opts.decode_ahead, opts.teacher_threads)
    image_buckets, file_sizes = 1, read.file_sizes
    if opts.input_format == "images":
        image_buckets = math.ceil(check_input_pattern(opts.input) / IMAGES_PER_TABLE_FILE)
        # One image per file: the rows' image hashes say whether it changed, and a table of
        # millions of files need not carry (nor every worker hold) their sizes.
        file_sizes = None
    paths = ((read.failed, undecodable, scored)
             | "WritePredictions" >> predictions.WritePredictions(
                 predictions_dir(opts), metadata, image_buckets, file_sizes))
    return select_and_write(paths, opts.view_as(BalanceOptions).output_dir, config, metadata,
                            run_config(opts, spec), predictions_dir(opts),
                            mark="label_and_balance")


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.label_and_balance", description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Beam pipeline options (--runner, --project, --region, --temp_location, "
        "--setup_file, --dataflow_service_options=worker_accelerator=..., --machine_type, "
        "--direct_num_workers, ...) are accepted as well; see Beam's documentation. "
        + startup.HELP)
    cli.add_options_args(parser, LabelAndBalanceOptions)
    cli.add_options_args(parser, BalanceOptions)
    return parser


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None,
        model_handler: ModelHandler | None = None) -> PipelineResult | None:
    """The command line: runs the job on its flags (`run_job`); None for --help.

    Args:
      argv: command-line flags; defaults to sys.argv.
      test_pipeline: a pipeline to build into instead of a new one (tests).
      model_handler: replaces the teacher's handler (tests); the teacher is then not checked.
    """
    argv = cli.command_line(argv, _help_parser)
    if argv is None:
        return None
    config = LabelAndBalanceConfig.from_options(pipeline_options(argv))
    return run_job(config, argv, test_pipeline, model_handler)


def run_job(config: LabelAndBalanceConfig, pipeline_args: Sequence[str] = (),
            test_pipeline: beam.Pipeline | None = None,
            model_handler: ModelHandler | None = None) -> PipelineResult:
    """Runs the job and prints a per-class summary; returns the result.

    Args:
      config: the job's settings.
      pipeline_args: Beam's own flags (--runner, ...); the job's flags among them are ignored,
        `config` says those.
      test_pipeline: a pipeline to build into instead of a new one (tests).
      model_handler: replaces the teacher's handler (tests); the teacher is then not checked.
    """
    options = pipeline_options(list(pipeline_args), config.flag_values())
    opts = options.view_as(LabelAndBalanceOptions)
    dry_run = options.view_as(TestOptions).dry_run
    validate(opts, check_output=not dry_run)
    spec = teacher_spec(opts)
    check_table_serves(table_metadata(opts, spec), balance_config(opts.view_as(BalanceOptions)))
    if model_handler is None and not opts.skip_teacher_check:
        # A flag that contradicts the model's own record of how it was trained is more often a
        # mistake than a fix of that record; the outputs alone do not always show it.
        overridden = teacher_flags.metadata_overrides(opts)
        if overridden:
            raise ValueError(f"teacher {spec.path} fails its launch check: "
                             f"{'; '.join(overridden)} (--skip_teacher_check runs anyway)")
        check_teacher(spec, teacher_runtime(opts), launch_sample(opts, spec))
    if not dry_run:
        clear_outputs(opts)  # only once every setting is known to be good
    logging.info("Teacher %s: input %s %s in %s, %d classes (%s)", spec.path, spec.image.shape,
                 spec.input_dtype, spec.input_range, spec.num_classes, spec.outputs)
    pipeline = test_pipeline or cli.new_pipeline(options)
    build(pipeline, opts, spec, model_handler)
    result = pipeline.run()
    result.wait_until_finish()
    Progress.finish_all()
    if not dry_run:
        balance = opts.view_as(BalanceOptions)
        print_summary(balance.output_dir)
        completion.finish_run(balance.output_dir, "label_and_balance",
                              balance.max_failure_fraction)
    return result


if __name__ == "__main__":
    startup.quiet_startup()
    configure_logging()
    sys.exit(cli.main(run, "label_and_balance"))
