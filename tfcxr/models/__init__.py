"""AECNN models: encoder, decoder, autoencoder (the paper's, or the residual codec), DenseNet121 classifier, BL5 baseline, AECNN.

Importing this package registers the custom layers, so keras.saving.load_model reads our
.keras files without custom_objects.
"""

from tfcxr.models.aecnn import build_aecnn, load_model, load_stage_weights
from tfcxr.models.autoencoder import build_autoencoder, build_decoder, build_encoder
from tfcxr.models.classifier import (BACKBONES, FEATURES, NOTOP_WEIGHTS, Backbone, backbone_of, build_baseline,
                                     build_classifier, torch_batchnorm)
from tfcxr.models.layers import ImageNetNormalization, PixelShuffle, TorchBatchNormalization, clipped_relu
from tfcxr.models.names import CLASSIFIER, DECODER, ENCODER, NORMALIZATION, has_codec
from tfcxr.models.residual_codec import AUTOENCODERS, build_codec
from tfcxr.models.torch_port import load_torch_autoencoder_state, load_torch_checkpoint

__all__ = [
    "AUTOENCODERS",
    "BACKBONES",
    "Backbone",
    "CLASSIFIER",
    "DECODER",
    "ENCODER",
    "FEATURES",
    "NORMALIZATION",
    "NOTOP_WEIGHTS",
    "ImageNetNormalization",
    "PixelShuffle",
    "TorchBatchNormalization",
    "backbone_of",
    "build_aecnn",
    "build_autoencoder",
    "build_baseline",
    "build_classifier",
    "build_codec",
    "build_decoder",
    "build_encoder",
    "clipped_relu",
    "has_codec",
    "load_model",
    "load_stage_weights",
    "load_torch_autoencoder_state",
    "load_torch_checkpoint",
    "torch_batchnorm",
]
