"""The classifier (a backbone + global average pooling + one logit per label) and the D121 BL5 baseline.

Backbones are data: BACKBONES names each trunk with its constructor, the input normalization its
weights expect and the layer Grad-CAM reads. DenseNet121 (the paper's) is the only entry; a new
backbone is one entry (and --backbone=<name>). A classifier's backbone and labels are its spec.
"""

import dataclasses
import os
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf
from keras import layers

from tfcxr.constants import LABELS
from tfcxr.models.described import DescribedModel, spec_of
from tfcxr.models.layers import (TORCH_BATCHNORM_MOMENTUM, ImageNetNormalization, TorchBatchNormalization,
                                 torch_initializers)
from tfcxr.models.names import CLASSIFIER, NORMALIZATION

# The file Keras caches in ~/.keras/models/ for DenseNet121(weights="imagenet", include_top=False).
NOTOP_WEIGHTS = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The last DenseNet121 activation, [B,H/32,W/32,1024]: the layer Grad-CAM looks at.
FEATURE_LAYER = "relu"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A classifier trunk. build: (image input [B,H,W,3], weights) -> the trunk on it, its output
    [B,h,w,C]; preprocessing: (name=) -> the layer from a [0, 1] image to what the trunk's weights
    expect; features: the name of its last activation [B,h,w,C], what Grad-CAM weighs."""

    build: Callable[[keras.KerasTensor, str | None], keras.Model]
    preprocessing: Callable[..., layers.Layer]
    features: str


def build_classifier(weights: str | None = None, image_size: int | None = None,
                     label_names: Sequence[str] = LABELS, backbone: str = "densenet121") -> keras.Model:
    """Normalized image [B,H,W,3] -> logits [B,len(label_names)], float32 under any precision policy.

    weights: None (random), "imagenet" (downloaded once into ~/.keras/models/), or the path of
    a local copy of the backbone's notop weights (DenseNet121: NOTOP_WEIGHTS). image_size: None
    accepts any size (at least 32). backbone: a key of BACKBONES. The backbone and the labels
    are the model's spec (described.py).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"--backbone={backbone}: no such backbone; one of {', '.join(BACKBONES)}")
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    trunk = BACKBONES[backbone].build(image, weights)
    x = layers.GlobalAveragePooling2D(name="pool")(trunk.output)  # [B,C]
    # The head starts as the reference's nn.Linear(C, L), not with Keras's glorot / zeros.
    logits = layers.Dense(len(label_names), dtype="float32", name="logits",
                          **torch_initializers(x.shape[-1]))(x)  # [B,L]
    return DescribedModel(image, logits, name=CLASSIFIER,
                          spec={"task": "classifier", "backbone": backbone, "labels": list(label_names)})


def densenet121(image: keras.KerasTensor, weights: str | None) -> keras.Model:
    """DenseNet121 without its top on `image` ([B,H,W,3] -> [B,H/32,W/32,1024]), its BatchNorm as
    PyTorch's (torch_batchnorm)."""
    if weights is not None and weights != "imagenet":
        weights = os.fspath(weights)
        if not tf.io.gfile.exists(weights):
            raise FileNotFoundError(f"{weights}: DenseNet121 weights not found (a copy of {NOTOP_WEIGHTS})")
    return torch_batchnorm(_densenet121(image, weights))


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


def torch_batchnorm(backbone: keras.Model) -> keras.Model:
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


def classifier_spec(classifier: keras.Model, backbone: str | None = None,
                    label_names: Sequence[str] | None = None) -> dict:
    """{"backbone", "labels"} of a classifier: its own spec's, or the ones given (a classifier built
    outside tfcxr.models, e.g. a test's stand-in, says them explicitly; default DenseNet121 and the
    14 ChestX-ray14 labels)."""
    spec = getattr(classifier, "spec", {})
    return {"backbone": backbone or spec.get("backbone", "densenet121"),
            "labels": list(label_names or spec.get("labels", LABELS))}


def build_baseline(classifier: keras.Model, backbone: str | None = None,
                   label_names: Sequence[str] | None = None) -> keras.Model:
    """D121 BL5: gray image [B,H,W,1] in [0, 1] -> {"logits": [B,L]}; normalizes inside as the
    classifier's backbone (a key of BACKBONES) expects."""
    spec = classifier_spec(classifier, backbone, label_names)
    image = keras.Input(shape=(*classifier.input_shape[1:3], 1), name="image")
    normalized = BACKBONES[spec["backbone"]].preprocessing(name=NORMALIZATION)(image)  # [B,H,W,3]
    logits = classifier(normalized)
    return DescribedModel(image, {"logits": logits}, name="baseline", spec={"task": "baseline", **spec})


BACKBONES = {"densenet121": Backbone(densenet121, ImageNetNormalization, FEATURE_LAYER)}


def backbone_of(model: keras.Model) -> Backbone:
    """The BACKBONES entry a classifying model (classifier, baseline, AECNN) says it is built on."""
    return BACKBONES[spec_of(model)["backbone"]]
