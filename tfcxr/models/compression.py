"""The compressed domain's reference operations, shared by training, evaluation, export and tools.

to_uint8           [0, 1] image -> uint8: round(clip(x, 0, 1) * 255), what an 8-bit PNG stores
quantize           the same 256 levels kept as floats in [0, 1]
thumbnail          plain (antialiased) resizing to the latent's size, clipped (and rounded) as stored
resize_round_trip  a thumbnail resized back: the baseline every codec must beat
crop_to_codec      an image's top-left part whose sides are multiples of COMPRESSION: what a codec
                   compresses of an image at its own size

(tfcxr.storage.to_uint8 is the NumPy twin of to_uint8.)
"""

import tensorflow as tf

from tfcxr.constants import COMPRESSION, LATENT_LEVELS


def levels(images):
    """[0, 1] image -> round(clip(x, 0, 1) * 255): the 8-bit level of each pixel, in the input's float dtype."""
    return tf.round(tf.clip_by_value(images, 0.0, 1.0) * LATENT_LEVELS)


def to_uint8(images):
    """[0, 1] image -> uint8 of the same shape: the pixels an 8-bit PNG stores."""
    return tf.cast(levels(images), tf.uint8)


def quantize(latent):
    """[0, 1] image -> the nearest of 256 levels: exactly what an 8-bit PNG stores."""
    return levels(latent) / LATENT_LEVELS


def thumbnail(images, method, quantized=False):
    """[B,H,W,1] -> [B,H/4,W/4,1]: antialiased resizing, clipped to [0, 1] as a stored thumbnail is (a bicubic
    one overshoots at sharp edges), and with `quantized` also rounded to 8 bits."""
    small = tf.image.resize(images, tf.shape(images)[1:3] // COMPRESSION, method, antialias=True)
    return quantize(small) if quantized else tf.clip_by_value(small, 0.0, 1.0)


def resize_round_trip(images, method, quantized=False):
    """[B,H,W,1] -> its thumbnail [B,H/4,W/4,1] -> [B,H,W,1] clipped to [0, 1]."""
    small = thumbnail(images, method, quantized)
    return tf.clip_by_value(tf.image.resize(small, tf.shape(images)[1:3], method), 0.0, 1.0)  # [B,H,W,1]


def crop_to_codec(image):
    """[H, W, C] -> [H - H % COMPRESSION, W - W % COMPRESSION, C]: the top-left part (the last H % 4
    rows and W % 4 columns dropped), whose pixels keep their coordinates in the reconstruction."""
    size = tf.shape(image)[:2]
    return image[: size[0] - size[0] % COMPRESSION, : size[1] - size[1] % COMPRESSION]
