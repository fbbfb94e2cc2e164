"""--mode=export: a SavedModel in TF Serving's layout, DIR/<model_name>/<version>/, with the
signatures of what the model does (a classifier, a codec, or both: the AECNN).

Classifiers (baseline, AECNN):
  serving_default  image_bytes string [None] (PNG or JPEG, any size, gray / RGB / RGBA)
                   -> probabilities float32 [None, L], labels string [None, L]
  predict_images   images float32 [None, H, W, 1] in [0, 1] -> probabilities
Codecs (autoencoder, AECNN):
  compress         image_bytes -> latent float32 [None, h, w, 1], latent_png_bytes string [None]
                   (the 8-bit latent as PNG; `_bytes`: TF Serving's REST API returns it as {"b64": ...});
                   a codec alone serves it as serving_default too, each image at its own size
                   cropped to multiples of 4 (one size per request); an AECNN at its evaluation
                   size (the latent its serving_default classifies)
  reconstruct      latent float32 [None, h, w, 1] in [0, 1] -> reconstruction [None, 4h, 4w, 1]

Images whose PNG / JPEG header declares more than max_image_side pixels a side or
max_image_pixels in all (set at export, recorded as the SavedModel's variables of those names
and in assets.extra/image_limits.json) fail with InvalidArgumentError before any pixel is
decoded (tfcxr/data/image_limits.py); so do bytes of any other format and PNGs whose first
chunk is not IHDR. The float inputs are held to the same limits by their shape, before any
work: predict_images' images, and reconstruct's latent by the reconstruction it asks for
(4h x 4w). Bytes are decoded to one 8-bit gray channel as the sharder does, and (but for a
codec alone's compress) resized to the run's evaluation size exactly as evaluation sees them:
image/small inputs (small_size) first to image/small as the sharder made it
(tfcxr/data/pixels.py), then the input pipeline's resize; originals the pipeline's resize.
`labels` repeats the L label names (the records' manifest's) per image, so every output has the
batch dimension TF Serving's row ("instances") format needs.
"""

import json
import re

import tensorflow as tf

from tfcxr.constants import COMPRESSION, LABELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.data import image_limits, pipeline, pixels
from tfcxr.export import codec
from tfcxr import storage
from tfcxr.storage import atomic_directory
from tfcxr.models import DECODER, ENCODER, spec_of
from tfcxr.models.compression import to_uint8

IMAGE_BYTES = "image_bytes"
LIMITS_FILE = "assets.extra/image_limits.json"  # beside the SavedModel, where TF Serving keeps extras


def decode_image(image_bytes, size, index=0, max_side=MAX_IMAGE_SIDE, max_pixels=MAX_IMAGE_PIXELS, small_size=None):
    """One PNG / JPEG (any mode or bit depth) -> float32 [size, size, 1] in [0, 1].

    Gray as the sharder makes it (pixels.decode_gray_tf); small_size (stage 1): first resized
    as the sharder made image/small (pixels.resize_tf); then the same antialiased resize,
    rounded to 8 bits, as the pipeline's evaluation images: the pixels evaluation sees.
    Bytes of anything else, a PNG whose first chunk is not IHDR, or a header declaring more than
    the limits, fail with InvalidArgumentError naming the input and the index, before decoding.
    """
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
    return tf.io.encode_png(to_uint8(latent))


class ServingModule(tf.Module):
    """A Keras model, the size its image_bytes are decoded to, and the size limits it enforces."""

    def __init__(self, model, image_size, max_image_side=MAX_IMAGE_SIDE, max_image_pixels=MAX_IMAGE_PIXELS,
                 small_size=None, label_names=LABELS):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.small_size = small_size  # image/small inputs: its side (the records' manifest small_size)
        self.label_names = tf.constant(label_names)
        # Saved as variables: `tf.saved_model.load(path).max_image_side` reads them back.
        self.max_image_side = tf.Variable(max_image_side, dtype=tf.int64, trainable=False, name="max_image_side")
        self.max_image_pixels = tf.Variable(max_image_pixels, dtype=tf.int64, trainable=False, name="max_image_pixels")

    def limits(self):
        return {"max_image_side": int(self.max_image_side.numpy()),
                "max_image_pixels": int(self.max_image_pixels.numpy())}

    def decode(self, image_bytes):
        """string [B] -> float32 [B, size, size, 1], within the export's size limits."""
        return decode_images(image_bytes, self.image_size, self.max_image_side, self.max_image_pixels, self.small_size)

    def within_limits(self, tensor, name, scale=1):
        """A float input [B, H, W, C], passed on once its shape (x scale: a latent's reconstruction) is
        within the export's size limits; InvalidArgumentError before any work otherwise."""
        check = image_limits.assert_shape_within_limits(tensor, self.max_image_side, self.max_image_pixels, name,
                                                        scale)
        with tf.control_dependencies([check]):
            return tf.identity(tensor)

    def signatures(self):
        return {}


class ClassifierModule(ServingModule):
    """Probabilities and label names of encoded images, or of decoded ones."""

    def _probabilities(self, images):
        return tf.sigmoid(tf.cast(self.model(images, training=False)["logits"], tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def serve_bytes(self, image_bytes):
        probabilities = self._probabilities(self.decode(image_bytes))  # [B, L]
        labels = tf.tile(self.label_names[None], [tf.shape(probabilities)[0], 1])  # [B, L]
        return {"probabilities": probabilities, "labels": labels}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="images")])
    def predict_images(self, images):
        return {"probabilities": self._probabilities(self.within_limits(images, "images"))}

    def signatures(self):
        return {**super().signatures(), "serving_default": self.serve_bytes, "predict_images": self.predict_images}


class CodecModule(ServingModule):
    """The compressed image as a product: compress (also serving_default of a codec alone) and reconstruct.

    A codec alone compresses each image at its own size, cropped to multiples of COMPRESSION
    (codec.decode_at_own_size: one size per request); an AECNN at its evaluation size, the latent
    its serving_default classifies (own_size False)."""

    own_size = True

    def decode_to_compress(self, image_bytes):
        """string [B] -> float32 [B, H, W, 1]: at each image's own size, or as self.decode (own_size False)."""
        if self.own_size:
            return codec.decode_at_own_size(image_bytes, self.max_image_side, self.max_image_pixels, IMAGE_BYTES)
        return self.decode(image_bytes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def compress(self, image_bytes):
        latent = self.model.get_layer(ENCODER)(self.decode_to_compress(image_bytes), training=False)
        latent_png = tf.map_fn(encode_latent_png, latent, fn_output_signature=tf.TensorSpec([], tf.string))
        return {"latent": latent, "latent_png_bytes": latent_png}  # [B, h, w, 1], [B]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="latent")])
    def reconstruct(self, latent):
        latent = self.within_limits(latent, "latent", scale=COMPRESSION)  # [B, h, w, 1] -> [B, 4h, 4w, 1]
        return {"reconstruction": self.model.get_layer(DECODER)(latent, training=False)}

    def signatures(self):
        return {"serving_default": self.compress, **super().signatures(), "compress": self.compress,
                "reconstruct": self.reconstruct}


class AECNNServingModule(ClassifierModule, CodecModule):
    """Both: classification is the AECNN's serving_default; compress gives the latent it classifies."""

    own_size = False


# The serving module of each kind of model (its spec's task). A stage names its own (tfcxr/stages.py).
SERVING_MODULES = {"baseline": ClassifierModule, "autoencoder": CodecModule, "aecnn": AECNNServingModule}


def serving_module(model) -> type[ServingModule]:
    """The ServingModule class of what `model` says it is (its spec's task)."""
    task = spec_of(model)["task"]
    if task not in SERVING_MODULES:
        raise ValueError(f"{model.name}: a {task} alone is not exported (one of {', '.join(SERVING_MODULES)})")
    return SERVING_MODULES[task]


def next_version(model_dir):
    """1 + the highest numeric version folder under DIR/<model_name> (1 when none)."""
    names = [storage.name(path) for path in storage.glob(storage.join(model_dir, "*"))]
    versions = [int(name) for name in names if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


def export(model, export_dir, *, image_size: int, model_name: str, version: int | None = None,
           max_image_side: int = MAX_IMAGE_SIDE, max_image_pixels: int = MAX_IMAGE_PIXELS,
           small_size: int | None = None, label_names=LABELS, module: type[ServingModule] | None = None):
    """Saves `model` (baseline, autoencoder or AECNN) to export_dir/model_name/version/; returns that path.

    image_size: the run's evaluation size (its inputs' eval_size).
    small_size: image/small inputs: the records' image/small side; the bytes are first resized to it
    as the sharder made image/small (None: straight to image_size).
    label_names: the classifier's labels, in logit order (the records' manifest's).
    max_image_side, max_image_pixels: the largest image header the image_bytes signatures accept.
    Written under a temporary name and renamed, so TF Serving never sees half a version (in a
    bucket, export_dir may be a URL, the files are copied into the version folder one by one).
    """
    base = storage.join(export_dir, model_name)
    version = next_version(base) if version is None else int(version)
    target = storage.join(base, str(version))
    if storage.exists(target):
        raise ValueError(f"{target}: version {version} already exported (versions are immutable); pass another")
    storage.makedirs(base)
    module = (module or serving_module(model))(model, image_size, max_image_side, max_image_pixels, small_size,
                                               label_names)
    with atomic_directory(target) as temporary:  # a hidden name, not numeric: Serving ignores it
        tf.saved_model.save(module, str(temporary), signatures=module.signatures())
        storage.write_text(storage.join(temporary, LIMITS_FILE), json.dumps(module.limits(), indent=1) + "\n")
    return target
