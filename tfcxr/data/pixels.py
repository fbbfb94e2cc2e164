"""The sharder's pixel rules, with PIL (the sharder) and in TensorFlow ops (the SavedModel): the same 8-bit pixels.

Stage-1 evaluation reads image/small, made when sharding; stage-1 serving gets the original
bytes. Both must give the model the same pixels, so the two rules are written twice here,
side by side, and tested equal (tests/test_pixels.py, on the real radiographs too):

- Gray (sharding.to_gray): 8-bit as is; 16-bit rounded by 1/257 (0..65535 onto 0..255);
  RGB / RGBA / palette by PIL's ITU-R 601-2 luma in 16-bit fixed point, alpha dropped.
- image/small: PIL's BILINEAR resize (Pillow's Resample.c): a triangle filter whose support
  widens with the reduction (so antialiased), coefficients normalised and rounded to 22-bit
  fixed point, the horizontal pass rounded to 8 bits, then the vertical pass. Pillow 13 picks
  the order of the two passes by the image's shape; resize_pil runs them one at a time,
  horizontal first, so image/small is the same under every Pillow (for square images, such
  as ChestX-ray14's, it is what one `Image.resize` call gives).

Why two implementations and not one: the sharder resizes with PIL, several times faster per image
than TensorFlow's resize called per image (docs/performance.md), while the serving graph needs a
TensorFlow op; resize_tf reproduces PIL's pixels, which TensorFlow's own antialiased resize does
not (it differs by one gray level on a fraction of the pixels).
"""

import numpy as np
import tensorflow as tf
from PIL import Image

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 bits - 8 of pixel - 2 of headroom
LUMA = (19595, 38470, 7471)  # PIL's L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16 (ITU-R 601-2)


def resize_pil(pixels, size):
    """uint8 [H, W] -> uint8 [size, size]: PIL BILINEAR, the horizontal pass, then the vertical one."""
    image = Image.fromarray(pixels)
    image = image.resize((size, image.height), Image.Resampling.BILINEAR)  # [H, size]
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))  # [size, size]


def _coefficients(in_size, out_size):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc (triangle filter).

    -> input indices int32 [out_size, K] and their fixed-point weights int32 [out_size, K].
    The float64 arithmetic is Pillow's, operation for operation.
    """
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    support = tf.maximum(scale, 1.0)  # the triangle's support (1) times the reduction
    taps = 2 * tf.cast(tf.math.ceil(support), tf.int32) + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale  # [out]
    first = tf.maximum(tf.cast(tf.floor(center - support + 0.5), tf.int32), 0)  # [out]
    stop = tf.minimum(tf.cast(tf.floor(center + support + 0.5), tf.int32), in_size)  # [out]
    index = first[:, None] + tf.range(taps)[None, :]  # [out, K]
    distance = (tf.cast(index, tf.float64) - center[:, None] + 0.5) * (1.0 / support)
    weight = tf.where(index < stop[:, None], tf.maximum(1.0 - tf.abs(distance), 0.0), 0.0)
    weight = weight / tf.reduce_sum(weight, axis=1, keepdims=True)
    fixed = tf.cast(tf.floor(0.5 + weight * 2.0**PRECISION_BITS), tf.int32)
    return tf.minimum(index, in_size - 1), fixed


def _resample(image, size, axis):
    """One pass of PIL's BILINEAR along `axis` (1: horizontal, 0: vertical) of uint8 [H, W]."""
    index, weight = _coefficients(tf.shape(image)[axis], size)
    taps = tf.cast(tf.gather(image, index, axis=axis), tf.int32)  # axis 1: [H, size, K]; axis 0: [size, K, W]
    if axis == 1:
        total = tf.reduce_sum(taps * weight, axis=2)  # [H, size]
    else:
        total = tf.reduce_sum(taps * weight[:, :, None], axis=1)  # [size, W]
    rounded = tf.bitwise.right_shift(total + (1 << (PRECISION_BITS - 1)), PRECISION_BITS)
    return tf.cast(tf.clip_by_value(rounded, 0, 255), tf.uint8)


def resize_tf(image, size):
    """uint8 [H, W, 1] -> uint8 [size, size, 1]: resize_pil in TensorFlow ops (for the SavedModel)."""
    horizontal = _resample(image[..., 0], size, axis=1)  # [H, size]
    return _resample(horizontal, size, axis=0)[..., None]  # [size, size, 1]


def decode_gray_tf(image_bytes):
    """PNG / JPEG bytes -> uint8 [H, W, 1]: the pixels sharding.to_gray makes of them."""
    def png():
        wide = tf.cast(tf.io.decode_png(image_bytes, dtype=tf.uint16), tf.int32)  # [H, W, C]
        return (wide + 128) // 257  # 16-bit rounded onto 0..255; 8-bit PNGs (decoded as v * 257) exactly back

    def jpeg():  # libjpeg's accurate integer DCT, as PIL decodes
        return tf.cast(tf.io.decode_jpeg(image_bytes, dct_method="INTEGER_ACCURATE"), tf.int32)  # [H, W, C]

    pixels = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, png)  # [H, W, C] in 0..255

    def luma():
        red, green, blue = LUMA
        return (pixels[..., :1] * red + pixels[..., 1:2] * green + pixels[..., 2:3] * blue + 0x8000) // 65536

    gray = tf.cond(tf.shape(pixels)[-1] >= 3, luma, lambda: pixels[..., :1])  # gray (+ alpha): the gray
    return tf.cast(gray, tf.uint8)
