"""Parity with the PyTorch reference autoencoder: ported weights, same outputs as an independent
numpy implementation of the PyTorch definitions (NCHW). No torch needed."""

import numpy as np
import pytest

from tfcxr import models
from helpers import torch_pixel_shuffle

RNG = np.random.default_rng(0)
# Random reference weights, in PyTorch layout (conv weights OIHW); scaled so that the clamps
# cut some values and pass others.
STATE = {
    "encoder.0.weight": RNG.normal(0.0, 0.3, (32, 1, 5, 5)),
    "encoder.0.bias": RNG.normal(0.0, 0.1, 32),
    "encoder.2.weight": RNG.normal(0.0, 0.3, (1, 32, 1, 1)),
    "encoder.2.bias": np.array([0.5]),
    "decoder.0.weight": RNG.normal(0.0, 0.5, (16, 1, 3, 3)),
    "decoder.0.bias": RNG.normal(0.3, 0.1, 16),
}


def conv2d(x, weight, bias, stride=1, padding=0):
    """torch.nn.functional.conv2d: x [N,C,H,W], weight [O,C,kh,kw], zero padding, cross-correlation."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    _, _, height, width = x.shape
    _, _, kh, kw = weight.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    out = np.zeros((x.shape[0], weight.shape[0], out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
    return out + bias[None, :, None, None]


def reference_autoencoder(image, state):
    """The reference forward pass in float64: image [N,1,H,W] -> (latent, reconstruction)."""
    x = conv2d(image, state["encoder.0.weight"], state["encoder.0.bias"], stride=4, padding=2)
    x = np.where(x > 0, x, np.expm1(x))  # ELU(alpha=1)
    x = conv2d(x, state["encoder.2.weight"], state["encoder.2.bias"])
    latent = np.clip(x, 0.0, 1.0)
    x = conv2d(latent, state["decoder.0.weight"], state["decoder.0.bias"], padding=1)
    reconstruction = np.clip(torch_pixel_shuffle(x, 4), 0.0, 1.0)
    return latent, reconstruction


@pytest.fixture(scope="module")
def ported():
    return models.load_torch_autoencoder_state(models.build_autoencoder(), STATE)


@pytest.mark.parametrize("size", [32, 64])
def test_ported_autoencoder_matches_the_pytorch_definition(ported, size):
    image = np.random.default_rng(size).random((2, 1, size, size))  # NCHW
    latent, reconstruction = reference_autoencoder(image, STATE)
    assert 0.0 < (latent == 0).mean() + (latent == 1).mean() < 0.9  # the clamp cuts some, not all
    outputs = ported(image.transpose(0, 2, 3, 1).astype(np.float32))  # NHWC
    np.testing.assert_allclose(outputs["latent"].numpy().transpose(0, 3, 1, 2), latent, atol=1e-5)
    np.testing.assert_allclose(outputs["reconstruction"].numpy().transpose(0, 3, 1, 2), reconstruction, atol=1e-5)


def test_prefixes_are_stripped_and_extra_entries_ignored():
    state = {f"module.net.{name}": value for name, value in STATE.items()}
    state["module.net.classifier.weight"] = np.zeros((14, 1024))
    autoencoder = models.load_torch_autoencoder_state(models.build_autoencoder(), state, prefix="net.")
    np.testing.assert_array_equal(
        autoencoder.get_layer("encoder").get_layer("encoder_conv").get_weights()[0],
        STATE["encoder.0.weight"].transpose(2, 3, 1, 0).astype(np.float32),
    )


def test_missing_and_misshapen_entries_are_named():
    autoencoder = models.build_autoencoder()
    with pytest.raises(KeyError, match="decoder.0.bias"):
        models.load_torch_autoencoder_state(autoencoder, {k: v for k, v in STATE.items() if k != "decoder.0.bias"})
    with pytest.raises(ValueError, match=r"encoder\.0\.weight: shape"):
        models.load_torch_autoencoder_state(autoencoder, {**STATE, "encoder.0.weight": np.zeros((32, 1, 3, 3))})


def test_real_pytorch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "autoencoder.pth"
    torch.save({"state_dict": {name: torch.tensor(value) for name, value in STATE.items()}}, path)
    autoencoder = models.load_torch_checkpoint(models.build_autoencoder(), path)
    np.testing.assert_array_equal(
        autoencoder.get_layer("decoder").get_layer("decoder_conv").get_weights()[1],
        STATE["decoder.0.bias"].astype(np.float32),
    )
