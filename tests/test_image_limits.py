"""Image size limits before decoding (tfcxr.data.image_limits) at every entry point that decodes
user images: the SavedModel's image_bytes signatures, the codec (tools/cxr_codec.py), --mode=explain
--images (gradcam.file_images) and the sharder."""

import io
import json
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr import models
from tfcxr.constants import LABELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.data import image_limits, sharding
from tfcxr.evaluate import gradcam
from tfcxr.export import saved_model
from helpers import encode, run_shard, run_tool, write_tree
from tiny_models import tiny_baseline

SIZE = 64  # the toy evaluation size of the exports (`exported`: tests/conftest.py)


def gradient(height, width):
    """A smooth uint8 image (compresses well: a radiograph-sized file stays small)."""
    return (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)


def jpeg_declaring(width, height):
    return image_limits.jpeg_declaring(encode(gradient(16, 16), "JPEG"), width, height)


@pytest.fixture(scope="module")
def bomb():
    return image_limits.blank_png(20_000, 20_000)


def test_declared_sizes_equal_pil_sizes():
    pixels = gradient(37, 53)
    rgba = np.dstack([pixels] * 3 + [np.full_like(pixels, 255)])
    variants = [encode(pixels), encode(rgba), encode(pixels.astype(np.uint16) * 257), encode(pixels, "JPEG"),
                encode(np.dstack([pixels] * 3), "JPEG", progressive=True),
                encode(pixels, "JPEG", exif=Image.Exif().tobytes(), icc_profile=b"\0" * 2000)]
    for data in variants:
        assert image_limits.declared_size(data) == Image.open(io.BytesIO(data)).size == (53, 37)
    assert image_limits.declared_size(jpeg_declaring(20_000, 7)) == (20_000, 7)
    assert image_limits.declared_size(image_limits.jpeg_declaring(variants[4], 9, 10_000)) == (9, 10_000)  # SOF2
    for bit_depth in (1, 8):
        blank = Image.open(io.BytesIO(image_limits.blank_png(30, 20, bit_depth)))
        assert blank.size == (30, 20) and not np.asarray(blank.convert("L")).any()
    for data in [b"", b"not an image", b"\x89PNG\r\n\x1a\n\0\0", b"\xff\xd8\xff\xe0\x00\x10JFIF", variants[0][:20]]:
        assert image_limits.declared_size(data) is None


@pytest.mark.real
def test_real_radiograph_headers(real_dir):
    for path in sorted(real_dir.rglob("*.png"))[:16]:
        data = path.read_bytes()
        assert image_limits.check_bytes(data) == Image.open(io.BytesIO(data)).size


def test_check_bytes_limits(bomb):
    assert image_limits.declared_size(bomb) == (20_000, 20_000) and len(bomb) < 100_000
    with pytest.raises(image_limits.ImageTooLarge, match=r"declares 20000x20000 pixels .* 8192 a side and 40000000"):
        image_limits.check_bytes(bomb)
    assert image_limits.check_bytes(encode(gradient(8, 8))) == (8, 8)
    header = image_limits.blank_png(1, 1)[:24]  # only the header is read
    for width, height, refused in [(4300, 3500, False), (MAX_IMAGE_SIDE, 4000, False), (MAX_IMAGE_SIDE + 1, 8, True),
                                   (6400, 6400, True)]:  # 6400^2 = 41 MP: the pixel limit alone
        data = header[:16] + struct.pack(">II", width, height)
        assert image_limits.too_large(*image_limits.declared_size(data)) is refused
    assert image_limits.too_large(100, 100, max_side=99) and image_limits.too_large(100, 100, max_pixels=9999)


def test_signatures_refuse_oversized_headers_and_the_next_request_works(exported, bomb):
    path, loaded = exported
    serve = loaded.signatures["serving_default"]
    good = encode(gradient(SIZE, SIZE))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: image 1 declares 20000x20000 pixels"):
        serve(image_bytes=tf.constant([good, bomb]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: image 0 declares 20000x9000 pixels"):
        serve(image_bytes=tf.constant([jpeg_declaring(20_000, 9000)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: image 2 declares 20000x20000"):
        loaded.signatures["compress"](image_bytes=tf.constant([good, good, bomb]))
    assert serve(image_bytes=tf.constant([good]))["probabilities"].shape == (1, len(LABELS))
    assert (loaded.max_image_side.numpy(), loaded.max_image_pixels.numpy()) == (MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS)
    recorded = json.loads((path / saved_model.LIMITS_FILE).read_text())
    assert recorded == {"max_image_side": MAX_IMAGE_SIDE, "max_image_pixels": MAX_IMAGE_PIXELS}


def test_radiograph_sized_png_and_jpeg_are_served(exported):
    _, loaded = exported
    pixels = gradient(3500, 4300)
    batch = [encode(pixels), encode(pixels, "JPEG")]
    probabilities = loaded.signatures["serving_default"](image_bytes=tf.constant(batch))["probabilities"].numpy()
    assert probabilities.shape == (2, len(LABELS)) and np.isfinite(probabilities).all()


def test_limits_set_at_export_are_recorded_and_applied(tmp_path):
    path = saved_model.export(tiny_baseline(), tmp_path, image_size=SIZE, model_name="tfcxr_d121",
                              max_image_side=100, max_image_pixels=5000)
    loaded = tf.saved_model.load(str(path))
    assert (loaded.max_image_side.numpy(), loaded.max_image_pixels.numpy()) == (100, 5000)
    assert json.loads((path / saved_model.LIMITS_FILE).read_text()) == {"max_image_side": 100, "max_image_pixels": 5000}
    serve = loaded.signatures["serving_default"]
    assert serve(image_bytes=tf.constant([encode(gradient(SIZE, SIZE))]))["probabilities"].shape == (1, len(LABELS))
    refused = [(encode(gradient(80, 80)), "80x80"), (encode(gradient(8, 101), "JPEG"), "101x8")]
    for data, size in refused:
        message = rf"image_bytes: image 0 declares {size} pixels .* 100 a side and 5000 pixels"
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(image_bytes=tf.constant([data]))


def test_codec_and_explain_refuse_before_decoding(tmp_path, bomb):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(image_limits.ImageFileError, match=r"bomb.png: declares 20000x20000 pixels"):
        image_limits.read_gray(path)
    with pytest.raises(image_limits.ImageFileError, match=r"bomb.png: declares 20000x20000 pixels"):
        gradcam.file_images([path], SIZE)
    small = tmp_path / "small.png"
    small.write_bytes(encode(gradient(40, 30)))
    assert gradcam.file_images([small], SIZE)[0][2] == (40, 30)
    with pytest.raises(image_limits.ImageFileError, match=r"small.png: declares 30x40 pixels .* 32 a side"):
        gradcam.file_images([small], SIZE, max_side=32)


@pytest.mark.slow
def test_cxr_codec_tool_names_the_file_in_one_line(tmp_path):
    model_file = tmp_path / "autoencoder.keras"
    models.build_autoencoder().save(model_file)
    image = tmp_path / "wide.png"
    image.write_bytes(encode(gradient(16, 40)))
    result = run_tool("cxr_codec.py", "compress", image, f"--model={model_file}", f"--out_dir={tmp_path / 'out'}",
                      "--max_image_side=32", timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {image}: declares 40x16 pixels (width x height), above the limit of 32 a side and 40000000 pixels")
    assert not (tmp_path / "out").exists()


def test_sharder_names_the_file_or_lists_it_with_allow_missing(tmp_path, bomb):
    data_dir = write_tree(tmp_path / "cxr14")
    bad = data_dir / "images" / "00000002_000.png"
    bad.write_bytes(bomb)
    with pytest.raises(sharding.ShardingError, match=r"00000002_000.png: image too large: declares 20000x20000"):
        run_shard(data_dir, tmp_path / "records")
    manifest = run_shard(data_dir, tmp_path / "records", allow_missing=True)
    unreadable = [entry for split in manifest["unreadable"].values() for entry in split]
    assert [entry["image"] for entry in unreadable] == ["00000002_000.png"]
    assert "declares 20000x20000" in unreadable[0]["error"]
