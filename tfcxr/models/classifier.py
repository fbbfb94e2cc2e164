"""The classifier (DenseNet121 + global average pooling + 14 logits) and the D121 BL5 baseline."""

import os

import keras
import tensorflow as tf
from keras import layers

from tfcxr.constants import NUM_LABELS
from tfcxr.models.layers import (TORCH_BATCHNORM_MOMENTUM, ImageNetNormalization, TorchBatchNormalization,
                                 torch_initializers)

# The file Keras caches in ~/.keras/models/ for DenseNet121(weights="imagenet", include_top=False).
NOTOP_WEIGHTS = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The last DenseNet121 activation, [B,H/32,W/32,1024]: the layer Grad-CAM looks at.
FEATURES = "relu"


def build_classifier(weights=None, image_size=None):
    """ImageNet-normalized image [B,H,W,3] -> logits [B,14], float32 under any precision policy.

    weights: None (random), "imagenet" (downloaded once into ~/.keras/models/), or the path of
    a local copy of NOTOP_WEIGHTS. image_size: None accepts any size (at least 32).
    """
    if weights is not None and weights != "imagenet":
        weights = os.fspath(weights)
        if not tf.io.gfile.exists(weights):
            raise FileNotFoundError(f"{weights}: DenseNet121 weights not found (a copy of {NOTOP_WEIGHTS})")
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    backbone = torch_batchnorm(_densenet121(image, weights))
    x = layers.GlobalAveragePooling2D(name="pool")(backbone.output)  # [B,1024]
    # The head starts as the reference's nn.Linear(1024, 14), not with Keras's glorot / zeros.
    logits = layers.Dense(NUM_LABELS, dtype="float32", name="logits", **torch_initializers(x.shape[-1]))(x)  # [B,14]
    return keras.Model(image, logits, name="classifier")


def _densenet121(image, weights):
    """DenseNet121 without its top on `image`, with one clear error when its weights fail."""
    if weights == "imagenet":
        try:
            return keras.applications.DenseNet121(include_top=False, weights="imagenet", input_tensor=image)
        except ValueError:
            raise
        except Exception as error:  # keras.utils.get_file raises a bare Exception on network failure
            raise RuntimeError(
                f"could not download the ImageNet DenseNet121 weights ({error}); without internet, copy "
                f"{NOTOP_WEIGHTS} into ~/.keras/models/ or pass its local path as weights="
            ) from error
    backbone = keras.applications.DenseNet121(include_top=False, weights=None, input_tensor=image)
    if weights is not None:
        try:
            backbone.load_weights(weights)
        except Exception as error:
            raise ValueError(f"{weights}: cannot load as DenseNet121 notop weights ({error})") from error
    return backbone


def torch_batchnorm(backbone):
    """`backbone` with each BatchNormalization replaced by a TorchBatchNormalization of the same
    config, weights and name but PyTorch's momentum (0.1, torchvision's DenseNet121: Keras's 0.99
    follows the batch statistics 10x slower); every other layer is reused as it is."""
    def clone(layer):
        if type(layer) is not layers.BatchNormalization:
            return layer
        return TorchBatchNormalization.from_config({**layer.get_config(), "momentum": TORCH_BATCHNORM_MOMENTUM})

    model = keras.models.clone_model(backbone, input_tensors=backbone.input, clone_function=clone)
    for old, new in zip(backbone.layers, model.layers):
        if new is not old:
            new.set_weights(old.get_weights())
    return model


def build_baseline(classifier):
    """D121 BL5: gray image [B,H,W,1] in [0, 1] -> {"logits": [B,14]}; normalizes inside."""
    image = keras.Input(shape=(*classifier.input_shape[1:3], 1), name="image")
    normalized = ImageNetNormalization(name="imagenet_normalization")(image)  # [B,H,W,3]
    logits = classifier(normalized)
    return keras.Model(image, {"logits": logits}, name="baseline")
