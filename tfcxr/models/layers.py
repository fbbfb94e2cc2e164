"""The custom layers of AECNN, registered so .keras files load without custom_objects."""

import keras
import tensorflow as tf
from keras import layers, ops

from tfcxr.constants import IMAGENET_MEAN, IMAGENET_STD


def torch_initializers(fan_in, bias_center=0.0):
    """Initializers of PyTorch's nn.Conv2d / nn.Linear (the reference's layers), not Keras's glorot / zeros.

    PyTorch: weight ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and bias ~ the
    same U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = inputs per output (in_channels * kh * kw).
    VarianceScaling(1/3, "fan_in", "uniform") has limit sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in).
    Use as layers.Conv2D(..., **torch_initializers(fan_in)). `bias_center` shifts the bias interval
    (PyTorch: 0).
    """
    bound = 1.0 / fan_in**0.5
    return {"kernel_initializer": keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            "bias_initializer": keras.initializers.RandomUniform(bias_center - bound, bias_center + bound)}


def clipped_relu(name):
    """ClippedReLU = min(max(0, x), 1), computed in float32 even under mixed precision.

    relu then clip_by_value: the gradient is 1 inside (0, 1) and exactly 0 outside [0, 1].
    """
    return layers.ReLU(max_value=1.0, dtype="float32", name=name)


@keras.saving.register_keras_serializable(package="tfcxr")
class PixelShuffle(layers.Layer):
    """PyTorch's PixelShuffle(r) as tf.nn.depth_to_space: [B,H,W,C*r*r] -> [B,H*r,W*r,C].

    For C = 1 (our decoder) both give out[h*r+i, w*r+j] = in[h, w, i*r+j]. For C > 1 the
    channel orders differ (PyTorch: c*r*r + i*r + j; depth_to_space: (i*r + j)*C + c).
    """

    def __init__(self, block_size, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.block_size)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="tfcxr")
class ImageNetNormalization(layers.Layer):
    """Image in [0, 1] -> (x - IMAGENET_MEAN) / IMAGENET_STD; grayscale is repeated to 3 channels."""

    def call(self, images):
        if images.shape[-1] == 1:
            images = ops.repeat(images, 3, axis=-1)  # [B,H,W,1] -> [B,H,W,3]
        mean = ops.convert_to_tensor(IMAGENET_MEAN, dtype=images.dtype)
        std = ops.convert_to_tensor(IMAGENET_STD, dtype=images.dtype)
        return (images - mean) / std
