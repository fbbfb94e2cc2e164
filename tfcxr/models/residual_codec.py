"""The residual codec: bicubic down + a learned correction, bicubic up + a learned detail.

The same contract as autoencoder.py (the paper's): image [B,H,W,1] in [0, 1] -> latent
[B,H/4,W/4,1] in [0, 1] -> reconstruction [B,H,W,1] in [0, 1], any side a multiple of
COMPRESSION; the sub-models are named "encoder" and "decoder", so stage 3, evaluation, the
codec tool, Grad-CAM and the export serve either codec.

    latent         = round8(clip(bicubic_down(image) + correction(image)))
    reconstruction = clip(bicubic_up(latent) + depth_to_space(detail(latent)))

The latent stays a bicubic thumbnail plus a small learned correction: a viewable radiograph.
All learned convolutions run at the latent's resolution (the encoder reads the image through
a COMPRESSION x COMPRESSION stride-COMPRESSION convolution), so a 1024 image costs what a 256
one does in the paper's encoder. The last convolution of each branch starts at zero: an
untrained codec is exactly bicubic resizing (tfcxr.evaluate.reconstruction's baseline), and
training can only move it from there. round8 is the straight-through 8-bit rounding, active
in training only: the decoder learns from the latent a PNG stores, while inference returns
the float latent (evaluation reports the float and the 8-bit latent separately).
"""

import keras
import tensorflow as tf
from keras import layers

from tfcxr.constants import COMPRESSION, LATENT_LEVELS
from tfcxr.models import autoencoder
from tfcxr.models.layers import PixelShuffle, clipped_relu
from tfcxr.models.names import DECODER, ENCODER

# Capacity of the residual codec (configurable: TrainConfig.residual_*, tfcxr.main --residual_*).
WIDTH = 32  # channels of every hidden convolution
DECODER_DEPTH = 4  # 3x3 convolutions of the decoder's detail branch (>= 2)
ENCODER_DEPTH = 2  # convolutions of the encoder's correction branch (>= 2)
AUTOENCODERS = ("paper", "residual")


@keras.saving.register_keras_serializable(package="tfcxr")
class BicubicResize(layers.Layer):
    """[B,H,W,C] -> [B,H/4,W/4,C] antialiased bicubic ("down"), or [B,4H,4W,C] bicubic ("up").

    Exactly the resizes of tfcxr.models.compression.resize_round_trip, in float32.
    """

    def __init__(self, direction, **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', not {direction!r}")
        self.direction = direction

    def call(self, images):
        size = tf.shape(images)[1:3]
        if self.direction == "down":
            return tf.image.resize(images, size // COMPRESSION, "bicubic", antialias=True)
        return tf.image.resize(images, size * COMPRESSION, "bicubic")

    def compute_output_shape(self, input_shape):
        scale = (lambda n: n // COMPRESSION) if self.direction == "down" else (lambda n: n * COMPRESSION)
        return (input_shape[0], *(None if n is None else scale(n) for n in input_shape[1:3]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "direction": self.direction}


@keras.saving.register_keras_serializable(package="tfcxr")
class StraightThroughRound(layers.Layer):
    """Training: x -> round(x * 255) / 255 forward, identity gradient (straight-through). Inference: x."""

    def __init__(self, **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})

    def call(self, inputs, training=False):
        if not training:
            return inputs
        rounded = tf.round(inputs * LATENT_LEVELS) / LATENT_LEVELS
        return inputs + tf.stop_gradient(rounded - inputs)


def check_capacity(width, depth, part):
    if width < 1 or depth < 2:
        raise ValueError(f"residual codec {part}: needs width >= 1 and depth >= 2, got width {width}, depth {depth}")


def build_encoder(width=WIDTH, depth=ENCODER_DEPTH):
    """image [B,H,W,1] in [0, 1] -> latent [B,H/4,W/4,1] in [0, 1]."""
    check_capacity(width, depth, ENCODER)
    image = keras.Input(shape=(None, None, 1), name="image")
    bicubic = BicubicResize("down", name="bicubic_down")(image)  # [B,H/4,W/4,1]
    # Each latent pixel sees its own 4x4 block (a space_to_depth + 1x1 convolution), then 3x3 neighbours.
    x = layers.Conv2D(width, COMPRESSION, strides=COMPRESSION, activation="relu", name="encoder_patch")(image)
    for index in range(depth - 2):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"encoder_conv{index + 1}")(x)
    correction = layers.Conv2D(1, 3, padding="same", kernel_initializer="zeros",
                               name="encoder_correction")(x)  # [B,H/4,W/4,1]
    latent = layers.Add(dtype="float32", name="encoder_add")([bicubic, correction])  # float32 under mixed precision
    latent = clipped_relu(name="latent_clip")(latent)
    latent = StraightThroughRound(name="latent_round8")(latent)
    return keras.Model(image, latent, name=ENCODER)


def build_decoder(width=WIDTH, depth=DECODER_DEPTH):
    """latent [B,h,w,1] -> reconstruction [B,4h,4w,1] in [0, 1]."""
    check_capacity(width, depth, DECODER)
    latent = keras.Input(shape=(None, None, 1), name="latent")
    bicubic = BicubicResize("up", name="bicubic_up")(latent)  # [B,4h,4w,1]
    x = latent
    for index in range(depth - 1):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"decoder_conv{index + 1}")(x)  # [B,h,w,W]
    x = layers.Conv2D(COMPRESSION**2, 3, padding="same", kernel_initializer="zeros",
                      name="decoder_detail")(x)  # [B,h,w,16]
    detail = PixelShuffle(COMPRESSION, dtype="float32", name="pixel_shuffle")(x)  # [B,4h,4w,1]
    reconstruction = layers.Add(dtype="float32", name="decoder_add")([bicubic, detail])
    return keras.Model(latent, clipped_relu(name="reconstruction_clip")(reconstruction), name=DECODER)


def build_codec(kind: str = "paper", width: int = WIDTH, decoder_depth: int = DECODER_DEPTH,
                encoder_depth: int = ENCODER_DEPTH) -> tuple[keras.Model, keras.Model]:
    """(encoder, decoder) of --autoencoder=paper (autoencoder.py; no knobs) or residual."""
    if kind == "paper":
        return autoencoder.build_encoder(), autoencoder.build_decoder()
    if kind == "residual":
        return build_encoder(width, encoder_depth), build_decoder(width, decoder_depth)
    raise ValueError(f"--autoencoder={kind}: expected one of {', '.join(AUTOENCODERS)}")


def codec_kind(encoder):
    """"residual" or "paper": the codec of an encoder built here or loaded from a .keras file."""
    return "residual" if any(isinstance(layer, BicubicResize) for layer in encoder.layers) else "paper"
