"""benchmarks/real_cxr14.py: the real radiographs as records, and the held-out scores."""

import numpy as np
import pytest
import tensorflow as tf

from tfcxr.evaluate import reconstruction
from tfcxr import models
from tfcxr.models import compression
from helpers import benchmark

real_cxr14 = benchmark("real_cxr14")

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def records(real_dir, tmp_path_factory):
    return tmp_path_factory.mktemp("real") / "records"


@pytest.mark.slow
def test_records_split_patient_disjoint_and_reused(real_dir, records):
    manifest = real_cxr14.ensure_records(records, real_dir)
    splits = manifest["splits"]
    assert {split: s["written"] for split, s in splits.items()} == {"train": 43, "val": 4, "test": 17}
    assert manifest["encoding"] == "raw" and not any(manifest["missing"].values())
    names = {split: real_cxr14.split_names(records, split) for split in splits}
    assert sum(len(set(n)) for n in names.values()) == 64
    tree = records.parent / "records.tree"
    test_list = set((tree / "test_list.txt").read_text().split())
    assert set(names["test"]) == test_list  # held out = the official test list, all of it on disk
    patients = {split: {int(name[:8]) for name in n} for split, n in names.items()}
    assert not (patients["train"] & patients["test"] or patients["val"] & patients["test"]
                or patients["train"] & patients["val"])
    mtime = (records / "manifest.json").stat().st_mtime_ns
    assert real_cxr14.ensure_records(records, real_dir) == manifest  # the second call shards nothing
    assert (records / "manifest.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_held_out_images_are_the_pngs(real_dir, records):
    real_cxr14.ensure_records(records, real_dir)
    images, names = real_cxr14.held_out_images(records)
    assert images.shape == (17, 1024, 1024, 1) and images.dtype == np.float32
    png = tf.io.decode_png(tf.io.read_file(str(real_dir / "images" / names[0])), channels=1)
    np.testing.assert_allclose(images[0], png.numpy() / 255.0, atol=1e-6)


@pytest.mark.slow
def test_score_autoencoder_matches_direct_measure(real_dir, records):
    real_cxr14.ensure_records(records, real_dir)
    model = models.build_autoencoder()
    scores = real_cxr14.score_autoencoder(model, records, split="val")
    assert scores["images"] == 4 and set(scores["methods"]) == set(reconstruction.METHODS)
    images = np.concatenate([b["image"].numpy() for b in real_cxr14.held_out_dataset(records, 1, "val")])
    bicubic = compression.resize_round_trip(tf.constant(images), "bicubic")
    expected = float(tf.reduce_mean(tf.image.psnr(bicubic, images, 1.0)))
    assert scores["methods"]["bicubic"]["psnr"] == pytest.approx(expected, abs=1e-3)
    untrained = scores["methods"]["autoencoder"]["psnr"]
    assert untrained < scores["methods"]["bicubic"]["psnr"]  # random weights do not beat resizing


def test_dead_decoder_channels():
    model = models.build_autoencoder()
    conv = model.get_layer("decoder").get_layer("decoder_conv")
    kernel, bias = conv.get_weights()
    kernel[..., 3], bias[3] = -np.abs(kernel[..., 3]), -0.01  # no latent in [0, 1] lifts channel 3
    kernel[..., 5], bias[5] = np.abs(kernel[..., 5]) + 0.01, -0.05  # a latent of 1 lifts channel 5
    bias[[c for c in range(16) if c not in (3, 5)]] = 0.5
    conv.set_weights([kernel, bias])
    assert real_cxr14.dead_decoder_channels(model) == [3]
    assert real_cxr14.dead_decoder_channels(model.get_layer("decoder")) == [3]
