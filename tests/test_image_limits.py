"""Image size limits before decoding (tfcxr.data.image_limits) at every entry point that decodes
user images: the SavedModel's image_bytes signatures and its float inputs (predict_images,
reconstruct), the codec (tools/cxr_codec.py), --mode=explain --images (gradcam.file_images) and
the sharder; with files crafted to dodge a naive header check."""

import io
import json
import re
import struct
import zlib
from pathlib import Path

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


# Files of 16 x 16 pixels whose header declares width x height, each in a way a check that reads
# only a PNG's first chunk or a JPEG's segments back to back would miss, or in a format PIL decodes.

def png_chunk_before_ihdr(width, height):
    """A tEXt chunk before IHDR: PIL reads past it (libpng refuses the file)."""
    chunk = b"Comment\0made before its header"
    text = struct.pack(">I", len(chunk)) + b"tEXt" + chunk + struct.pack(">I", zlib.crc32(b"tEXt" + chunk))
    blank = image_limits.blank_png(width, height)
    return blank[:8] + text + blank[8:]


def jpeg_junk_before_sof(width, height):
    """A stray byte before the SOF marker: libjpeg (and PIL) skip it and decode the frame."""
    data = jpeg_declaring(width, height)
    marker = next(offset for kind, offset in image_limits.jpeg_segments(data)
                  if kind in image_limits.JPEG_SOF_MARKERS) - 2  # the FF of FF C0
    return data[:marker] + b"\x00" + data[marker:]


def pil_file(format, **options):
    return encode(gradient(16, 16), format, **options)


def bmp_declaring(width, height):
    data = bytearray(pil_file("BMP"))
    data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER width, height
    return bytes(data)


def gif_declaring(width, height):
    data = bytearray(pil_file("GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    return bytes(data)


def webp_declaring(width, height):
    data = bytearray(pil_file("WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little") & ~(2**28 - 1)  # keep alpha and version bits
    data[21:25] = ((width - 1) | (height - 1) << 14 | bits).to_bytes(4, "little")  # 14 bits each, minus one
    return bytes(data)


def tiff_declaring(width, height):
    data = bytearray(pil_file("TIFF"))
    assert data[:4] == b"II*\0"
    (ifd,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[ifd:ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            data[entry + 8:entry + 12] = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    return bytes(data)


CRAFTED = {"chunk_before_ihdr.png": png_chunk_before_ihdr, "junk_before_sof.jpg": jpeg_junk_before_sof,
           "large.bmp": bmp_declaring, "large.gif": gif_declaring, "large.webp": webp_declaring,
           "large.tiff": tiff_declaring}
REFUSED = "declares 12000x12000 pixels (width x height), above the limit of 8192 a side and 40000000 pixels"
REFUSED_PATTERN = re.escape(REFUSED)


def write_crafted(folder, name, side=12_000):
    path = folder / name
    path.write_bytes(CRAFTED[name](side, side))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 144 MP: PIL warns, opens
def test_crafted_headers_are_read_as_their_decoders_read_them():
    for name, craft in CRAFTED.items():
        data = craft(12_000, 12_000)
        assert Image.open(io.BytesIO(data)).size == (12_000, 12_000), name  # what PIL would decode
        with pytest.raises(image_limits.ImageTooLarge, match=REFUSED_PATTERN):
            image_limits.check_bytes(data)
        small = craft(16, 16)
        assert image_limits.check_bytes(small) == (16, 16), name
        with Image.open(io.BytesIO(small)) as image:
            image.load()  # a sound file at its true size
    with pytest.raises(image_limits.ImageTooLarge, match=r"Image size \(400000000 pixels\) exceeds .*\(above the limit"):
        image_limits.check_bytes(bmp_declaring(20_000, 20_000))  # past PIL's own bomb limit: its count
    junk = jpeg_junk_before_sof(12_000, 12_000)
    assert tf.image.extract_jpeg_shape(junk).numpy().tolist() == [12_000, 12_000, 1]  # libjpeg skips the byte too
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_png(png_chunk_before_ihdr(16, 16))  # libpng reads no chunk before IHDR


def test_every_ihdr_and_sof_before_the_image_data_is_checked():
    """PIL takes the last IHDR / SOF before the data, libpng / libjpeg the first: both are checked."""
    small, large = image_limits.blank_png(16, 16), image_limits.blank_png(12_000, 12_000)
    two_headers = small[:33] + large[8:33] + small[33:]  # signature, IHDR 16, IHDR 12000, IDAT, IEND
    assert image_limits.png_sizes(two_headers) == [(16, 16), (12_000, 12_000)]
    with pytest.raises(image_limits.ImageTooLarge, match=REFUSED_PATTERN):
        image_limits.check_bytes(two_headers)
    jpeg = jpeg_declaring(16, 16)
    sof = next(offset for kind, offset in image_limits.jpeg_segments(jpeg) if kind in image_limits.JPEG_SOF_MARKERS)
    end = sof + struct.unpack(">H", jpeg[sof:sof + 2])[0]  # the SOF segment is jpeg[sof - 2:end]
    large_sof = jpeg[sof - 2:sof + 3] + struct.pack(">HH", 12_000, 12_000) + jpeg[sof + 7:end]
    two_frames = jpeg[:end] + large_sof + jpeg[end:]
    assert image_limits.jpeg_sizes(two_frames) == [(16, 16), (12_000, 12_000)]
    with pytest.raises(image_limits.ImageTooLarge, match=REFUSED_PATTERN):
        image_limits.check_bytes(two_frames)


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_files_are_refused_by_name_before_decoding(tmp_path, name, monkeypatch):
    path = write_crafted(tmp_path, name)
    with pytest.raises(sharding.ShardingError) as refused:
        sharding.read_image(path)  # what the sharder's workers call on each image
    # The decoders would have failed differently (12000 x 12000 declared, 16 x 16 stored): nothing was decoded.
    assert str(refused.value) == f"{path}: image too large: {REFUSED}"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(tf.io, "decode_image", no_decoding)
    with pytest.raises(image_limits.ImageFileError) as refused:
        image_limits.read_gray(path)  # the codec and --mode=explain --images
    assert str(refused.value) == f"{path}: {REFUSED}"
    with pytest.raises(image_limits.ImageFileError, match=REFUSED_PATTERN):
        gradcam.file_images([path], SIZE)


def test_read_gray_decodes_png_and_jpeg_only(tmp_path):
    for name in ("large.bmp", "large.gif", "large.webp", "large.tiff"):
        path = write_crafted(tmp_path, name, side=16)
        with pytest.raises(image_limits.ImageFileError,
                           match=f"^{re.escape(str(path))}: not a readable PNG or JPEG image \\(the bytes are neither\\)$"):
            image_limits.read_gray(path)
    path = write_crafted(tmp_path, "junk_before_sof.jpg", side=16)
    assert image_limits.read_gray(path).shape == (16, 16, 1)


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
    recorded = json.loads((Path(path) / saved_model.LIMITS_FILE).read_text())
    assert recorded == {"max_image_side": MAX_IMAGE_SIDE, "max_image_pixels": MAX_IMAGE_PIXELS}


def test_signatures_refuse_crafted_bytes_before_decoding(exported):
    _, loaded = exported
    serve = loaded.signatures["serving_default"]
    good = encode(gradient(SIZE, SIZE))
    refusals = {"junk_before_sof.jpg": REFUSED,  # libjpeg's header reader finds the frame past the stray byte
                "chunk_before_ihdr.png": "is not a well-formed PNG: its first chunk is not IHDR",
                **{name: "is not a PNG or JPEG image" for name in ("large.bmp", "large.gif", "large.webp", "large.tiff")}}
    for name, refusal in refusals.items():
        for side in (12_000, 16):
            if side == 16 and name.endswith(".jpg"):
                continue  # a sound JPEG at 16 x 16
            with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"image_bytes: image 1 {refusal}")):
                serve(image_bytes=tf.constant([good, CRAFTED[name](side, side)]))
    served = serve(image_bytes=tf.constant([jpeg_junk_before_sof(16, 16)]))["probabilities"]
    assert served.shape == (1, len(LABELS))


def test_float_inputs_are_held_to_the_limits_by_their_shape(exported):
    """predict_images' images and reconstruct's latent (by the 4x larger image it asks for)."""
    _, loaded = exported
    predict, reconstruct = loaded.signatures["predict_images"], loaded.signatures["reconstruct"]
    limit = "above the limit of 8192 a side and 40000000 pixels"
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape(f"images: shape [1 8200 8200 1] is 8200x8200 pixels (width x height), {limit}")):
        predict(images=tf.zeros([1, 8200, 8200, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"latent: shape [1 4096 4096 1] reconstructs (4x a side) 16384x16384 pixels (width x height), {limit}")):
        reconstruct(latent=tf.zeros([1, 4096, 4096, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("reconstructs (4x a side) 6400x6400 pixels")):
        reconstruct(latent=tf.zeros([1, 1600, 1600, 1]))  # 6,400 a side is allowed, 41 MP is not
    assert reconstruct(latent=tf.zeros([2, 16, 20, 1]))["reconstruction"].shape == (2, 64, 80, 1)
    assert predict(images=tf.zeros([1, SIZE, 2 * SIZE, 1]))["probabilities"].shape == (1, len(LABELS))


class RecordingModel:
    """Stands in for an AECNN in a serving module and counts each run of its classifier or decoder
    (a py_function on their input: it runs only once that input's checks have passed)."""

    def __init__(self):
        self.runs = 0

    def _count(self, tensor):
        self.runs += 1
        return np.float32(0)

    def _ran(self, tensor):
        return tf.py_function(self._count, [tensor], tf.float32)

    def __call__(self, images, training=False):
        return {"logits": tf.zeros([tf.shape(images)[0], len(LABELS)]) + self._ran(images)}

    def get_layer(self, name):  # the decoder: nearest upsampling
        return lambda latent, training=False: tf.repeat(tf.repeat(latent, 4, axis=1), 4, axis=2) + self._ran(latent)


def test_a_refused_float_input_never_reaches_the_model():
    model = RecordingModel()
    module = saved_model.AECNNServingModule(model, SIZE, 100, 5000)
    for call, refused, accepted in [(module.predict_images, [1, 101, 8, 1], [1, 8, 100, 1]),
                                    (module.reconstruct, [1, 18, 18, 1], [1, 17, 17, 1])]:  # 72^2 > 5000 >= 68^2
        with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit of 100 a side and 5000 pixels"):
            call(tf.zeros(refused))
        assert model.runs == 0
        call(tf.zeros(accepted))
        assert model.runs == 1
        model.runs = 0


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
    assert json.loads((Path(path) / saved_model.LIMITS_FILE).read_text()) == {"max_image_side": 100, "max_image_pixels": 5000}
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
    for name in sorted(CRAFTED):
        crafted = write_crafted(tmp_path, name)
        result = run_tool("cxr_codec.py", "compress", crafted, f"--model={model_file}", f"--out_dir={tmp_path / 'out'}",
                          timeout=300)
        assert result.returncode == 1 and result.stderr.strip().splitlines() == [f"error: {crafted}: {REFUSED}"]
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
