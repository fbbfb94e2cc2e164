"""--mode=export: a SavedModel in TF Serving's layout, DIR/<model_name>/<version>/.

Signatures (stage 1 D121 baseline and stage 3 AECNN):
  serving_default  image_bytes string [None] (PNG or JPEG, any size, gray / RGB / RGBA)
                   -> probabilities float32 [None, 14], labels string [None, 14]
  predict_images   images float32 [None, H, W, 1] in [0, 1] -> probabilities
AECNN only:
  compress         image_bytes -> latent float32 [None, h, w, 1], latent_png_bytes string [None]
                   (the 8-bit latent as PNG; `_bytes`: TF Serving's REST API returns it as {"b64": ...})
  reconstruct      latent float32 [None, h, w, 1] in [0, 1] -> reconstruction [None, 4h, 4w, 1]

Images whose PNG / JPEG header declares more than max_image_side pixels a side or
max_image_pixels in all (set at export, recorded as the SavedModel's variables of those names
and in assets.extra/image_limits.json) fail with InvalidArgumentError before any pixel is
decoded (tfcxr/data/image_limits.py). Bytes are decoded to one 8-bit gray channel as the
sharder does, and resized to the run's evaluation size exactly as evaluation sees them:
stage 1 (small_size) first to image/small as the sharder made it (tfcxr/data/pixels.py),
then the input pipeline's resize; stage 3 the pipeline's resize of the original.
`labels` repeats the 14 names per image, so every output has the batch dimension TF Serving's
row ("instances") format needs.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from tfcxr.constants import LABELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.data import image_limits, pipeline, pixels

IMAGE_BYTES = "image_bytes"
LIMITS_FILE = "assets.extra/image_limits.json"  # beside the SavedModel, where TF Serving keeps extras
MODEL_NAMES = {1: "tfcxr_d121", 3: "tfcxr_aecnn"}
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def decode_image(image_bytes, size, index=0, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS, small_size=None):
    """One PNG / JPEG (any mode or bit depth) -> float32 [size, size, 1] in [0, 1].

    Gray as the sharder makes it (pixels.decode_gray_tf); small_size (stage 1): first resized
    as the sharder made image/small (pixels.resize_tf); then the same antialiased resize,
    rounded to 8 bits, as the pipeline's evaluation images: the pixels evaluation sees.
    Bytes of anything else, or a header declaring more than the limits, fail with
    InvalidArgumentError naming the input and the index, before decoding.
    """
    is_image = tf.logical_or(tf.strings.substr(image_bytes, 0, len(PNG_MAGIC)) == PNG_MAGIC,
                             tf.strings.substr(image_bytes, 0, len(JPEG_MAGIC)) == JPEG_MAGIC)
    check = tf.debugging.Assert(is_image, [f"{IMAGE_BYTES}: not a PNG or JPEG image, at index", index])
    with tf.control_dependencies([check]):
        within = image_limits.assert_within_limits(image_bytes, index, max_side, max_pixels, name=IMAGE_BYTES)
    with tf.control_dependencies([within]):
        image = pixels.decode_gray_tf(image_bytes)  # uint8 [H, W, 1]
    if small_size:
        image = pixels.resize_tf(image, small_size)  # [small_size, small_size, 1]: image/small
    return pipeline.to_float(pipeline.resize_uint8(image, size))  # [size, size, 1]


def decode_images(image_bytes, size, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS, small_size=None):
    """string [B] -> float32 [B, size, size, 1]."""
    indices = tf.range(tf.size(image_bytes))
    decode = lambda pair: decode_image(pair[0], size, pair[1], max_side, max_pixels, small_size)  # noqa: E731
    return tf.map_fn(decode, (image_bytes, indices),
                     fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))


def encode_latent_png(latent):
    """float [h, w, 1] in [0, 1] -> 8-bit grayscale PNG bytes (the stored compressed image)."""
    return tf.io.encode_png(tf.cast(tf.round(tf.clip_by_value(latent, 0.0, 1.0) * 255.0), tf.uint8))


class ServingModule(tf.Module):
    """Holds a baseline (or AECNN) Keras model and its classification signatures."""

    def __init__(self, model, image_size, max_image_side=MAX_IMAGE_SIDE, max_image_pixels=MAX_IMAGE_PIXELS,
                 small_size=None):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.small_size = small_size  # stage 1: image/small's side (the records' manifest small_size)
        self.label_names = tf.constant(LABELS)
        # Saved as variables: `tf.saved_model.load(path).max_image_side` reads them back.
        self.max_image_side = tf.Variable(max_image_side, dtype=tf.int64, trainable=False, name="max_image_side")
        self.max_image_pixels = tf.Variable(max_image_pixels, dtype=tf.int64, trainable=False, name="max_image_pixels")

    def limits(self):
        return {"max_image_side": int(self.max_image_side.numpy()),
                "max_image_pixels": int(self.max_image_pixels.numpy())}

    def decode(self, image_bytes):
        """string [B] -> float32 [B, size, size, 1], within the export's size limits."""
        return decode_images(image_bytes, self.image_size, self.max_image_side, self.max_image_pixels, self.small_size)

    def _probabilities(self, images):
        return tf.sigmoid(tf.cast(self.model(images, training=False)["logits"], tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def serve_bytes(self, image_bytes):
        probabilities = self._probabilities(self.decode(image_bytes))  # [B, 14]
        labels = tf.tile(self.label_names[None], [tf.shape(probabilities)[0], 1])  # [B, 14]
        return {"probabilities": probabilities, "labels": labels}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="images")])
    def predict_images(self, images):
        return {"probabilities": self._probabilities(images)}

    def signatures(self):
        return {"serving_default": self.serve_bytes, "predict_images": self.predict_images}


class AECNNServingModule(ServingModule):
    """An AECNN adds the compressed image as a product: compress and reconstruct."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def compress(self, image_bytes):
        latent = self.model.get_layer("encoder")(self.decode(image_bytes), training=False)
        latent_png = tf.map_fn(encode_latent_png, latent, fn_output_signature=tf.TensorSpec([], tf.string))
        return {"latent": latent, "latent_png_bytes": latent_png}  # [B, h, w, 1], [B]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="latent")])
    def reconstruct(self, latent):
        return {"reconstruction": self.model.get_layer("decoder")(latent, training=False)}

    def signatures(self):
        return {**super().signatures(), "compress": self.compress, "reconstruct": self.reconstruct}


def next_version(model_dir):
    """1 + the highest numeric version folder under DIR/<model_name> (1 when none)."""
    versions = [int(p.name) for p in Path(model_dir).glob("*") if re.fullmatch(r"\d+", p.name)]
    return max(versions, default=0) + 1


def export(model, export_dir, *, image_size, model_name, version=None, max_image_side=MAX_IMAGE_SIDE,
           max_image_pixels=MAX_IMAGE_PIXELS, small_size=None):
    """Saves `model` (baseline or AECNN) to export_dir/model_name/version/; returns that path.

    image_size: the run's evaluation size (stage 1: resize_size; stage 3: image_size).
    small_size: stage 1: the records' image/small side; the bytes are first resized to it as
    the sharder made image/small (None: straight to image_size).
    max_image_side, max_image_pixels: the largest image header the image_bytes signatures accept.
    Written under a temporary name and renamed, so TF Serving never sees half a version.
    """
    base = Path(export_dir) / model_name
    version = next_version(base) if version is None else int(version)
    target = base / str(version)
    if target.exists():
        raise ValueError(f"{target}: version {version} already exported (versions are immutable); pass another")
    base.mkdir(parents=True, exist_ok=True)
    is_aecnn = "encoder" in [layer.name for layer in model.layers]
    module = (AECNNServingModule if is_aecnn else ServingModule)(model, image_size, max_image_side, max_image_pixels,
                                                                 small_size)
    temporary = tempfile.mkdtemp(dir=base, prefix=f".{version}-")  # not numeric: Serving ignores it
    try:
        tf.saved_model.save(module, temporary, signatures=module.signatures())
        (Path(temporary) / LIMITS_FILE).parent.mkdir()
        (Path(temporary) / LIMITS_FILE).write_text(json.dumps(module.limits(), indent=1) + "\n")
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target
