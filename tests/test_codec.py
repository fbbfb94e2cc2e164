"""tools/cxr_codec.py and tfcxr.export.codec: image <-> 8-bit latent PNG, classify from the latent."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr import models, stages
from tfcxr.config import RunConfig
from tfcxr.constants import LABELS
from tfcxr.data import image_limits
from tfcxr.models.compression import quantize
from tfcxr.export import codec
from helpers import concurrently, encode, run_shard, run_tool, tfcxr_main, write_tree
from tiny_models import box_codec, tiny_aecnn


def cxr_codec(*args):
    return run_tool("cxr_codec.py", *args, timeout=300)


def smooth_image(height, width, seed=0):
    """A smooth, radiograph-like uint8 image (noise would make PSNR meaningless)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = 0.5 + 0.3 * np.sin(6 * x + rng.uniform(0, 6)) * np.cos(4 * y) + 0.02 * rng.standard_normal((height, width))
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def aecnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "best.keras"
    box_codec(tiny_aecnn()).save(path)
    return path


@pytest.fixture(scope="module")
def round_trip(aecnn_file, tmp_path_factory):
    """compress -> reconstruct -> classify through the CLI, on a gray 64x64 and an RGBA 66x70 image."""
    folder = tmp_path_factory.mktemp("codec")
    gray, rgba = smooth_image(64, 64), smooth_image(66, 70, 1)
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgba] * 3 + [np.full_like(rgba, 255)]), "RGBA").save(folder / "rgba.png")
    out = folder / "out"
    results = [cxr_codec("compress", folder / "gray.png", folder / "rgba.png", f"--model={aecnn_file}", f"--out_dir={out}"),
               *concurrently(  # both read the latents; reconstruct writes <name>.png, classify classify.csv
                   lambda: cxr_codec("reconstruct", out / "gray.latent.png", out / "rgba.latent.png",
                                     f"--model={aecnn_file}", f"--out_dir={out}"),
                   lambda: cxr_codec("classify", out / "gray.latent.png", out / "rgba.latent.png",
                                     f"--model={aecnn_file}", f"--out_dir={out}"))]
    for result in results:
        assert result.returncode == 0, result.stderr
    kept = codec.fit(tf.constant(rgba[..., None])).numpy()[..., 0]  # 66x70 cropped to 64x68, as compress does
    np.testing.assert_array_equal(kept, rgba[:64, :68])  # the top-left part: no resampling
    return {"gray": gray, "rgba": kept}, out, results


@pytest.mark.slow
def test_compress_writes_8bit_latents_with_16x_fewer_pixels(round_trip):
    images, out, (compressed, _, _) = round_trip
    assert np.asarray(Image.open(out / "gray.latent.png")).shape == (16, 16)
    assert np.asarray(Image.open(out / "rgba.latent.png")).shape == (16, 17)  # 66x70 -> 64x68 -> 16x17
    assert Image.open(out / "gray.latent.png").mode == "L"
    assert "gray.png -> gray.latent.png: 64x64 -> 16x16 pixels" in compressed.stdout
    assert f"{(out / 'gray.latent.png').stat().st_size:,} bytes" in compressed.stdout and "total:" in compressed.stdout


@pytest.mark.slow
def test_reconstruct_equals_the_in_model_8bit_latent_reconstruction(aecnn_file, round_trip):
    aecnn = models.load_model(aecnn_file)
    images, out, _ = round_trip
    for name, image in images.items():
        pixels = image[None, ..., None].astype(np.float32) / 255
        in_model = aecnn.get_layer("decoder")(quantize(aecnn.get_layer("encoder")(pixels)))
        stored = np.asarray(Image.open(out / f"{name}.png"))
        np.testing.assert_array_equal(stored, np.round(in_model.numpy()[0, ..., 0] * 255))
        psnr_file = tf.image.psnr(stored[None, ..., None] / 255, pixels, 1.0).numpy()[0]
        psnr_model = tf.image.psnr(in_model, pixels, 1.0).numpy()[0]
        assert psnr_model > 18 and psnr_file == pytest.approx(psnr_model, abs=0.05)


def test_classify_from_latent_png_equals_the_aecnn_with_an_8bit_latent(aecnn_file, round_trip):
    aecnn = models.load_model(aecnn_file)
    images, out, (_, _, classified) = round_trip
    table = pd.read_csv(out / "classify.csv", index_col="file")
    assert list(table.columns) == list(LABELS)
    pixels = images["gray"][None, ..., None].astype(np.float32) / 255
    latent = quantize(aecnn.get_layer("encoder")(pixels))
    normalized = aecnn.get_layer("imagenet_normalization")(latent)
    expected = tf.sigmoid(aecnn.get_layer("classifier")(normalized)).numpy()[0]
    np.testing.assert_allclose(table.loc["gray.latent.png"], expected, atol=1e-5)
    float_latent = tf.sigmoid(aecnn(pixels)["logits"]).numpy()[0]  # the AECNN itself, float latent: close
    np.testing.assert_allclose(table.loc["gray.latent.png"], float_latent, atol=1e-2)
    assert "Atelectasis" in classified.stdout and "gray.latent.png" in classified.stdout


@pytest.mark.slow
def test_codec_refuses_bad_input_in_one_line(tmp_path):
    autoencoder_file = tmp_path / "autoencoder.keras"
    models.build_autoencoder().save(autoencoder_file)
    (tmp_path / "gray.latent.png").write_bytes(encode(np.full((8, 8), 100, np.uint8)))
    (tmp_path / "latent.png").write_bytes(b"\x89PNG but broken")
    no_classifier, result = concurrently(
        lambda: cxr_codec("classify", tmp_path / "gray.latent.png", f"--model={autoencoder_file}",
                          f"--out_dir={tmp_path / 'out'}"),
        lambda: cxr_codec("compress", tmp_path / "latent.png", f"--model={tmp_path / 'no_model.keras'}",
                          f"--out_dir={tmp_path / 'out'}"))  # every input is checked before the model loads
    assert no_classifier.returncode == 1 and "has no imagenet_normalization, classifier" in no_classifier.stderr
    assert result.returncode == 1 and "latent.png: not a readable PNG or JPEG image" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'latent.png'}: not a readable PNG or JPEG image (the bytes are neither)")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_radiograph_round_trip(aecnn_file, real_dir, tmp_path):
    """A real 1024x1024 PNG -> 256x256 latent PNG (fewer bytes) -> 1024x1024 reconstruction."""
    source = real_dir / "images" / "00000002_000.png"
    compressed = cxr_codec("compress", source, f"--model={aecnn_file}", f"--out_dir={tmp_path}")
    assert compressed.returncode == 0, compressed.stderr
    latent = tmp_path / "00000002_000.latent.png"
    assert np.asarray(Image.open(latent)).shape == (256, 256)
    assert latent.stat().st_size < source.stat().st_size / 4  # 16x fewer pixels; 5.8x fewer bytes here
    restored = cxr_codec("reconstruct", latent, f"--model={aecnn_file}", f"--out_dir={tmp_path}")
    assert restored.returncode == 0, restored.stderr
    original = np.asarray(Image.open(source))[None, ..., None]
    reconstruction = np.asarray(Image.open(tmp_path / "00000002_000.png"))[None, ..., None]
    assert float(tf.image.psnr(original, reconstruction, 255)[0]) > 25  # the box codec on a real X-ray


@pytest.mark.slow
def test_a_codec_alone_exports_without_the_split_and_compresses_each_image_at_its_own_size(tmp_path):
    """--mode=export of a stage-2 run reads no record of --split; its compress takes any image at its own
    size, cropped to multiples of 4 (the top-left part), one size per request, within the size limits."""
    records = tmp_path / "records"
    run_shard(write_tree(tmp_path / "cxr14", num_patients=4, size=32), records, val_images=2)
    for shard in records.glob("test-*.tfrecord"):
        shard.unlink()  # the manifest lists them; export must not need them
    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig.from_flags("autoencoder", records_dir=str(records), codec="residual", codec_width=8)
    config = config.replace(**{"model.codec": models.make_codec(config.model.codec).config()})
    (run / "config.json").write_text(json.dumps(config.to_dict(omit=stages.STAGES["autoencoder"].task.omits)))
    tf.keras.utils.set_random_seed(4)
    autoencoder = models.build_autoencoder(*models.build_codec("residual", width=8))
    autoencoder.save(run / "best.keras")
    tfcxr_main("--mode=export", f"--model_dir={run}", f"--export_dir={tmp_path / 'export'}")  # --split=test
    loaded = tf.saved_model.load(str(tmp_path / "export" / "tfcxr_autoencoder" / "1"))

    compress = loaded.signatures["compress"]
    tall, wide = smooth_image(37, 50), smooth_image(38, 51, 1)  # both 36x48 once cropped
    compressed = compress(image_bytes=tf.constant([encode(tall), encode(wide)]))
    assert compressed["latent"].shape == (2, 9, 12, 1)
    for index, pixels in enumerate([tall, wide]):
        expected = autoencoder.get_layer("encoder")(pixels[None, :36, :48, None] / np.float32(255))
        np.testing.assert_allclose(compressed["latent"][index], expected[0], atol=1e-6)
        stored = np.asarray(Image.open(io.BytesIO(compressed["latent_png_bytes"].numpy()[index])))
        np.testing.assert_array_equal(stored, np.round(expected.numpy()[0, ..., 0] * 255))
    square = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(smooth_image(128, 128))]))
    assert square["latent"].shape == (1, 32, 32, 1)  # serving_default is compress: any size
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: image 1 is 52x36 and image 0 48x36 once "
                                                             r"cropped to multiples of 4: a request holds images of one size"):
        compress(image_bytes=tf.constant([encode(tall), encode(smooth_image(36, 52))]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: image 1 declares 9000x100 pixels"):
        compress(image_bytes=tf.constant([encode(tall), image_limits.blank_png(9000, 100)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: image 0 is too small to compress"):
        compress(image_bytes=tf.constant([encode(smooth_image(3, 40))]))
    assert compress(image_bytes=tf.constant([encode(tall)]))["latent"].shape == (1, 9, 12, 1)  # and serves on
