"""The codec contract and its one registry.

A codec maps image [B,H,W,1] in [0, 1] -> latent [B,H/COMPRESSION,W/COMPRESSION,1] in [0, 1] ->
reconstruction [B,H,W,1] in [0, 1], for any side a multiple of COMPRESSION. A codec class
declares its `kind` (what --codec and config.json call it) and its parameters as a frozen
dataclass `Params`, and builds the two halves as functional graphs (`encode`, `decode`); the
base class wraps them into the sub-models every tfcxr model is assembled from ("encoder",
"decoder"), each carrying the codec's kind and parameters in its saved config. A new codec is
one subclass decorated with @register_codec: stages 2 and 3, evaluation, the codec tool and
the export take it from --codec=<kind>.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import keras

from tfcxr.config import CodecConfig
from tfcxr.models.described import DescribedModel
from tfcxr.models.names import DECODER, ENCODER

CODECS: dict[str, type["Codec"]] = {}


def register_codec(cls: type["Codec"]) -> type["Codec"]:
    """Class decorator: CODECS[cls.kind] = cls."""
    CODECS[cls.kind] = cls
    return cls


class Codec:
    """A codec of `kind` with parameters `params` (an instance of its Params dataclass)."""

    kind: ClassVar[str]
    # Stage 2's validation when --codec_validation is not given: "full" (whole originals at their own
    # size through the stored latent: what the codec is used at) or "resize" (the paper's 128 resizes).
    validation: ClassVar[str] = "resize"
    # Training pixels (optimizer steps x global batch x patch side^2) the codec needs to converge; a stage-2 run far
    # below them says so. None: no advice.
    recommended_pixels: ClassVar[int | None] = None
    # Whether the latent is rounded to 8 bits in every forward pass (what a PNG stores is what is decoded
    # and classified); False: the float latent, as the reference's autoencoder has it.
    rounds_latent: ClassVar[bool] = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params: Any):
        names = {field.name for field in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - names)
        if unknown:
            have = ", ".join(f"--codec_{name}" for name in sorted(names)) or "none"
            raise ValueError(f"--codec={self.kind} has no parameter {', '.join(unknown)} (its parameters: {have})")
        self.params = self.Params(**params)

    def config(self) -> CodecConfig:
        """kind + every parameter (defaults included): what the models' specs and config.json record."""
        return CodecConfig(self.kind, dataclasses.asdict(self.params))

    def encode(self, image: keras.KerasTensor) -> keras.KerasTensor:
        """image [B,H,W,1] -> latent [B,H/4,W/4,1] in [0, 1] (functional layers)."""
        raise NotImplementedError

    def decode(self, latent: keras.KerasTensor) -> keras.KerasTensor:
        """latent [B,h,w,1] -> reconstruction [B,4h,4w,1] in [0, 1] (functional layers)."""
        raise NotImplementedError

    def build_encoder(self) -> keras.Model:
        image = keras.Input(shape=(None, None, 1), name="image")
        return DescribedModel(image, self.encode(image), name=ENCODER,
                              spec={"task": "encoder", "codec": self.config().to_dict()})

    def build_decoder(self) -> keras.Model:
        latent = keras.Input(shape=(None, None, 1), name="latent")
        return DescribedModel(latent, self.decode(latent), name=DECODER,
                              spec={"task": "decoder", "codec": self.config().to_dict()})


def make_codec(config: CodecConfig | Mapping[str, Any] | str) -> Codec:
    """The Codec of a CodecConfig (or its dict, or a bare kind); one line naming the kind otherwise."""
    if isinstance(config, str):
        config = CodecConfig(config)
    elif not isinstance(config, CodecConfig):
        config = CodecConfig.from_dict(config)
    if config.kind not in CODECS:
        raise ValueError(f"--codec={config.kind}: no such codec; one of {', '.join(CODECS)}")
    return CODECS[config.kind](**config.params)
