"""The compressed domain's two reference operations, shared by training, evaluation and tools.

quantize           [0, 1] image -> the 256 levels an 8-bit PNG stores
resize_round_trip  plain resizing to the latent's size and back: the baseline every codec must beat
"""

import tensorflow as tf

from tfcxr.constants import COMPRESSION


def quantize(latent):
    """[0, 1] image -> the nearest of 256 levels: exactly what an 8-bit PNG stores."""
    return tf.round(tf.clip_by_value(latent, 0.0, 1.0) * 255.0) / 255.0


def resize_round_trip(images, method, quantized=False):
    """[B,H,W,1] -> [B,H/4,W/4,1] (antialiased) -> [B,H,W,1] clipped to [0, 1]."""
    size = tf.shape(images)[1:3]
    small = tf.image.resize(images, size // COMPRESSION, method, antialias=True)  # [B,H/4,W/4,1]
    if quantized:
        small = quantize(small)
    return tf.clip_by_value(tf.image.resize(small, size, method), 0.0, 1.0)  # [B,H,W,1]
