"""Weights of the PyTorch reference autoencoder, ported into our encoder and decoder.

The reference modules (NCHW), and the state_dict names this module reads:

    encoder = nn.Sequential(
        nn.Conv2d(1, 32, 5, stride=4, padding=2),   # encoder.0.weight [32,1,5,5], encoder.0.bias [32]
        nn.ELU(),                                    # encoder.1
        nn.Conv2d(32, 1, 1),                         # encoder.2.weight [1,32,1,1], encoder.2.bias [1]
    )                                                # then ClippedReLU (clamp 0..1) on the latent
    decoder = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),              # decoder.0.weight [16,1,3,3], decoder.0.bias [16]
        nn.PixelShuffle(4),                          # decoder.1
        ClippedReLU(),                               # decoder.2
    )

Conv weights are OIHW in PyTorch and HWIO in Keras. With one output channel, PixelShuffle(4)
and depth_to_space(4) order the 16 channels alike, so they need no permutation.
"""

import numpy as np

from tfcxr.models.names import DECODER, ENCODER

# state_dict name -> (sub-model, layer, index in layer.get_weights())
TORCH_NAMES = {
    "encoder.0.weight": (ENCODER, "encoder_conv", 0),
    "encoder.0.bias": (ENCODER, "encoder_conv", 1),
    "encoder.2.weight": (ENCODER, "encoder_project", 0),
    "encoder.2.bias": (ENCODER, "encoder_project", 1),
    "decoder.0.weight": (DECODER, "decoder_conv", 0),
    "decoder.0.bias": (DECODER, "decoder_conv", 1),
}


def load_torch_autoencoder_state(model, state, prefix=""):
    """Copies a reference state_dict (name -> numpy array) into `model`'s encoder and decoder.

    `model` is an autoencoder or an AECNN (anything with "encoder" and "decoder" sub-models).
    `prefix` is what precedes "encoder." in the names (e.g. "autoencoder."); a leading
    "module." (nn.DataParallel) is ignored. Other entries (a classifier's) are left alone.
    """
    state = {name.removeprefix("module.").removeprefix(prefix): value for name, value in state.items()}
    missing = [prefix + name for name in TORCH_NAMES if name not in state]
    if missing:
        raise KeyError(f"state_dict lacks {missing}; it has {sorted(state)[:10]}")
    for name, (submodel, layer_name, index) in TORCH_NAMES.items():
        layer = model.get_layer(submodel).get_layer(layer_name)
        source = np.asarray(state[name], dtype=np.float32)
        value = source.transpose(2, 3, 1, 0) if source.ndim == 4 else source  # OIHW -> HWIO
        weights = layer.get_weights()
        if value.shape != weights[index].shape:
            expected = weights[index].shape
            raise ValueError(f"{prefix}{name}: shape {source.shape} does not fit {layer_name} (HWIO {expected})")
        weights[index] = value
        layer.set_weights(weights)
    return model


def load_torch_checkpoint(model, path, prefix=""):
    """load_torch_autoencoder_state from a PyTorch checkpoint file (needs torch, not a dependency)."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    return load_torch_autoencoder_state(model, {k: v.numpy() for k, v in state.items()}, prefix)
