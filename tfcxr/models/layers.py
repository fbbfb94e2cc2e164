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


# PyTorch's BatchNorm2d(momentum=0.1) in Keras's convention (moving = moving * momentum + batch * (1 - momentum)).
TORCH_BATCHNORM_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="tfcxr")
class TorchBatchNormalization(layers.BatchNormalization):
    """BatchNormalization that trains like PyTorch's BatchNorm2d, in one fused kernel on NHWC.

    In training, on a 4-D NHWC input without mask or renorm:
    - the moving variance takes the unbiased batch variance (x n / (n - 1), n = values per channel
      in the batch, all replicas' when synchronized), as PyTorch's running_var; Keras takes the biased;
    - unsynchronized, normalization and statistics are one FusedBatchNormV3 op forward and one
      backward (Keras 3 builds them from ~10 separate ops; docs/performance.md has the step times);
      synchronized, the batch moments are
      all-reduced over replicas as Keras's.
    Inference, and every other input, is Keras's layer unchanged: y = (x - moving_mean) /
    sqrt(moving_variance + epsilon) * gamma + beta. Pass momentum=TORCH_BATCHNORM_MOMENTUM for
    PyTorch's default.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm or len(inputs.shape) != 4 \
                or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if self.synchronized:
            values = tf.cast(inputs, tf.float32)
            mean, variance = ops.moments(values, axes=[0, 1, 2], synchronized=True)  # over the global batch
            replicas = tf.distribute.get_replica_context().num_replicas_in_sync
            count = tf.cast(tf.reduce_prod(tf.shape(values)[:3]) * replicas, tf.float32)
            unbiased_variance = variance * count / tf.maximum(count - 1.0, 1.0)
            outputs = tf.nn.batch_normalization(values, mean, variance, beta, gamma, self.epsilon)
        else:  # float16 / bfloat16 inputs stay so, statistics in float32
            outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + unbiased_variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)
