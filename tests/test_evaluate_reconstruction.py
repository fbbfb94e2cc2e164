"""Reconstruction quality (tfcxr.evaluate.reconstruction): PSNR / SSIM against plain resizing."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr import models
from tfcxr.data.pipeline import make_dataset
from tfcxr import stages
from tfcxr.evaluate import reconstruction
from tfcxr.models.compression import quantize, resize_round_trip
from helpers import run_shard, write_tree
from tiny_models import tiny_aecnn

# (height, width) of the test split's originals in mixed_records: non-square, of several sizes, some not
# multiples of 4 (cropped to 36x52, 36x48, 48x28, 36x52 once measured).
MIXED_SIZES = [(36, 52), (37, 50), (48, 30), (39, 55)]


def test_quantize_gives_the_256_levels_of_an_8bit_png():
    latent = tf.random.uniform([2, 8, 8, 1], seed=1)
    quantized = quantize(latent).numpy()
    np.testing.assert_allclose(quantized * 255, np.round(quantized * 255), atol=1e-4)
    assert np.abs(quantized - latent.numpy()).max() <= 0.5 / 255 + 1e-7
    np.testing.assert_array_equal(quantize(quantized).numpy(), quantized)


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_resize_round_trip_antialiases_the_downsizing(method):
    checkerboard = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None, :, :, None]
    output = resize_round_trip(tf.constant(checkerboard), method).numpy()
    assert output.shape == checkerboard.shape
    np.testing.assert_allclose(output[:, 8:-8, 8:-8], 0.5, atol=0.02)  # aliasing would give 0 or 1


def test_reconstructions_of_the_autoencoder_use_the_float_and_the_8bit_latent():
    aecnn = tiny_aecnn()
    encoder, decoder = aecnn.get_layer("encoder"), aecnn.get_layer("decoder")
    images = tf.random.uniform([2, 32, 32, 1], seed=2)
    outputs = reconstruction.reconstructions(encoder, decoder, images)
    assert sorted(outputs) == sorted(reconstruction.METHODS)
    latent = encoder(images)
    np.testing.assert_allclose(outputs["autoencoder"], decoder(latent), atol=1e-6)
    np.testing.assert_allclose(outputs["autoencoder_8bit"], decoder(tf.round(latent * 255) / 255), atol=1e-6)
    for output in outputs.values():
        assert output.shape == images.shape


def test_ssim_per_method_is_tf_image_ssim_of_each_method():
    images = tf.random.uniform([3, 40, 40, 1], seed=3)
    outputs = {"same": images, "noisy": tf.clip_by_value(images + tf.random.normal(images.shape, stddev=0.1, seed=4), 0, 1),
               "dark": images * 0.5, "flat": tf.fill(images.shape, 0.5)}
    ssim = reconstruction.ssim_per_method(outputs, images)
    assert list(ssim) == list(outputs)
    for name, output in outputs.items():
        np.testing.assert_allclose(ssim[name], tf.image.ssim(output, images, 1.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ssim["same"], 1.0, rtol=1e-5)
    assert np.all(ssim["noisy"].numpy() < 0.99) and np.all(ssim["flat"].numpy() < ssim["noisy"].numpy())


def _expected_psnr(model, dataset):
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    psnr = [tf.image.psnr(decoder(quantize(encoder(b["image"]))), b["image"], 1.0) for b in dataset]
    return float(tf.reduce_mean(tf.concat(psnr, 0)))


def test_stage3_reconstruction_report(records_dir, tmp_path):
    aecnn = tiny_aecnn()
    inputs = stages.STAGES["aecnn"].task.inputs.with_sizes(image_size=64)
    summary = reconstruction.evaluate_reconstruction(aecnn, records_dir, tmp_path, inputs=inputs, split="val",
                                                     batch_size=8)
    written = json.loads((tmp_path / "eval" / "val" / "reconstruction.json").read_text())
    assert written == summary and summary["images"] == json.loads((records_dir / "manifest.json").read_text())["splits"]["val"]["written"]
    assert "64x64" in summary["protocol"] and "latent 16x16" in summary["protocol"]
    assert summary["label_version"] and sorted(summary["methods"]) == sorted(reconstruction.METHODS)
    dataset = make_dataset(records_dir, "val", inputs, 8, training=False)
    assert summary["methods"]["autoencoder_8bit"]["psnr"] == pytest.approx(_expected_psnr(aecnn, dataset), rel=1e-5)
    for values in summary["methods"].values():
        assert 0 < values["ssim"] <= 1 and values["psnr"] > 0
    table = (tmp_path / "eval" / "val" / "reconstruction.md").read_text()
    assert "| bicubic_8bit |" in table and f"{summary['methods']['autoencoder']['psnr']:.2f}" in table


def test_stage2_is_measured_at_the_records_full_resolution(records_dir, tmp_path):
    autoencoder = models.build_autoencoder()
    inputs = stages.STAGES["autoencoder"].task.inputs
    summary = reconstruction.evaluate_reconstruction(autoencoder, records_dir, tmp_path, inputs=inputs, split="val",
                                                     stage="autoencoder", batch_size=8)
    assert "128x128" in summary["protocol"] and "full resolution" in summary["protocol"]  # the synthetic originals
    dataset = make_dataset(records_dir, "val", dataclasses.replace(inputs, eval_geometry="full"), 8, training=False)
    assert summary["methods"]["autoencoder_8bit"]["psnr"] == pytest.approx(_expected_psnr(autoencoder, dataset), rel=1e-5)


@pytest.fixture(scope="module")
def mixed_records(tmp_path_factory):
    """Records whose test split holds non-square originals of several sizes (the sharder keeps each at its
    own size) -> (records folder, {image name: uint8 [H, W] original})."""
    tree = write_tree(tmp_path_factory.mktemp("mixed") / "cxr14", num_patients=4, images_per_patient=2, size=32)
    test_names = (tree / "test_list.txt").read_text().split()
    rng = np.random.default_rng(7)
    originals = {}
    for name, (height, width) in zip(test_names, MIXED_SIZES, strict=True):
        y, x = np.mgrid[0:height, 0:width]
        smooth = 128 + 90 * np.sin(x / 5 + rng.uniform(0, 6)) * np.cos(y / 7) + rng.normal(0, 4, (height, width))
        originals[name] = np.clip(np.round(smooth), 0, 255).astype(np.uint8)
        Image.fromarray(originals[name]).save(tree / "images" / name)
    out = tmp_path_factory.mktemp("mixed_records")
    run_shard(tree, out, val_images=2)
    return out, originals


def test_a_codec_alone_is_measured_on_each_original_at_its_own_size(mixed_records, tmp_path):
    """Each original at its own size, cropped to multiples of 4 (the top-left part), never resized: what
    compress serves; batches of 3 mix sizes in record order, so they are regrouped by size."""
    records, originals = mixed_records
    keras.utils.set_random_seed(0)
    autoencoder = models.build_autoencoder(*models.build_codec("residual", width=8))
    correction = autoencoder.get_layer("encoder").get_layer("encoder_correction")  # not plain bicubic
    correction.set_weights([np.random.default_rng(2).normal(0, 0.05, w.shape).astype(np.float32)
                            for w in correction.get_weights()])
    summary = reconstruction.evaluate_reconstruction(autoencoder, records, tmp_path, stage="autoencoder",
                                                     inputs=stages.STAGES["autoencoder"].task.inputs, batch_size=3)
    encoder, decoder = autoencoder.get_layer("encoder"), autoencoder.get_layer("decoder")
    expected = {name: [] for name in reconstruction.METHODS}
    for pixels in originals.values():
        height, width = pixels.shape
        image = tf.constant(pixels[None, :height - height % 4, :width - width % 4, None] / np.float32(255))
        for name, output in reconstruction.reconstructions(encoder, decoder, image).items():
            expected[name].append((float(tf.image.psnr(output, image, 1.0)[0]), float(tf.image.ssim(output, image, 1.0)[0])))
    assert summary["images"] == len(originals)
    for name, values in expected.items():
        psnr, ssim = np.mean(values, axis=0)
        assert summary["methods"][name]["psnr"] == pytest.approx(psnr, rel=1e-5), name
        assert summary["methods"][name]["ssim"] == pytest.approx(ssim, rel=1e-4, abs=1e-5), name
    assert "own size" in summary["protocol"] and "3 sizes from 28x48 to 52x36" in summary["protocol"]
