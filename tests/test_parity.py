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


# -- Adam: tfcxr trains with TorchAdam (loop.make_optimizer), torch.optim.Adam's update --

# Gradients from 1e-10 to 1: around and far above Keras's effective epsilon (eps / sqrt(1 - 0.999^t)).
GRADIENT_SCALES = 10.0 ** np.arange(-10, 1)


def adam_runs(keras_optimizer, steps):
    """(ours, PyTorch's parameters after each of `steps` Adam steps on the same gradients, the
    gradients): float64 [steps, scales, 8] each; every parameter starts at 0 (float32 resolves any move)."""
    import keras

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    gradients = rng.normal(1.0, 0.5, (steps, len(GRADIENT_SCALES), 8)) * GRADIENT_SCALES[None, :, None]
    ours = keras.Variable(np.zeros(gradients.shape[1:], np.float32))
    parameter = torch.nn.Parameter(torch.zeros(gradients.shape[1:]))
    optimizer = torch.optim.Adam([parameter], lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    keras_optimizer.build([ours])
    trajectory = []
    for gradient in gradients.astype(np.float32):
        keras_optimizer.apply([gradient], [ours])
        parameter.grad = torch.from_numpy(gradient)
        optimizer.step()
        trajectory.append((np.float64(ours.numpy()), parameter.detach().double().numpy()))
    return [np.stack(values) for values in zip(*trajectory)] + [gradients]


def test_torch_adam_steps_as_torch_optim_adam():
    from tfcxr.train.optimizers import TorchAdam

    ours, reference, _ = adam_runs(TorchAdam(1e-4), steps=5)
    assert np.abs(reference).min() > 0  # every parameter moves, even at gradient 1e-10
    np.testing.assert_allclose(ours, reference, rtol=1e-5)


def test_keras_adam_moves_small_gradients_less_than_pytorch():
    """Why TorchAdam: Keras's Adam, even with eps 1e-8, adds it before the second moment's bias
    correction, an effective eps / sqrt(1 - 0.999^t) in PyTorch's formula (31.6x at step 1, 14.2x at 5)."""
    import keras

    ours, reference, gradients = adam_runs(keras.optimizers.Adam(1e-4, epsilon=1e-8), steps=5)
    first_step = np.abs(ours[0]) / np.abs(reference[0])  # [scales, 8]
    size = np.abs(gradients[0])  # step 1: both move by lr |g| / (|g| + epsilon), each with its epsilon
    expected = (size + 1e-8) / (size + 1e-8 / np.sqrt(1 - 0.999))
    np.testing.assert_allclose(first_step[GRADIENT_SCALES >= 1e-3], 1.0, atol=5e-3)  # large gradients: alike
    np.testing.assert_allclose(first_step, expected, rtol=0.02, atol=2e-3)
    assert first_step[GRADIENT_SCALES == 1e-7].mean() < 0.3  # a 1e-7 gradient moves its weight ~4x less


def test_training_builds_torch_adam():
    from tfcxr.config import RunConfig
    from tfcxr.train import loop
    from tfcxr.train.optimizers import TorchAdam

    optimizer = loop.make_optimizer(RunConfig(stage="baseline"))
    assert isinstance(optimizer, TorchAdam) and optimizer.epsilon == 1e-8
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)
