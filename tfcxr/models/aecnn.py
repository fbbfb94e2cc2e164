"""AECNN: the encoder's latent image is both decoded and classified; stage 3 starts from stages 1 and 2."""

from pathlib import Path

import keras

from tfcxr.models.classifier import BACKBONES
from tfcxr.models.names import CLASSIFIER, DECODER, ENCODER, NORMALIZATION


def build_aecnn(encoder: keras.Model, decoder: keras.Model, classifier: keras.Model,
                backbone: str = "densenet121") -> keras.Model:
    """gray image [B,H,W,1] in [0, 1] -> {"latent", "reconstruction", "logits"}, all float32."""
    image = keras.Input(shape=(None, None, 1), name="image")
    latent = encoder(image)  # [B,H/4,W/4,1]
    reconstruction = decoder(latent)  # [B,H,W,1]
    normalized = BACKBONES[backbone].preprocessing(name=NORMALIZATION)(latent)  # [B,H/4,W/4,3]
    logits = classifier(normalized)  # [B,L]
    outputs = {"latent": latent, "reconstruction": reconstruction, "logits": logits}
    return keras.Model(image, outputs, name="aecnn")


def load_model(path) -> keras.Model:
    """A .keras file written by any stage (best.keras), uncompiled."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return keras.saving.load_model(path, compile=False)


def load_stage_weights(aecnn: keras.Model, autoencoder_path=None, baseline_path=None) -> keras.Model:
    """Initialises stage 3: encoder + decoder from stage 2's best.keras, classifier from stage 1's.

    Either path may be None to leave that part as it is. Returns `aecnn`.
    """
    sources = {ENCODER: autoencoder_path, DECODER: autoencoder_path, CLASSIFIER: baseline_path}
    loaded = {path: load_model(path) for path in set(sources.values()) if path is not None}
    for name, path in sources.items():
        if path is None:
            continue
        try:
            source = loaded[path].get_layer(name)
        except ValueError:
            kind = "stage 1 baseline" if name == CLASSIFIER else "stage 2 autoencoder"
            raise ValueError(f"{path}: has no '{name}' model (expected a {kind})") from None
        aecnn.get_layer(name).set_weights(source.get_weights())
    return aecnn
