"""AECNN models: codecs (codecs/: the paper's autoencoder, the residual codec), the classifier on a
backbone, the BL5 baseline, the autoencoder and the AECNN; each says what it is in its saved spec.

Importing this package registers the custom layers and model class, so keras.saving.load_model
reads our .keras files without custom_objects.
"""

from tfcxr.models.aecnn import (build_aecnn, build_autoencoder, build_codec, build_decoder, build_encoder, load_model,
                                load_stage_weights)
from tfcxr.models.classifier import (BACKBONES, FEATURE_LAYER, NOTOP_WEIGHTS, Backbone, backbone_of, build_baseline,
                                     build_classifier, torch_batchnorm)
from tfcxr.models.codecs import CODECS, Codec, make_codec, register_codec
from tfcxr.models.described import DescribedModel, classifies, codec_of, compresses, read_spec, spec_of
from tfcxr.models.layers import ImageNetNormalization, PixelShuffle, TorchBatchNormalization, clipped_relu
from tfcxr.models.names import CLASSIFIER, DECODER, ENCODER, NORMALIZATION
from tfcxr.models.torch_port import load_torch_autoencoder_state, load_torch_checkpoint

__all__ = [
    "BACKBONES",
    "Backbone",
    "CLASSIFIER",
    "CODECS",
    "Codec",
    "DECODER",
    "DescribedModel",
    "ENCODER",
    "FEATURE_LAYER",
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
    "classifies",
    "clipped_relu",
    "codec_of",
    "compresses",
    "load_model",
    "load_stage_weights",
    "load_torch_autoencoder_state",
    "load_torch_checkpoint",
    "make_codec",
    "read_spec",
    "register_codec",
    "spec_of",
    "torch_batchnorm",
]
