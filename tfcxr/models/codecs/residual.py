"""The residual codec (--codec=residual): bicubic down + a learned correction, bicubic up + a learned detail.

The codec contract of codecs/base.py, as the paper's codec (codecs/paper.py).

    latent         = round8(clip(bicubic_down(image) + correction(image)))
    reconstruction = clip(bicubic_up(latent) + depth_to_space(detail(latent)))

The latent stays a bicubic thumbnail plus a small learned correction: a viewable radiograph.
All learned convolutions run at the latent's resolution (the encoder reads the image through
a COMPRESSION x COMPRESSION stride-COMPRESSION convolution), so a 1024 image costs what a 256
one does in the paper's encoder. The last convolution of each branch starts at zero: an
untrained codec is exactly bicubic resizing through an 8-bit thumbnail (the thumbnail clipped
to [0, 1] and rounded as a PNG stores it: tfcxr.evaluate.reconstruction's bicubic_8bit), and
training can only move it from there.

One latent everywhere: round8 rounds the latent to 8 bits in every forward pass (training,
evaluation, serving), with a straight-through gradient, so the float latent the encoder returns
IS the 8-bit latent a PNG stores (k / 255; a graph optimiser may leave it one float32 ulp away,
never another level). The decoder learns from it, stage 3's classifier trains and is evaluated
on it, serving_default classifies it, and tools/cxr_codec.py classify reads the same levels back
from the PNG (evaluation's autoencoder and autoencoder_8bit rows coincide). The paper's codec
keeps the reference's float latent (no rounding: fidelity to the paper).
"""

import dataclasses

import keras
import tensorflow as tf
from keras import layers

from tfcxr.constants import COMPRESSION, LATENT_LEVELS
from tfcxr.models.codecs.base import Codec, register_codec
from tfcxr.models.layers import PixelShuffle, clipped_relu


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
    """x -> round(x * 255) / 255 (the 8-bit level an 8-bit PNG stores) in every forward pass; the
    gradient passes straight through (identity), in training and at inference alike."""

    def __init__(self, **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})

    def call(self, inputs):
        rounded = tf.round(inputs * LATENT_LEVELS) / LATENT_LEVELS
        return rounded + (inputs - tf.stop_gradient(inputs))  # forward: `rounded` itself (x - x is 0)


# The flips a decode averages over, in order: none, left-right, up-down, both (axes of [B,H,W,C]).
FLIPS = ((), (2,), (1,), (1, 2))


@keras.saving.register_keras_serializable(package="tfcxr")
class FlipEnsemble(layers.Layer):
    """latent [B,h,w,1] -> detail [B,4h,4w,1]: `branch` in training; at inference the mean of `branch` over the
    first `flips` of FLIPS of the latent, each output flipped back (a geometric self-ensemble: training sees
    every flip, so each is an equally good estimate and their errors partly cancel). flips=1: `branch` alone."""

    def __init__(self, branch, flips=1, **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        if flips not in (1, 2, 4):
            raise ValueError(f"flips must be 1, 2 or 4, not {flips!r}")
        self.branch, self.flips = branch, flips

    def build(self, input_shape):
        self.branch.build(input_shape)
        self.built = True

    def call(self, latent, training=None):
        if training or self.flips == 1:
            return self.branch(latent, training=training)
        details = []
        for axes in FLIPS[:self.flips]:
            detail = self.branch(tf.reverse(latent, axes) if axes else latent, training=False)
            details.append(tf.reverse(detail, axes) if axes else detail)
        return tf.add_n(details) / float(self.flips)

    def compute_output_shape(self, input_shape):
        return self.branch.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "branch": keras.saving.serialize_keras_object(self.branch), "flips": self.flips}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "branch": keras.saving.deserialize_keras_object(config["branch"])})


@register_codec
class ResidualCodec(Codec):
    """Bicubic + learned residuals; capacity in Params (--codec_width, --codec_encoder_depth, --codec_decoder_depth)."""

    kind = "residual"
    rounds_latent = True  # its latent is 8-bit in every forward pass (StraightThroughRound)
    validation = "full"  # used on whole radiographs, so judged, scheduled and picked on them (not 128 resizes)
    # configs/stage2_residual.cfg's budget: 45,000 steps of 128 64-px patches (benchmarks/results/codec_ablation.md)
    recommended_pixels = 45_000 * 128 * 64**2

    @dataclasses.dataclass(frozen=True)
    class Params:
        width: int = 32  # channels of every hidden convolution
        encoder_depth: int = 2  # convolutions of the encoder's correction branch (>= 2)
        decoder_depth: int = 4  # 3x3 convolutions of the decoder's detail branch (>= 2)
        skips: int = 0  # 1: each hidden 3x3 convolution whose input has `width` channels adds it (x + conv(x))
        decode_flips: int = 1  # 1, 2 or 4: inference decodes the latent's flips and averages (FlipEnsemble)

        def __post_init__(self):
            if self.width < 1 or self.encoder_depth < 2 or self.decoder_depth < 2 or self.skips not in (0, 1) \
                    or self.decode_flips not in (1, 2, 4):
                raise ValueError(f"--codec=residual needs --codec_width >= 1, --codec_encoder_depth and "
                                 f"--codec_decoder_depth >= 2, --codec_skips 0 or 1, --codec_decode_flips 1, 2 or 4; "
                                 f"got {dataclasses.asdict(self)}")

    def hidden(self, x, name):
        """A hidden 3x3 convolution of width channels, ReLU; with skips, x + it when x has width channels."""
        y = layers.Conv2D(self.params.width, 3, padding="same", activation="relu", name=name)(x)
        return layers.Add(name=f"{name}_skip")([x, y]) if self.params.skips and x.shape[-1] == y.shape[-1] else y

    def encode(self, image):
        width, depth = self.params.width, self.params.encoder_depth
        bicubic = BicubicResize("down", name="bicubic_down")(image)  # [B,H/4,W/4,1]
        # Each latent pixel sees its own 4x4 block (a space_to_depth + 1x1 convolution), then 3x3 neighbours.
        x = layers.Conv2D(width, COMPRESSION, strides=COMPRESSION, activation="relu", name="encoder_patch")(image)
        for index in range(depth - 2):
            x = self.hidden(x, f"encoder_conv{index + 1}")  # [B,H/4,W/4,W]
        correction = layers.Conv2D(1, 3, padding="same", kernel_initializer="zeros",
                                   name="encoder_correction")(x)  # [B,H/4,W/4,1]
        latent = layers.Add(dtype="float32", name="encoder_add")([bicubic, correction])  # float32 under mixed precision
        latent = clipped_relu(name="latent_clip")(latent)
        return StraightThroughRound(name="latent_round8")(latent)

    def decode(self, latent):
        bicubic = BicubicResize("up", name="bicubic_up")(latent)  # [B,4h,4w,1]
        if self.params.decode_flips == 1:  # the layers inline: the graph (and checkpoints) of every earlier decoder
            detail = self.detail(latent)
        else:
            branch_input = keras.Input(shape=(None, None, 1), name="latent")
            branch = keras.Model(branch_input, self.detail(branch_input), name="decoder_detail_branch")
            detail = FlipEnsemble(branch, self.params.decode_flips, name="decoder_detail_flips")(latent)
        reconstruction = layers.Add(dtype="float32", name="decoder_add")([bicubic, detail])
        return clipped_relu(name="reconstruction_clip")(reconstruction)

    def detail(self, latent):
        """latent [B,h,w,1] -> the learned detail [B,4h,4w,1]: 3x3 convolutions at the latent's size, the last
        to 16 channels (zero at the start), a depth_to_space."""
        x = latent
        for index in range(self.params.decoder_depth - 1):
            x = self.hidden(x, f"decoder_conv{index + 1}")  # [B,h,w,W]
        x = layers.Conv2D(COMPRESSION**2, 3, padding="same", kernel_initializer="zeros",
                          name="decoder_detail")(x)  # [B,h,w,16]
        return PixelShuffle(COMPRESSION, dtype="float32", name="pixel_shuffle")(x)  # [B,4h,4w,1]
