"""benchmarks/bench_training.py's PyTorch reference: the same models as tfcxr's, and a clean skip without torch."""

import numpy as np
import pytest

from tfcxr import models
from helpers import benchmark

bench = benchmark("bench_training")


def test_without_torch_the_comparison_says_it_skipped(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None if name == "torch" else object())
    assert bench.compare_pytorch(tmp_path / "out.md", ["1", "2"]) == 0
    assert "PyTorch reference is skipped" in capsys.readouterr().out
    assert not (tmp_path / "out.md").exists()


def test_pytorch_densenet121_is_torchvisions():
    pytest.importorskip("torch")
    model = bench.torch_densenet121(14)
    assert sum(p.numel() for p in model.parameters()) == 6_968_206  # torchvision densenet121(num_classes=14)


def test_pytorch_autoencoder_computes_what_tfcxrs_does():
    """The reference autoencoder's weights ported into tfcxr's give the same reconstruction."""
    torch = pytest.importorskip("torch")
    reference = bench.torch_autoencoder()
    state = {name: value.detach().numpy() for name, value in reference.state_dict().items()}
    ported = models.load_torch_autoencoder_state(models.build_autoencoder(), state)
    images = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    expected = reference(torch.from_numpy(images))[1].detach().numpy()  # the reconstruction [B,1,H,W]
    actual = ported(images.transpose(0, 2, 3, 1))["reconstruction"].numpy()  # [B,H,W,1]
    np.testing.assert_allclose(actual.transpose(0, 3, 1, 2), expected, atol=1e-5)


def test_pytorch_steps_train():
    """The benchmark's PyTorch step optimises: five Adam steps on its fixed batch lower the loss every step."""
    pytest.importorskip("torch")
    losses = bench.torch_steps(2, "none")(5)  # the autoencoder at stage 2's size
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
