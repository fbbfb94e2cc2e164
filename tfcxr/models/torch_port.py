"""PyTorch state dicts as tfcxr models: torchvision's DenseNet121 (CheXNet-style checkpoints), the
reproduction's autoencoder and its AECNN. tools/import_torch.py is the command line.

The reference modules (NCHW) and the state_dict names read here (tests/torch_reference.py holds them):

    densenet121   torchvision.models.densenet121: features.conv0, features.norm0,
                  features.denseblock{1-4}.denselayer{n}.norm1 / conv1 / norm2 / conv2,
                  features.transition{1-3}.norm / conv, features.norm5, classifier (nn.Linear(1024, L))
    autoencoder   encoder = nn.Sequential(
                      nn.Conv2d(1, 32, 5, stride=4, padding=2),  # encoder.0.weight [32,1,5,5], encoder.0.bias [32]
                      nn.ELU(),                                   # encoder.1
                      nn.Conv2d(32, 1, 1),                        # encoder.2.weight [1,32,1,1], encoder.2.bias [1]
                  )                                               # then ClippedReLU (clamp 0..1) on the latent
                  decoder = nn.Sequential(
                      nn.Conv2d(1, 16, 3, padding=1),             # decoder.0.weight [16,1,3,3], decoder.0.bias [16]
                      nn.PixelShuffle(4),                         # decoder.1
                      ClippedReLU(),                              # decoder.2
                  )
    aecnn         the autoencoder's encoder.* and decoder.*, and a densenet121 as classifier.* (the latent
                  repeated to 3 channels and ImageNet-normalized before it)

Accepted around those names: the state dict at the top level or under "state_dict", "model" or
"model_state_dict"; the path components "module" (nn.DataParallel) and "densenet121" (CheXNet's
wrapper) anywhere; torchvision's pre-0.4 names (denselayer1.norm.1.weight for norm1.weight,
conv.2 for conv2, ...); the head as nn.Linear(1024, L) (classifier.weight) or nn.Sequential(nn.Linear,
nn.Sigmoid()) (classifier.0.weight): the Sigmoid carries no weights, and our model returns the
Linear's output, the logits. BatchNorm's num_batches_tracked is read and dropped.

Conv weights are OIHW in PyTorch and HWIO in Keras, a Linear's [out, in] is a Dense's kernel
[in, out] transposed. With one output channel, PixelShuffle(4) and depth_to_space(4) order the 16
channels alike, so the decoder needs no permutation. The models come from tfcxr.models' builders,
so an imported model is the one training builds, with one difference: its BatchNorm epsilon is
PyTorch's 1e-5 (keras.applications' DenseNet121 uses 1.001e-5), so it computes what the PyTorch
module computes.
"""

import re
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from tfcxr.constants import LABELS
from tfcxr.models.names import CLASSIFIER, DECODER, ENCODER

ARCHITECTURES = ("densenet121", "autoencoder", "aecnn")
NESTED = ("state_dict", "model", "model_state_dict")  # where training scripts put the state dict
WRAPPERS = {"module", "densenet121"}  # path components of wrappers, dropped wherever they appear
TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
TORCH_BATCHNORM_EPSILON = 1e-5  # nn.BatchNorm2d's default, torchvision's DenseNet121
BATCHNORM_BUFFER = "num_batches_tracked"

# torchvision < 0.4 named a dense layer's modules norm.1 / relu.1 / conv.1 / norm.2 / ...
OLD_DENSE_LAYER = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
SIGMOID_HEAD = re.compile(r"(^|\.)classifier\.0\.(weight|bias)$")  # nn.Sequential(nn.Linear, nn.Sigmoid())

# The autoencoder's state_dict names -> (sub-model, layer, index in layer.weights).
AUTOENCODER_NAMES = {
    "encoder.0.weight": (ENCODER, "encoder_conv", 0),
    "encoder.0.bias": (ENCODER, "encoder_conv", 1),
    "encoder.2.weight": (ENCODER, "encoder_project", 0),
    "encoder.2.bias": (ENCODER, "encoder_project", 1),
    "decoder.0.weight": (DECODER, "decoder_conv", 0),
    "decoder.0.bias": (DECODER, "decoder_conv", 1),
}
# keras.applications' DenseNet121 layer name -> torchvision's module name (groups: block, layer).
DENSENET_MODULES = [
    (re.compile(r"conv1_conv"), lambda m: "features.conv0"),
    (re.compile(r"conv1_bn"), lambda m: "features.norm0"),
    (re.compile(r"conv(\d)_block(\d+)_0_bn"), lambda m: f"features.denseblock{int(m[1]) - 1}.denselayer{m[2]}.norm1"),
    (re.compile(r"conv(\d)_block(\d+)_1_conv"), lambda m: f"features.denseblock{int(m[1]) - 1}.denselayer{m[2]}.conv1"),
    (re.compile(r"conv(\d)_block(\d+)_1_bn"), lambda m: f"features.denseblock{int(m[1]) - 1}.denselayer{m[2]}.norm2"),
    (re.compile(r"conv(\d)_block(\d+)_2_conv"), lambda m: f"features.denseblock{int(m[1]) - 1}.denselayer{m[2]}.conv2"),
    (re.compile(r"pool(\d)_bn"), lambda m: f"features.transition{int(m[1]) - 1}.norm"),
    (re.compile(r"pool(\d)_conv"), lambda m: f"features.transition{int(m[1]) - 1}.conv"),
    (re.compile(r"bn"), lambda m: "features.norm5"),
    (re.compile(r"logits"), lambda m: "classifier"),
]
PARAMETERS = {  # a Keras layer's weights, in order, as PyTorch names them
    "Conv2D": ("weight", "bias"),
    "Dense": ("weight", "bias"),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
    "TorchBatchNormalization": ("weight", "bias", "running_mean", "running_var"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the architecture (one line: the first problem)."""


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """A Keras weight in PyTorch's layout: HWIO -> OIHW, [in, out] -> [out, in]."""
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value


def to_keras_layout(value: np.ndarray) -> np.ndarray:
    """A PyTorch weight in Keras's layout: OIHW -> HWIO, [out, in] -> [in, out]."""
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value


# -- reading --

def read_state_dict(path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """The tensors of a .pth / .pt / .pth.tar (needs torch), .safetensors or .npz file, as numpy,
    from its top level or from under one of NESTED. allow_pickle: let torch.load run the file's
    pickled code (only for a file you trust; the default reads tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({first_line(error)})") from None
    if name.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return state_of({key: arrays[key] for key in arrays.files}, path)
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable .npz file ({first_line(error)})") from None
    if not name.endswith(TORCH_SUFFIXES):
        raise CheckpointError(f"{path}: expected a .pth, .pt, .pth.tar, .safetensors or .npz file")
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading a PyTorch checkpoint needs torch (pip install torch), or "
                              "save its state dict as .safetensors or .npz") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:
        hint = "" if allow_pickle else "; if it holds pickled objects and you trust it, pass --allow_pickle"
        raise CheckpointError(f"{path}: torch.load failed ({first_line(error)}){hint}") from None
    if isinstance(checkpoint, torch.nn.Module):
        checkpoint = checkpoint.state_dict()
    return state_of(checkpoint, path)


def state_of(checkpoint, path) -> dict[str, np.ndarray]:
    """The {name: numpy array} state dict in `checkpoint` (top level or nested under NESTED)."""
    while isinstance(checkpoint, dict) and not any(map(is_tensor, checkpoint.values())):
        nested = [key for key in NESTED if isinstance(checkpoint.get(key), dict)]
        if not nested:
            raise CheckpointError(f"{path}: no state dict in it (no tensors at the top level, nor under "
                                  f"{', '.join(NESTED)}; it holds {', '.join(map(str, list(checkpoint)[:8]))})")
        checkpoint = checkpoint[nested[0]]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict")
    return {str(name): as_numpy(value) for name, value in checkpoint.items() if is_tensor(value)}


def is_tensor(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__name__ in ("Tensor", "Parameter")


def as_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# -- names --

def canonical_name(name: str) -> str:
    """A state_dict name as this module reads it: wrappers dropped, pre-0.4 torchvision names and the
    Sigmoid head's Linear renamed (module.densenet121.features.denselayer1.norm.1.weight ->
    features.denselayer1.norm1.weight, classifier.0.bias -> classifier.bias)."""
    name = ".".join(part for part in name.split(".") if part not in WRAPPERS)
    name = OLD_DENSE_LAYER.sub(r"\1\2", name)
    return SIGMOID_HEAD.sub(r"\1classifier.\2", name)


def canonical_state(state: dict[str, np.ndarray], source) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """-> (state under canonical names, {canonical name: the name in the checkpoint})."""
    renamed, original = {}, {}
    for name, value in state.items():
        canonical = canonical_name(name)
        if canonical in renamed:
            raise CheckpointError(f"{source}: {original[canonical]} and {name} are both {canonical}")
        renamed[canonical], original[canonical] = value, name
    return renamed, original


def densenet_module(layer_name: str) -> str | None:
    for pattern, module in DENSENET_MODULES:
        match = pattern.fullmatch(layer_name)
        if match:
            return module(match)
    return None


def torch_targets(model: keras.Model, architecture: str) -> dict[str, keras.Variable]:
    """{PyTorch state_dict name: the variable of `model` it goes to}, in the model's order."""
    targets = {}
    if architecture in ("autoencoder", "aecnn"):
        for name, (submodel, layer, index) in AUTOENCODER_NAMES.items():
            targets[name] = model.get_layer(submodel).get_layer(layer).weights[index]
    if architecture in ("densenet121", "aecnn"):
        prefix = "classifier." if architecture == "aecnn" else ""
        for layer in iterate_layers(model.get_layer(CLASSIFIER)):
            module = densenet_module(layer.name) if layer.weights else None
            if module is None:
                continue
            for parameter, variable in zip(PARAMETERS[type(layer).__name__], layer.weights):
                targets[f"{prefix}{module}.{parameter}"] = variable
    return targets


def iterate_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iterate_layers(layer)
        else:
            yield layer


def torch_shape(variable) -> tuple[int, ...]:
    return to_torch_layout(np.empty(variable.shape, np.int8)).shape


def check_fits(state: dict[str, np.ndarray], original: dict[str, str], targets: dict[str, keras.Variable],
               architecture: str, source) -> None:
    """Raises CheckpointError naming the first missing, mis-shaped or unexpected tensor."""
    buffers = {name.rsplit(".", 1)[0] + "." + BATCHNORM_BUFFER for name in targets if name.endswith(".running_var")}
    missing = [name for name in targets if name not in state]
    unexpected = [name for name in state if name not in targets and name not in buffers]
    counts = f"({len(missing)} of {len(targets)} {architecture} tensors missing, {len(unexpected)} unexpected)"
    if len(missing) == len(targets):
        held = ", ".join(original[name] for name in list(state)[:3]) or "nothing"
        raise CheckpointError(f"{source}: holds none of the {len(targets)} {architecture} tensors (first: "
                              f"{next(iter(targets))}) but {held}, ...: another --architecture?")
    for name, variable in targets.items():
        expected = torch_shape(variable)
        if name not in state:
            raise CheckpointError(f"{source}: missing tensor {name} (expected shape {list(expected)}) {counts}")
        if state[name].shape != expected:
            raise CheckpointError(f"{source}: tensor {original[name]} has shape {list(state[name].shape)}, "
                                  f"{architecture} expects {list(expected)} for {name}")
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(f"{source}: unexpected tensor {original[name]} (read as {name}, shape "
                              f"{list(state[name].shape)}): not part of {architecture} {counts}")


# -- building --

def head_labels(state: dict[str, np.ndarray], architecture: str, source) -> int:
    """The label count of the checkpoint's head (classifier.weight [L, 1024])."""
    name = "classifier.classifier.weight" if architecture == "aecnn" else "classifier.weight"
    if name not in state or state[name].ndim != 2:
        found = list(state[name].shape) if name in state else "nothing"
        raise CheckpointError(f"{source}: missing tensor {name} (expected the head's [labels, 1024]; found {found})")
    return int(state[name].shape[0])


def build(architecture: str, label_names: Sequence[str]) -> keras.Model:
    """The tfcxr model the architecture imports into, from tfcxr.models' builders, random weights."""
    from tfcxr import models

    if architecture == "autoencoder":
        return models.build_autoencoder(*models.build_codec("paper"))
    classifier = models.build_classifier(weights=None, label_names=label_names)
    if architecture == "densenet121":
        return models.build_baseline(classifier)
    return models.build_aecnn(*models.build_codec("paper"), classifier)


def head_label_names(count: int, num_labels: int | None, label_names: Sequence[str] | None, source) -> list[str]:
    """The names of the head's `count` logits: label_names (checked), ChestX-ray14's for 14, else label_<i>."""
    if num_labels is not None and num_labels != count:
        raise CheckpointError(f"{source}: its head has {count} labels, not the {num_labels} of --num_labels")
    if label_names:
        if len(label_names) != count:
            raise CheckpointError(f"{source}: its head has {count} labels, --label_names names {len(label_names)}")
        return list(label_names)
    return list(LABELS) if count == len(LABELS) else [f"label_{index}" for index in range(count)]


def import_state(state: dict[str, np.ndarray], architecture: str, num_labels: int | None = None,
                 label_names: Sequence[str] | None = None, source="state dict") -> keras.Model:
    """A PyTorch state dict ({name: numpy array}, any accepted naming) as a tfcxr model:
    densenet121 -> the baseline (gray [B,H,W,1] in [0, 1] -> {"logits"}), autoencoder -> the
    autoencoder, aecnn -> the AECNN. The head's label count comes from the checkpoint; num_labels and
    label_names (the names the model's spec records, in logit order) are checked against it.
    Raises CheckpointError (one line) when the state dict does not fit."""
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"--architecture={architecture}: expected one of {', '.join(ARCHITECTURES)}")
    state, original = canonical_state(state, source)
    names = None
    if architecture != "autoencoder":
        names = head_label_names(head_labels(state, architecture, source), num_labels, label_names, source)
    model = build(architecture, names)
    targets = torch_targets(model, architecture)
    check_fits(state, original, targets, architecture, source)
    for name, variable in targets.items():
        variable.assign(to_keras_layout(state[name].astype(np.float32)))
    for layer in iterate_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = TORCH_BATCHNORM_EPSILON
    return model


def import_checkpoint(path, architecture: str, num_labels: int | None = None, label_names: Sequence[str] | None = None,
                      allow_pickle: bool = False) -> keras.Model:
    """import_state of a checkpoint file (read_state_dict)."""
    return import_state(read_state_dict(path, allow_pickle), architecture, num_labels, label_names, source=path)


# -- the autoencoder's weights into an existing model --

def load_torch_autoencoder_state(model, state, prefix=""):
    """Copies a reference autoencoder state_dict (name -> numpy array) into `model`'s encoder and decoder.

    `model` is an autoencoder or an AECNN (anything with "encoder" and "decoder" sub-models).
    `prefix` is what precedes "encoder." in the names (e.g. "autoencoder."); a leading
    "module." (nn.DataParallel) is ignored. Other entries (a classifier's) are left alone.
    """
    state = {name.removeprefix("module.").removeprefix(prefix): value for name, value in state.items()}
    missing = [prefix + name for name in AUTOENCODER_NAMES if name not in state]
    if missing:
        raise KeyError(f"state_dict lacks {missing}; it has {sorted(state)[:10]}")
    for name, (submodel, layer_name, index) in AUTOENCODER_NAMES.items():
        variable = model.get_layer(submodel).get_layer(layer_name).weights[index]
        source = np.asarray(state[name], dtype=np.float32)
        if to_keras_layout(source).shape != tuple(variable.shape):
            raise ValueError(f"{prefix}{name}: shape {source.shape} does not fit {layer_name} (HWIO {variable.shape})")
        variable.assign(to_keras_layout(source))
    return model


def load_torch_checkpoint(model, path, prefix=""):
    """load_torch_autoencoder_state from a checkpoint file (.pth needs torch; .safetensors, .npz do not)."""
    return load_torch_autoencoder_state(model, read_state_dict(path), prefix)
