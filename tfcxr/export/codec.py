"""The compressed image as a product of its own: image <-> 8-bit latent PNG, and classification
straight from the latent PNG, with a stage-3 AECNN (or a stage-2 autoencoder for the codec).

Geometry (a choice): an image is compressed at its own resolution rounded down to a multiple
of COMPRESSION (1024x1024 -> a 256x256 latent: 16x fewer pixels), or at size x size when
asked. Own resolution is the scale stage 3 trains at (random 896 crops of the unresized
1024 originals); size=896 gives the stage-3 evaluation geometry instead. The encoder and
decoder are fully convolutional, and the classifier pools globally, so both work.
"""

import tensorflow as tf

from tfcxr.constants import COMPRESSION
from tfcxr.models import CLASSIFIER, NORMALIZATION
from tfcxr.models.compression import to_uint8


class CodecError(ValueError):
    """Bad input for the codec: the message names the file and the problem.

    (Image files are read by tfcxr.data.image_limits.read_gray, which raises its ImageFileError.)
    """


def encode_png(pixels):
    """uint8 [H, W, 1] -> PNG bytes."""
    return tf.io.encode_png(pixels).numpy()


def fit(image, size=None):
    """uint8 [H, W, 1] -> [size, size, 1] or [H - H % 4, W - W % 4, 1] (antialiased, rounded)."""
    height, width = image.shape[:2]
    target = (size, size) if size else (height - height % COMPRESSION, width - width % COMPRESSION)
    if target[0] % COMPRESSION or min(target) < COMPRESSION:
        raise CodecError(f"cannot compress to {target[1]}x{target[0]}: sides must be multiples of {COMPRESSION}")
    if target == (height, width):
        return image
    return to_uint8(tf.image.resize(tf.cast(image, tf.float32) / 255.0, target, antialias=True))


def compress(encoder, image):
    """uint8 [H, W, 1] (H, W multiples of 4) -> the 8-bit latent, uint8 [H/4, W/4, 1]."""
    latent = encoder(tf.cast(image, tf.float32)[None] / 255.0, training=False)  # [1, H/4, W/4, 1]
    return to_uint8(latent)[0]


def psnr(image, reconstruction):
    """uint8 [H, W, 1] pair -> PSNR (dB) of the 8-bit images (tf.image.psnr, max_val 255)."""
    return float(tf.image.psnr(tf.cast(image, tf.float32), tf.cast(reconstruction, tf.float32), 255.0))


def reconstruct(decoder, latent):
    """uint8 latent [h, w, 1] -> uint8 image [4h, 4w, 1]."""
    return to_uint8(decoder(tf.cast(latent, tf.float32)[None] / 255.0, training=False))[0]


def classify(aecnn, latent):
    """uint8 latent [h, w, 1] -> the 14 probabilities, through the AECNN's normalization and classifier."""
    normalized = aecnn.get_layer(NORMALIZATION)(tf.cast(latent, tf.float32)[None] / 255.0)  # [1,h,w,3]
    logits = aecnn.get_layer(CLASSIFIER)(normalized, training=False)  # [1, 14]
    return tf.sigmoid(tf.cast(logits, tf.float32))[0].numpy()


def parts(model, names, path):
    """The named sub-models of a loaded model, or a CodecError saying what the file lacks."""
    present = [layer.name for layer in model.layers]
    missing = [name for name in names if name not in present]
    if missing:
        raise CodecError(f"{path}: has no {', '.join(missing)} (needs a stage-3 AECNN"
                         f"{'' if CLASSIFIER in names else ' or a stage-2 autoencoder'})")
    return [model.get_layer(name) for name in names]

