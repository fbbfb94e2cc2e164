"""The reference modules in PyTorch (NCHW) that the parity tests and benchmarks/bench_training.py hold tfcxr to.

- DenseNet121: torchvision.models.densenet121 written out with torchvision's module and parameter
  names (features.conv0, features.norm0, features.denseblock1.denselayer1.norm1 / conv1 / norm2 /
  conv2, features.transition1.norm / conv, features.norm5, classifier): the torchvision wheel does
  not load beside the CPU torch wheel here. Its forward is torchvision's: features, ReLU, global
  average pooling, the linear head.
- Autoencoder: the reproduction's (the state_dict names of tfcxr/models/torch_port.py): encoder
  Conv2d(1, 32, 5, stride 4, padding 2) + ELU + Conv2d(32, 1, 1) + ClippedReLU on the latent; decoder
  Conv2d(1, 16, 3, padding 1) + PixelShuffle(4) + ClippedReLU.
- AECNN: encoder, decoder, and a DenseNet121 `classifier` fed the latent repeated to 3 channels and
  ImageNet-normalized.
- The losses: BCE with logits, MSE, and stage 3's 0.9 BCE + 0.1 MSE.

The module imports torch: import it after pytest.importorskip("torch") (the parity tests) or where
torch is installed (the benchmark's PyTorch cases).
"""

import collections

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tfcxr.constants import CLASSIFICATION_WEIGHT, COMPRESSION, IMAGENET_MEAN, IMAGENET_STD

GROWTH, BOTTLENECK, INITIAL_FEATURES = 32, 4, 64
DENSENET121_BLOCKS = (6, 12, 24, 16)


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: BN-ReLU-Conv1x1(4 * growth)-BN-ReLU-Conv3x3(growth) on the concatenation."""

    def __init__(self, channels):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(channels, BOTTLENECK * GROWTH, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(BOTTLENECK * GROWTH)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(BOTTLENECK * GROWTH, GROWTH, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, features):
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    """torchvision's _DenseBlock: denselayer1..N, each reading every earlier output."""

    def __init__(self, layers, channels):
        super().__init__()
        for index in range(layers):
            self.add_module(f"denselayer{index + 1}", DenseLayer(channels + index * GROWTH))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """torchvision's _Transition: BN-ReLU-Conv1x1 to half the channels, 2x2 average pooling."""

    def __init__(self, channels, out_channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(channels, out_channels, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet121(nn.Module):
    """torchvision.models.densenet121(num_classes=num_labels): image [B,3,H,W] -> logits [B,L].

    sigmoid_head: the CheXNet-style head nn.Sequential(nn.Linear(1024, L), nn.Sigmoid()), which returns
    probabilities (state_dict keys classifier.0.weight / bias).
    """

    def __init__(self, num_labels=14, sigmoid_head=False):
        super().__init__()
        self.features = nn.Sequential(collections.OrderedDict([
            ("conv0", nn.Conv2d(3, INITIAL_FEATURES, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(INITIAL_FEATURES)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        channels = INITIAL_FEATURES
        for index, layers in enumerate(DENSENET121_BLOCKS):
            self.features.add_module(f"denseblock{index + 1}", DenseBlock(layers, channels))
            channels += layers * GROWTH
            if index < len(DENSENET121_BLOCKS) - 1:
                self.features.add_module(f"transition{index + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        linear = nn.Linear(channels, num_labels)
        self.classifier = nn.Sequential(linear, nn.Sigmoid()) if sigmoid_head else linear
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0)

    def forward(self, x):
        features = F.relu(self.features(x), inplace=True)  # [B,1024,H/32,W/32]
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, (1, 1)), 1))


class ClippedReLU(nn.Module):
    def forward(self, x):
        return x.clamp(0.0, 1.0)


class Autoencoder(nn.Module):
    """The reproduction's autoencoder: image [B,1,H,W] in [0, 1] -> (latent [B,1,H/4,W/4], reconstruction)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 5, stride=COMPRESSION, padding=2), nn.ELU(),
                                     nn.Conv2d(32, 1, 1), ClippedReLU())
        self.decoder = nn.Sequential(nn.Conv2d(1, COMPRESSION**2, 3, padding=1), nn.PixelShuffle(COMPRESSION),
                                     ClippedReLU())

    def forward(self, x):
        latent = self.encoder(x)
        return latent, self.decoder(latent)


def imagenet_normalize(gray):
    """[B,1,H,W] in [0, 1] -> [B,3,H,W] ImageNet-normalized (the gray repeated to RGB)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=gray.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=gray.dtype).view(1, 3, 1, 1)
    return (gray.repeat(1, 3, 1, 1) - mean) / std


class AECNN(Autoencoder):
    """The reproduction's AECNN: image -> (latent, reconstruction, logits); DenseNet121 classifies the latent."""

    def __init__(self, num_labels=14):
        super().__init__()
        self.classifier = DenseNet121(num_labels)

    def forward(self, x):
        latent, reconstruction = super().forward(x)
        return latent, reconstruction, self.classifier(imagenet_normalize(latent))


def bce(logits, labels):
    return F.binary_cross_entropy_with_logits(logits, labels)


def mse(reconstruction, image):
    return F.mse_loss(reconstruction, image)


def joint_loss(logits, labels, reconstruction, image):
    """Stage 3: -> (loss, bce, mse)."""
    terms = bce(logits, labels), mse(reconstruction, image)
    return CLASSIFICATION_WEIGHT * terms[0] + (1.0 - CLASSIFICATION_WEIGHT) * terms[1], *terms


def randomize_batchnorm(model, seed=0):
    """Every BatchNorm2d of `model` given random scales, shifts and running statistics (instead of
    1, 0, 0, 1), so a port that mixes them up shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.num_batches_tracked.fill_(7)
    return model


def state_dict_numpy(model):
    """model.state_dict() as {name: numpy array}."""
    return {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}


def nhwc(tensor):
    """[B,C,H,W] torch -> [B,H,W,C] numpy (other ranks as they are)."""
    value = tensor.detach()
    return (value.permute(0, 2, 3, 1) if value.dim() == 4 else value).numpy()


def nchw(array):
    """[B,H,W,C] numpy (float32 or float64) -> [B,C,H,W] torch of that dtype."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array).transpose(0, 3, 1, 2)))
