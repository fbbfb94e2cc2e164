"""Reconstruction quality (tfcxr.evaluate.reconstruction): PSNR / SSIM against plain resizing."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tfcxr import models
from tfcxr.data.pipeline import make_dataset
from tfcxr import stages
from tfcxr.evaluate import reconstruction
from tfcxr.models.compression import quantize, resize_round_trip
from tiny_models import tiny_aecnn


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
    assert reconstruction.original_size(records_dir, "val") == (128, 128)  # the synthetic tree's size
    assert "128x128" in summary["protocol"] and "full resolution" in summary["protocol"]
    dataset = make_dataset(records_dir, "val", inputs.with_sizes(image_size=128), 8, training=False)
    assert summary["methods"]["autoencoder_8bit"]["psnr"] == pytest.approx(_expected_psnr(autoencoder, dataset), rel=1e-5)
