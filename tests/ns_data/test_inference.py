"""Tests for the decode step of `ns_data/inference.py` (the teacher side runs in the job tests)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from apache_beam.pvalue import TaggedOutput
from PIL import Image

from ns_data import devices, inference
from ns_data.images import ImageSpec, decode_and_resize
from ns_data.predictions import ERROR_MESSAGE, ERROR_STAGE, INDEX, LABEL
from ns_data.records import STAGE_DECODE, RawImage

SPEC = ImageSpec(12, 10, 1)


def encoded(fmt: str, seed: int, shape=(12, 10, 3)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    if fmt == "GIF":
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def raw_images(*contents: bytes) -> list[RawImage]:
    return [RawImage(source="in.tfrecord", index=i, image_id=b"id%d" % i, encoded=data)
            for i, data in enumerate(contents)]


def decode(decoder: str, images: list[RawImage], runtime=None):
    fn = inference._Decode(SPEC, max_pixels=10_000, decoder=decoder, runtime=runtime)
    fn.setup()
    decoded, failed = None, []
    for out in fn.process(images):
        if isinstance(out, TaggedOutput):
            failed.extend(out.value.to_pylist())  # rows of the predictions table
        else:
            decoded = out
    return decoded, failed


@pytest.fixture
def gpu_settings(monkeypatch):
    """Records the runtime each decoding process sets the GPUs up with."""
    calls = []
    monkeypatch.setattr(devices, "configure_gpus", calls.append)
    return calls


@pytest.mark.parametrize("decoder", ["pillow", "tf"])
def test_decode_batches_good_images_and_fails_bad_ones_per_image(decoder, gpu_settings):
    images = raw_images(encoded("PNG", 0), b"not an image", encoded("JPEG", 1), b"",
                        encoded("PNG", 2, shape=(200, 100, 3)))
    (keys, pixels), failed = decode(decoder, images)
    assert keys == [("in.tfrecord", 0, b"id0"), ("in.tfrecord", 2, b"id2")]
    assert pixels.shape == (2, *SPEC.shape) and pixels.dtype == np.uint8
    want = decode_and_resize(images[0].encoded, SPEC).numpy()
    if decoder == "tf":  # the trainer's own pixels
        np.testing.assert_array_equal(pixels[0], want)
    assert np.abs(pixels[0].astype(int) - want.astype(int)).max() <= 1
    assert [(f[INDEX], f[ERROR_STAGE], f[LABEL]) for f in failed] == [
        (1, STAGE_DECODE, None), (3, STAGE_DECODE, None), (4, STAGE_DECODE, None)]
    assert failed[1][ERROR_MESSAGE] == "ValueError: empty image bytes"
    assert ("100x200, over the limit of 10000 pixels (--max_image_pixels)"
            in failed[2][ERROR_MESSAGE])


def test_pillow_decodes_gif_for_a_grayscale_teacher_where_tf_fails(gpu_settings):
    images = raw_images(encoded("GIF", 3))
    (keys, _), failed = decode("pillow", images)
    assert len(keys) == 1 and not failed
    decoded, failed = decode("tf", images)
    assert decoded is None
    assert failed[0][ERROR_MESSAGE].startswith(
        "InvalidArgumentError: channels must be 0 or 3 for GIF")


def test_only_the_tf_decoder_sets_the_gpu_memory_policy(gpu_settings):
    runtime = devices.TeacherRuntime(gpu_memory_limit_mb=2048)
    decode("pillow", raw_images(encoded("PNG", 4)), runtime)
    assert gpu_settings == []
    decode("tf", raw_images(encoded("PNG", 4)), runtime)
    assert gpu_settings == [runtime]
    decode("tf", raw_images(encoded("PNG", 4)))
    assert gpu_settings == [runtime, devices.TeacherRuntime()]


def test_unknown_decoder_is_refused_when_the_step_is_built():
    with pytest.raises(ValueError, match="unknown decoder 'cv2'"):
        inference.TeacherInference(model_handler=None, image_spec=SPEC, outputs="logits", topk=1,
                                   decoder="cv2")
