"""SavedModel export for TF Serving (tfcxr.export.saved_model) and tools/serving_client.py."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr.constants import LABELS
from tfcxr.export import rest, saved_model
from helpers import encode, gray_noise, run_tool, serving_client, write_noise_pngs
from tiny_models import tiny_baseline

SIZE = 64  # the toy evaluation size the models are exported with (`aecnn` and `exported`: tests/conftest.py)


def test_tf_serving_layout_and_versions(aecnn, exported):
    path = Path(exported[0])  # export returns the version folder's path (a URL where export_dir is one)
    assert path.name == "1" and path.parent.name == "tfcxr_aecnn"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert [p.name for p in path.parent.iterdir()] == ["1"]  # no temporary left behind
    with pytest.raises(ValueError, match="version 1 already exported"):
        saved_model.export(aecnn, path.parent.parent, image_size=SIZE, model_name="tfcxr_aecnn", version=1)
    assert saved_model.next_version(path.parent) == 2


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
    path, _ = exported
    shown = subprocess.run([str(Path(sys.executable).parent / "saved_model_cli"), "show", "--dir", str(path), "--all"],
                           capture_output=True, text=True, check=True).stdout
    for signature in ("serving_default", "predict_images", "compress", "reconstruct"):
        assert f"signature_def['{signature}']" in shown
    assert "inputs['image_bytes']" in shown and "outputs['probabilities']" in shown and "outputs['latent_png_bytes']" in shown


def test_serving_default_matches_the_keras_model(aecnn, exported):
    _, loaded = exported
    pixels = [gray_noise(SIZE, SIZE, seed) for seed in range(3)]  # already the eval size: decoding is exact
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(p) for p in pixels]))
    images = np.stack(pixels)[..., None].astype(np.float32) / 255
    expected = tf.sigmoid(aecnn(images)["logits"]).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    assert outputs["labels"].shape == (3, len(LABELS))
    assert [label.decode() for label in outputs["labels"].numpy()[0]] == list(LABELS)
    predicted = loaded.signatures["predict_images"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(predicted.numpy(), expected, atol=1e-5)


def test_a_batch_mixing_sizes_and_modes(exported):
    _, loaded = exported
    pixels = gray_noise(1024, 1000)
    rgba = np.dstack([gray_noise(300, 300, 1)] * 3 + [np.full((300, 300), 255, np.uint8)])
    batch = [encode(pixels), encode(np.dstack([gray_noise(200, 240, 2)] * 3), "JPEG"), encode(rgba, mode="RGBA")]
    probabilities = loaded.signatures["serving_default"](image_bytes=tf.constant(batch))["probabilities"].numpy()
    assert probabilities.shape == (3, len(LABELS)) and np.isfinite(probabilities).all()
    alone = [loaded.signatures["serving_default"](image_bytes=tf.constant([b]))["probabilities"].numpy()[0] for b in batch]
    np.testing.assert_allclose(probabilities, alone, atol=1e-6)
    as_gray = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(rgba[..., 0])]))["probabilities"]
    np.testing.assert_allclose(probabilities[2], as_gray.numpy()[0], atol=1e-6)  # RGBA with R=G=B == its gray


def test_invalid_bytes_fail_naming_the_input_and_the_next_call_works(exported):
    _, loaded = exported
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes"):
        serve(image_bytes=tf.constant([encode(gray_noise(SIZE, SIZE)), b"this is not an image"]))
    assert serve(image_bytes=tf.constant([encode(gray_noise(SIZE, SIZE))]))["probabilities"].shape == (1, len(LABELS))


def test_compress_and_reconstruct_signatures(aecnn, exported):
    _, loaded = exported
    pixels = gray_noise(SIZE, SIZE, 3)
    compressed = loaded.signatures["compress"](image_bytes=tf.constant([encode(pixels)]))
    latent = aecnn.get_layer("encoder")(pixels[None, ..., None].astype(np.float32) / 255)
    np.testing.assert_allclose(compressed["latent"].numpy(), latent.numpy(), atol=1e-6)
    stored = np.asarray(Image.open(io.BytesIO(compressed["latent_png_bytes"].numpy()[0])))
    assert stored.shape == (SIZE // 4, SIZE // 4) and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.round(latent.numpy()[0, ..., 0] * 255))
    reconstruction = loaded.signatures["reconstruct"](latent=compressed["latent"])["reconstruction"]
    np.testing.assert_allclose(reconstruction.numpy(), aecnn.get_layer("decoder")(latent).numpy(), atol=1e-6)


def test_baseline_export_has_no_codec_signatures(tmp_path):
    baseline = tiny_baseline()
    path = saved_model.export(baseline, tmp_path, image_size=SIZE, model_name="tfcxr_d121", version=7)
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures) == ["predict_images", "serving_default"] and Path(path).name == "7"
    pixels = gray_noise(SIZE, SIZE)
    probabilities = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(pixels)]))["probabilities"]
    expected = tf.sigmoid(baseline(pixels[None, ..., None].astype(np.float32) / 255)["logits"])
    np.testing.assert_allclose(probabilities.numpy(), expected.numpy(), atol=1e-5)


@pytest.fixture
def serving_url(exported):
    path, _ = exported
    with rest.serving(path) as url:  # TF Serving's REST rules, tfcxr/export/rest.py
        yield f"{url}:predict"


def test_serving_client_prints_the_probabilities_of_each_file(aecnn, serving_url, tmp_path):
    files = write_noise_pngs(tmp_path, range(2), SIZE)
    result = serving_client(serving_url, *files)
    assert result.returncode == 0, result.stderr
    assert_probability_table(result.stdout.splitlines(), aecnn, seeds=range(2))


def assert_probability_table(lines, aecnn, seeds):
    """The table of serving_client.table: a header naming image_<seed>.png, then one row per label."""
    assert all(f"image_{seed}.png" in lines[0] for seed in seeds)
    images = np.stack([gray_noise(SIZE, SIZE, seed) for seed in seeds])[..., None].astype(np.float32) / 255
    expected = tf.sigmoid(aecnn(images)["logits"]).numpy()
    assert len(lines) == 1 + len(LABELS)
    for k, label in enumerate(LABELS):
        name, *values = lines[1 + k].split()
        assert name == label
        np.testing.assert_allclose([float(v) for v in values], expected[:, k], atol=1e-4)


@pytest.mark.slow
def test_query_saved_model_calls_serving_default_in_process(aecnn, exported, tmp_path):
    path, _ = exported
    files = write_noise_pngs(tmp_path, (3, 4), SIZE)
    result = run_tool("query_saved_model.py", f"--saved_model={path}", *files, timeout=300)
    assert result.returncode == 0, result.stderr
    title, *lines = result.stdout.splitlines()
    assert title == f"serving_default of {path}:"
    assert_probability_table(lines, aecnn, seeds=(3, 4))
    wrong = run_tool("query_saved_model.py", f"--saved_model={tmp_path}", files[0], timeout=300)
    assert wrong.returncode == 1 and wrong.stderr.strip() == f"error: {tmp_path}: no saved_model.pb (export with --mode=export)"


def test_serving_client_reports_server_errors_in_one_line(serving_url, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    result = serving_client(serving_url, bad)
    assert result.returncode == 1 and "HTTP 400" in result.stderr and "image_bytes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = serving_client(serving_url, tmp_path / "missing.png")
    assert missing.returncode == 1 and "missing.png: no such file" in missing.stderr


def test_real_rgba_radiograph_is_served_as_its_gray_image(exported, real_dir):
    """A real ChestX-ray14 RGBA PNG (alpha 255, R=G=B): the signature sees the gray image."""
    _, loaded = exported
    data = (real_dir / "images" / "00001369_000.png").read_bytes()
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([data]))["probabilities"]
    rgba = np.asarray(Image.open(io.BytesIO(data)))
    assert rgba.shape == (1024, 1024, 4)
    gray_png = encode(rgba[..., 0])
    as_gray = loaded.signatures["serving_default"](image_bytes=tf.constant([gray_png]))["probabilities"]
    np.testing.assert_allclose(served.numpy(), as_gray.numpy(), atol=1e-6)
