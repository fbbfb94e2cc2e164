"""The compressed image as a product of its own: image <-> 8-bit latent PNG, and classification
straight from the latent PNG, with a stage-3 AECNN (or a stage-2 autoencoder for the codec).

Geometry (a choice): an image is compressed at its own size, cropped to multiples of
COMPRESSION (compression.crop_to_codec: the top-left part, the last H % 4 rows and W % 4
columns dropped, so every pixel keeps its coordinates; 1024x1024 -> a 256x256 latent: 16x
fewer pixels), or resized to size x size when asked, exactly as evaluation and serving_default
resize (pipeline.resize_uint8). Own size is the scale stage 3 trains at (random 896 crops of
the unresized 1024 originals) and what a codec alone is evaluated and served at; size=896 gives
the stage-3 evaluation geometry instead, the latent an AECNN's serving_default classifies. The
encoder and decoder are fully convolutional, and the classifier pools globally, so both work.
"""

import tensorflow as tf

from tfcxr.constants import COMPRESSION
from tfcxr.data import image_limits, pipeline, pixels
from tfcxr.models import CLASSIFIER, NORMALIZATION
from tfcxr.models.compression import crop_to_codec, to_uint8


class CodecError(ValueError):
    """Bad input for the codec: the message names the file and the problem.

    (Image files are read by tfcxr.data.image_limits.read_gray, which raises its ImageFileError.)
    """


def encode_png(pixels):
    """uint8 [H, W, 1] -> PNG bytes."""
    return tf.io.encode_png(pixels).numpy()


def fit(image, size=None):
    """uint8 [H, W, 1] -> [size, size, 1] (pipeline.resize_uint8: the evaluation's resize), or
    crop_to_codec's [H - H % 4, W - W % 4, 1]."""
    height, width = image.shape[:2]
    target = (size, size) if size else (height - height % COMPRESSION, width - width % COMPRESSION)
    if target[0] % COMPRESSION or min(target) < COMPRESSION:
        raise CodecError(f"cannot compress to {target[1]}x{target[0]}: sides must be multiples of {COMPRESSION}")
    if size:
        return pipeline.resize_uint8(image, size)
    return crop_to_codec(image)


def decode_at_own_size(image_bytes, max_side, max_pixels, name="image_bytes"):
    """string [B] -> float32 [B, H, W, 1] in [0, 1]: each PNG / JPEG decoded to gray as the sharder does
    (pixels.decode_gray_tf) at its own size, cropped to multiples of COMPRESSION (crop_to_codec).

    In a graph (the compress signature). Bytes beyond the size limits (or not PNG / JPEG) fail with
    InvalidArgumentError before decoding, as image_limits.assert_within_limits words it; so does an image
    under COMPRESSION pixels a side, and a request whose images differ in size after the crop (a batch
    holds one size: send such images in separate requests).
    """
    def decode(pair):
        data, index = pair
        within = image_limits.assert_within_limits(data, index, max_side, max_pixels, name=name)
        with tf.control_dependencies([within]):
            image = crop_to_codec(pixels.decode_gray_tf(data))  # uint8 [H - H % 4, W - W % 4, 1]
        size = tf.shape(image)[:2]
        large_enough = tf.debugging.Assert(tf.reduce_all(size >= COMPRESSION), [tf.strings.format(
            f"{name}: image {{}} is too small to compress: under {COMPRESSION} pixels a side", [index])])
        with tf.control_dependencies([large_enough]):
            return tf.RaggedTensor.from_tensor(image, ragged_rank=1), size

    indices = tf.range(tf.size(image_bytes))
    images, sizes = tf.map_fn(decode, (image_bytes, indices), fn_output_signature=(
        tf.RaggedTensorSpec([None, None, 1], tf.uint8, ragged_rank=1), tf.TensorSpec([2], tf.int32)))
    differs = tf.reduce_any(sizes != sizes[:1], axis=1)  # [B]
    first = tf.argmax(tf.cast(differs, tf.int32))  # the first image of another size than image 0
    one_size = tf.debugging.Assert(tf.logical_not(tf.reduce_any(differs)), [tf.strings.format(
        f"{name}: image {{}} is {{}}x{{}} and image 0 {{}}x{{}} once cropped to multiples of {COMPRESSION}: "
        "a request holds images of one size; send the others separately",
        [first, sizes[first, 1], sizes[first, 0], sizes[0, 1], sizes[0, 0]])])
    with tf.control_dependencies([one_size]):
        return pipeline.to_float(images.to_tensor())  # [B, H, W, 1]


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

