"""Codecs: image -> [0, 1] latent at 1/COMPRESSION a side -> reconstruction (base.py: the contract, the registry).

    paper     the reproduction's autoencoder (codecs/paper.py), the paper configs' default
    residual  bicubic + learned residuals (codecs/residual.py), 8-bit latent
"""

from tfcxr.models.codecs.base import CODECS, Codec, make_codec, register_codec
from tfcxr.models.codecs.paper import PaperCodec
from tfcxr.models.codecs.residual import BicubicResize, ResidualCodec, StraightThroughRound

__all__ = ["CODECS", "BicubicResize", "Codec", "PaperCodec", "ResidualCodec", "StraightThroughRound", "make_codec",
           "register_codec"]
