"""The names of the sub-models every tfcxr model is assembled from (one place; .keras files store them).

A baseline holds NORMALIZATION and CLASSIFIER; an autoencoder ENCODER and DECODER; an AECNN all four.
"""

import keras

ENCODER = "encoder"  # image [B,H,W,1] -> latent [B,H/4,W/4,1]
DECODER = "decoder"  # latent -> reconstruction [B,H,W,1]
CLASSIFIER = "classifier"  # ImageNet-normalized image [B,h,w,3] -> logits [B,L]
NORMALIZATION = "imagenet_normalization"  # gray [0, 1] image -> ImageNet-normalized 3 channels


def has_layer(model: keras.Model, name: str) -> bool:
    """Whether `model` has a (sub-model) layer called `name`."""
    return any(layer.name == name for layer in model.layers)


def has_codec(model: keras.Model) -> bool:
    """Whether `model` compresses: it holds an encoder and a decoder (an autoencoder or an AECNN)."""
    return has_layer(model, ENCODER) and has_layer(model, DECODER)
