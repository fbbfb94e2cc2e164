"""Models that say what they are: a functional keras.Model whose saved config carries a `spec`.

Every model tfcxr builds (encoder, decoder, autoencoder, classifier, baseline, AECNN) is a
DescribedModel. Its spec is a small JSON-able dict written into the .keras file's config:

    {"task": "aecnn", "codec": {"kind": "residual", "width": 32, ...}, "backbone": "densenet121",
     "labels": ["Atelectasis", ...]}

task: "encoder" | "decoder" | "autoencoder" | "classifier" | "baseline" | "aecnn";
codec: the CodecConfig of the model's codec (codec models); backbone and labels: classifiers.
Evaluation, export, Grad-CAM and stage 3 read the spec; nothing infers it from layer names.
"""

import json
import zipfile
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from tfcxr.config import CodecConfig

CLASSIFYING_TASKS = ("classifier", "baseline", "aecnn")
CODEC_TASKS = ("encoder", "decoder", "autoencoder", "aecnn")


@keras.saving.register_keras_serializable(package="tfcxr")
class DescribedModel(keras.Model):
    """keras.Model(inputs, outputs, spec={...}): a functional model with a `spec` in its config."""

    def __init__(self, *args, spec: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)  # (*args, **kwargs): Keras revives it as a functional model
        self.spec = dict(spec or {})

    def get_config(self):
        return {**super().get_config(), "spec": self.spec}


def spec_of(model: keras.Model, path=None) -> dict:
    """The spec of a model built or loaded by tfcxr; one line naming `path` (or the model) otherwise."""
    spec = getattr(model, "spec", None)
    if not spec:
        raise ValueError(f"{path or model.name}: not a tfcxr model (its saved config has no spec); "
                         "build it with tfcxr, or import PyTorch weights with tools/import_torch.py")
    return spec


def codec_of(model: keras.Model) -> CodecConfig | None:
    """The model's codec (kind and every parameter: one saved before a parameter existed has its
    default), None for a model without one."""
    from tfcxr.models.codecs.base import make_codec  # the registry imports this module

    codec = spec_of(model).get("codec")
    return make_codec(codec).config() if codec is not None else None


def classifies(model: keras.Model) -> bool:
    return spec_of(model)["task"] in CLASSIFYING_TASKS


def compresses(model: keras.Model) -> bool:
    """Whether `model` holds a whole codec (an encoder and a decoder): an autoencoder or an AECNN."""
    return spec_of(model)["task"] in ("autoencoder", "aecnn")


def read_spec(path) -> dict:
    """The spec of a .keras file, read from its config.json without building the model (local or URL)."""
    path = str(path)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: model file not found")
    try:
        with tf.io.gfile.GFile(path, "rb") as file, zipfile.ZipFile(file) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a .keras model file ({error})") from None
    spec = config.get("config", {}).get("spec")
    if not spec:
        raise ValueError(f"{path}: not a tfcxr model (its saved config has no spec)")
    return spec
