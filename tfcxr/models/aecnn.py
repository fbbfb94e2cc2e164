"""The models assembled from parts: the autoencoder (a codec's encoder + decoder) and the AECNN (the
encoder's latent both decoded and classified); loading any of them; stage 3's start from stages 1 and 2."""

import os
import tempfile

import keras
import tensorflow as tf

from tfcxr.config import CodecConfig
from tfcxr.models.classifier import BACKBONES, classifier_spec
from tfcxr.models.codecs import make_codec
from tfcxr.models.described import DescribedModel, codec_of, spec_of
from tfcxr.models.names import CLASSIFIER, DECODER, ENCODER, NORMALIZATION


def build_codec(codec: CodecConfig | dict | str = "paper", **params) -> tuple[keras.Model, keras.Model]:
    """(encoder, decoder) of a codec: a CodecConfig, its dict, or a kind with its parameters."""
    if isinstance(codec, str):
        codec = CodecConfig(codec, params)
    built = make_codec(codec)
    return built.build_encoder(), built.build_decoder()


def build_encoder(codec: CodecConfig | dict | str = "paper") -> keras.Model:
    return make_codec(codec).build_encoder()


def build_decoder(codec: CodecConfig | dict | str = "paper") -> keras.Model:
    return make_codec(codec).build_decoder()


def _codec_spec(encoder: keras.Model, decoder: keras.Model) -> dict:
    """The codec both halves say they are; one line when they disagree."""
    encoded, decoded = spec_of(encoder)["codec"], spec_of(decoder)["codec"]
    if encoded != decoded:
        raise ValueError(f"encoder ({encoded}) and decoder ({decoded}) are not one codec")
    return encoded


def build_autoencoder(encoder: keras.Model | None = None, decoder: keras.Model | None = None) -> keras.Model:
    """image -> {"latent", "reconstruction"}; the paper's codec when no encoder / decoder is given."""
    encoder = encoder or build_encoder()
    decoder = decoder or build_decoder()
    image = keras.Input(shape=(None, None, 1), name="image")
    latent = encoder(image)
    reconstruction = decoder(latent)
    return DescribedModel(image, {"latent": latent, "reconstruction": reconstruction}, name="autoencoder",
                          spec={"task": "autoencoder", "codec": _codec_spec(encoder, decoder)})


def build_aecnn(encoder: keras.Model, decoder: keras.Model, classifier: keras.Model,
                backbone: str | None = None, label_names=None) -> keras.Model:
    """gray image [B,H,W,1] in [0, 1] -> {"latent", "reconstruction", "logits"}, all float32."""
    spec = {"task": "aecnn", "codec": _codec_spec(encoder, decoder),
            **classifier_spec(classifier, backbone, label_names)}
    image = keras.Input(shape=(None, None, 1), name="image")
    latent = encoder(image)  # [B,H/4,W/4,1]
    reconstruction = decoder(latent)  # [B,H,W,1]
    normalized = BACKBONES[spec["backbone"]].preprocessing(name=NORMALIZATION)(latent)  # [B,H/4,W/4,3]
    logits = classifier(normalized)  # [B,L]
    outputs = {"latent": latent, "reconstruction": reconstruction, "logits": logits}
    return DescribedModel(image, outputs, name="aecnn", spec=spec)


def load_model(path) -> keras.Model:
    """A .keras file written by any stage (best.keras) or by tools/import_torch.py, uncompiled; local or a URL."""
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: model file not found")
    if "://" not in path:
        model = keras.saving.load_model(path, compile=False)
    else:  # a bucket: Keras reads .keras archives from local files
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, "model.keras")
            tf.io.gfile.copy(path, local)
            model = keras.saving.load_model(local, compile=False)
    spec_of(model, path)  # a tfcxr model, or one line naming the file
    return model


def load_stage_weights(model: keras.Model, codec_path=None, classifier_path=None) -> keras.Model:
    """Sets the encoder + decoder of `model` from a codec run's .keras and its classifier from a
    classifier run's (baseline or AECNN). Either path may be None. The codec must be the one
    `model` was built with (kind and parameters). Returns `model`."""
    sources = {}
    if codec_path is not None:
        sources.update({ENCODER: codec_path, DECODER: codec_path})
    if classifier_path is not None:
        sources[CLASSIFIER] = classifier_path
    loaded = {path: load_model(path) for path in set(sources.values())}
    for name, path in sources.items():
        source = loaded[path]
        names = {layer.name for layer in source.layers}
        if name not in names:
            kind = "a classifier (a baseline or AECNN .keras)" if name == CLASSIFIER else "a codec (an autoencoder or AECNN .keras)"
            raise ValueError(f"{path}: has no '{name}' model (expected {kind})")
        if name == ENCODER and codec_of(source) != codec_of(model):
            raise ValueError(f"{path}: its codec {codec_of(source).to_dict()} is not the one this run builds "
                             f"({codec_of(model).to_dict()})")
        try:
            model.get_layer(name).set_weights(source.get_layer(name).get_weights())
        except ValueError as error:
            raise ValueError(f"{path}: its {name} does not fit this run's ({error})") from None
    return model
