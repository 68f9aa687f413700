"""Decode + resize images/s on one core: the job's decoders vs plain PIL vs TensorFlow eager.

    python -m bench.decode [--images 200] [--rounds 5]

The process is pinned to one CPU core and TensorFlow to one thread, so every figure is per core.
Cases: photo-like RGB JPEGs (quality 90) of 500x375, the common ImageNet-like size, and of
1024x768, both resized to a 224x224x3 teacher input, and real 28x28 Fashion-MNIST PNGs for a
28x28x1 teacher (Debian's dataset-fashion-mnist; random grayscale PNGs when it is missing).
Decoders, all producing uint8 [H, W, C]:

- `ns pillow`: `ns_data.images.PillowDecoder`, the job's default (`--decoder=pillow`):
  libjpeg DCT scaling, then Pillow's antialiased bilinear resize; plain 8-bit PNGs by OpenCV;
- `ns pillow, no cv2`: the same decoder with its OpenCV way for PNGs turned off (every image by
  Pillow), to show what that way gains;
- `ns tf`: `ns_data.images.ImageDecoder` (`--decoder=tf`): the trainer's `decode_and_resize`
  in a `tf.function`, one call per image;
- `plain PIL`: `Image.open(...).convert(mode).resize(size, BILINEAR)`, what one writes by hand;
- `tf eager`: `tf.io.decode_jpeg` / `decode_png` and `tf.image.resize(antialias=True)`, eager,
  one image at a time.

Rounds interleave the decoders (each decodes every image once per round); the median round is
reported. Pixel columns compare each decoder's output with the trainer's pixels
(`decode_and_resize`): the mean and max absolute difference in levels of 255.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import statistics
import time

# One core, one TensorFlow thread: set before TensorFlow starts.
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from ns_data.images import (ImageDecoder, ImageSpec, PillowDecoder, _opencv,  # noqa: E402
                            decode_and_resize)

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

_FASHION_MNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def photo_like(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour regions plus fine noise: compresses and decodes like a photograph."""
    coarse = rng.integers(0, 256, size=(height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height),
                                                       Image.Resampling.BICUBIC), np.int16)
    noise = rng.normal(0, 6, size=smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


def jpegs(count: int, height: int, width: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode(photo_like(height, width, rng), "JPEG", quality=90) for _ in range(count)]


def small_pngs(count: int) -> tuple[list[bytes], str]:
    if os.path.exists(_FASHION_MNIST):
        with gzip.open(_FASHION_MNIST) as f:
            pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
        source = "Fashion-MNIST test images"
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
        source = "random pixels (dataset-fashion-mnist not installed)"
    return [encode(p, "PNG") for p in pixels], source


class PillowOnly(PillowDecoder):
    """`PillowDecoder` without its OpenCV way for plain PNGs."""

    def _plain_png(self, encoded: bytes) -> None:
        return None


def plain_pil(spec: ImageSpec):
    mode, size = ("L" if spec.channels == 1 else "RGB"), (spec.width, spec.height)

    def decode(encoded: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(encoded)).convert(mode)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image).reshape(spec.shape)
    return decode


def tf_eager(spec: ImageSpec, jpeg: bool):
    op = tf.io.decode_jpeg if jpeg else tf.io.decode_png

    def decode(encoded: bytes) -> np.ndarray:
        image = op(encoded, channels=spec.channels)
        if image.shape[:2] != (spec.height, spec.width):
            image = tf.image.resize(image, [spec.height, spec.width], antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image.numpy()
    return decode


def measure(case: str, images: list[bytes], spec: ImageSpec, jpeg: bool, rounds: int) -> None:
    decoders = {"ns pillow": PillowDecoder(spec), "ns pillow, no cv2": PillowOnly(spec),
                "ns tf": ImageDecoder(spec),
                "plain PIL": plain_pil(spec), "tf eager": tf_eager(spec, jpeg)}
    reference = [decode_and_resize(tf.constant(e), spec).numpy().astype(np.int16)
                 for e in images]
    seconds = {name: [] for name in decoders}
    diffs = {}
    for name, decode in decoders.items():  # warm-up (tf.function tracing) and pixel checks
        diff = [np.abs(decode(e).astype(np.int16) - r) for e, r in zip(images, reference)]
        diffs[name] = (float(np.mean([d.mean() for d in diff])), int(max(d.max() for d in diff)))
    for _ in range(rounds):
        for name, decode in decoders.items():
            start = time.perf_counter()
            for encoded in images:
                decode(encoded)
            seconds[name].append(time.perf_counter() - start)
    mean_kib = sum(map(len, images)) / len(images) / 1024
    print(f"\n{case}: {len(images)} images, {mean_kib:.1f} KiB each, "
          f"-> {spec.height}x{spec.width}x{spec.channels}")
    print(f"  {'decoder':<17} {'images/s/core':>14} {'vs plain PIL':>13} {'vs tf eager':>12}"
          f" {'mean diff':>10} {'max diff':>9}")
    rate = {name: len(images) / statistics.median(s) for name, s in seconds.items()}
    for name in decoders:
        print(f"  {name:<17} {rate[name]:>14.0f} {rate[name] / rate['plain PIL']:>12.2f}x"
              f" {rate[name] / rate['tf eager']:>11.2f}x {diffs[name][0]:>10.3f}"
              f" {diffs[name][1]:>9d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="Images per case.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved timed rounds.")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    opencv = _opencv()
    print(f"One core of {cpu}; TensorFlow {tf.__version__}, 1 thread; Pillow "
          f"{Image.__version__}; OpenCV {opencv.__version__ if opencv else 'none'}; median of "
          f"{args.rounds} interleaved rounds")
    measure("JPEG 500x375", jpegs(args.images, 375, 500, seed=1), ImageSpec(224, 224, 3),
            jpeg=True, rounds=args.rounds)
    measure("JPEG 1024x768", jpegs(args.images // 2, 768, 1024, seed=2),
            ImageSpec(224, 224, 3), jpeg=True, rounds=args.rounds)
    pngs, source = small_pngs(args.images * 10)
    measure(f"PNG 28x28 ({source})", pngs, ImageSpec(28, 28, 1), jpeg=False,
            rounds=args.rounds)


if __name__ == "__main__":
    main()
