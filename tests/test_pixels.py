"""tfcxr.data.pixels: the sharder's gray and image/small rules, with PIL and in TensorFlow ops, give the same pixels;
stage-1 serving gives the model exactly the pixels stage-1 evaluation reads."""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr.data import image_limits, pipeline, pixels, sharding
from tfcxr.data.records import Records
from tfcxr.export import saved_model
from helpers import encode, tfcxr_main
from tiny_models import tiny_baseline


@pytest.mark.parametrize("height, width, size", [(96, 96, 24), (77, 33, 10), (25, 30, 32), (61, 60, 60), (5, 70, 22)])
def test_resize_tf_equals_resize_pil(height, width, size):
    image = np.random.default_rng(height).integers(0, 256, (height, width), dtype=np.uint8)
    expected = pixels.resize_pil(image, size)
    np.testing.assert_array_equal(pixels.resize_tf(tf.constant(image[..., None]), size).numpy()[..., 0], expected)


def test_resize_pil_of_a_square_image_is_one_pil_resize():
    """So image/small of square sources (all of ChestX-ray14) is what the sharder wrote before FORMAT_VERSION 2."""
    image = np.random.default_rng(0).integers(0, 256, (120, 120), dtype=np.uint8)
    once = np.asarray(Image.fromarray(image).resize((30, 30), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pixels.resize_pil(image, 30), once)


def test_decode_gray_tf_and_read_gray_equal_the_sharders_gray(tmp_path):
    rng = np.random.default_rng(1)
    palette = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).quantize(16)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    sources = {
        "L": encode(rng.integers(0, 256, (20, 24), dtype=np.uint8)),
        "I;16": encode(rng.integers(0, 65536, (20, 24), dtype=np.uint16)),
        "RGB": encode(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)),
        "RGBA": encode(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)),
        "LA": encode(rng.integers(0, 256, (20, 24, 2), dtype=np.uint8), mode="LA"),
        "P": buffer.getvalue(),
        "JPEG L": encode(rng.integers(0, 256, (20, 24), dtype=np.uint8), format="JPEG"),
        "JPEG RGB": encode(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), format="JPEG"),
    }
    for name, data in sources.items():
        with Image.open(io.BytesIO(data)) as image:
            expected = sharding.to_gray(image)
        np.testing.assert_array_equal(pixels.decode_gray_tf(data).numpy()[..., 0], expected, err_msg=name)
        path = tmp_path / f"{name.replace(' ', '_').replace(';', '')}.img"
        path.write_bytes(data)  # the tools' reader (cxr_codec, --images) gives the same pixels
        np.testing.assert_array_equal(image_limits.read_gray(path).numpy()[..., 0], expected, err_msg=name)


def served_pixels(data, size, small_size):
    """The 8-bit image a stage-1 signature feeds the model."""
    image = saved_model.decode_image(tf.constant(data), size, small_size=small_size)
    return np.round(image.numpy()[..., 0] * 255).astype(np.uint8)


def test_stage1_serving_gives_image_small_of_a_real_radiograph(real_dir):
    """The sharder's image/small of a real radiograph (gray and RGBA) == what stage-1 serving decodes."""
    for name in ("00000002_000.png", "00001369_000.png"):
        path = real_dir / "images" / name
        row = {"path": str(path), "image_index": name, "labels": [0] * 14, **{key: 0 for key in sharding.META}}
        example, _, _ = sharding.make_examples({**row, "view_position": "PA", "patient_gender": "M"}, "png", 256)
        small = tf.io.decode_png(example.features.feature["image/small"].bytes_list.value[0]).numpy()[..., 0]
        np.testing.assert_array_equal(served_pixels(path.read_bytes(), 256, 256), small, err_msg=name)


def test_stage1_export_serves_the_evaluation_pixels(tmp_path):
    """image/small (48) then the pipeline's resize (32): the baseline's probabilities on exactly those pixels."""
    baseline = tiny_baseline()
    path = saved_model.export(baseline, tmp_path, image_size=32, small_size=48, model_name="tfcxr_d121")
    source = np.random.default_rng(2).integers(0, 256, (90, 100), dtype=np.uint8)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](image_bytes=tf.constant([encode(source)]))
    small = pixels.resize_pil(source, 48)[..., None]  # image/small, as the sharder makes it
    evaluated = pipeline.to_float(pipeline.resize_uint8(tf.constant(small), 32))[None]  # stage-1 evaluation
    expected = tf.sigmoid(baseline(evaluated)["logits"]).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-6)


def test_small_size_comes_from_the_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"small_size": 64}')
    assert Records.open(tmp_path).small_size == 64
    with pytest.raises(FileNotFoundError, match="manifest.json; shard the data"):
        Records.open(tmp_path / "elsewhere")


@pytest.mark.slow
def test_stage1_export_through_main_reads_small_size_from_the_manifest(tmp_path):
    baseline = tiny_baseline()
    run, records = tmp_path / "d121", tmp_path / "records"
    run.mkdir()
    records.mkdir()
    baseline.save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"stage": "baseline", "data": {"resize_size": 32,
                                                                                "records_dir": str(records)}}))
    export = ["--stage=1", "--mode=export", f"--model_dir={run}", f"--export_dir={tmp_path}"]
    missing = tfcxr_main(*export, expect=1)
    assert missing.stderr.strip().splitlines()[-1] == (f"error: {records / 'manifest.json'}: no manifest.json; "
                                                       "shard the data with tools/shard_cxr14.py")
    (records / "manifest.json").write_text(json.dumps({"small_size": 48}))
    result = tfcxr_main(*export)
    assert "(image/small 48x48, then 32x32 inputs)" in result.stdout
    source = np.random.default_rng(3).integers(0, 256, (70, 64), dtype=np.uint8)
    served = tf.saved_model.load(str(tmp_path / "tfcxr_d121" / "1")).signatures["serving_default"](
        image_bytes=tf.constant([encode(source)]))["probabilities"].numpy()
    evaluated = pipeline.to_float(pipeline.resize_uint8(tf.constant(pixels.resize_pil(source, 48)[..., None]), 32))
    np.testing.assert_allclose(served, tf.sigmoid(baseline(evaluated[None])["logits"]).numpy(), atol=1e-6)
