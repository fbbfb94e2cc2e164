"""The run's configuration: one tree of frozen dataclasses, owned by the run (model_dir/config.json).

    RunConfig
      stage       the stage's name (tfcxr.stages.STAGES)
      data        records_dir, batch_size, image_size, resize_size, augment, patches_per_image, codec_validation
      model       backbone, weights, codec (CodecConfig: kind + the codec's own parameters)
      optimizer   learning_rate (Adam, PyTorch's betas and epsilon), schedule (plateau or cosine),
                  classification_weight (stage 3's loss), latent_rate_weight and latent_rate_budget (stage 2's rate term)
      schedule    epochs, steps_per_epoch, val_steps
      init        classifier, codec: the .keras files a stage starts from
      runtime     model_dir, strategy, replicas, precision, seed, logging, checkpoints, previews

Flags stay flat (`--batch_size`, `--codec=residual`, `--codec_width=48`): FLAGS maps each one to its
place in the tree, and `--codec_<parameter>` flags set the codec's parameters. config.json holds
only the fields that apply to the run's stage (a stage lists what it omits), nested as above.
Pure data: nothing here imports TensorFlow.
"""

import dataclasses
import json
import types
from collections.abc import Iterable, Mapping
from typing import Any

from tfcxr.constants import CLASSIFICATION_WEIGHT, EPOCHS, LEARNING_RATE, PATCHES_PER_IMAGE

CONFIG_FILE = "config.json"  # model_dir/config.json


@dataclasses.dataclass(frozen=True)
class DataConfig:
    records_dir: str | None = None  # TFRecords + manifest.json of tools/shard_cxr14.py (a local path or a URL)
    batch_size: int = 16  # global, over all replicas and workers
    image_size: int | None = None  # crop / patch / resize size; None: the stage's (its InputSpec)
    resize_size: int | None = None  # image/small inputs: the resize before the crop; None: the stage's
    augment: str = "bl5"  # "bl5", or "fmix" where the stage's inputs allow it
    patches_per_image: int = PATCHES_PER_IMAGE  # inputs with patches: random patches per decoded original
    # A codec's validation (val_loss, so the plateau scheduler and best.keras): "full", whole originals at
    # their own size through the stored latent; "resize", image_size resizes (the paper's stage 2).
    # None: the codec's own (its class's `validation`).
    codec_validation: str | None = None


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """A codec (tfcxr.models.codecs): its registered kind and its parameters (empty: the codec's defaults)."""

    kind: str = "paper"
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CodecConfig":
        values = dict(values)
        return cls(values.pop("kind", "paper"), values)

    def __eq__(self, other):
        return isinstance(other, CodecConfig) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = "densenet121"  # the classifier's trunk: a key of tfcxr.models.BACKBONES
    weights: str | None = "imagenet"  # the trunk's initialisation: "imagenet", None or a local notop file
    codec: CodecConfig = CodecConfig()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = LEARNING_RATE
    # Stage 3's objective: w * BCE + (1 - w) * MSE; the paper's w = 0.9 (constants.CLASSIFICATION_WEIGHT).
    classification_weight: float = CLASSIFICATION_WEIGHT
    # "plateau": the reference's ReduceLROnPlateau on val_loss; "cosine": learning_rate decays to 0 along a
    # half cosine over the run's epochs x steps (train.loop.learning_rate), no plateau cuts.
    schedule: str = "plateau"
    # Stage 2's objective: MSE + w * the latent's rate proxy (tasks.latent_rate, in 8-bit levels); 0: MSE alone.
    latent_rate_weight: float = 0.0
    # r > 0: the rate term becomes w * max(0, the batch's mean latent rate - r * that of its 8-bit bicubic
    # thumbnails): free up to r times a thumbnail's rate, paid beyond it (tasks.reconstruction_loss_for).
    latent_rate_budget: float = 0.0


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = EPOCHS
    steps_per_epoch: int | None = None  # None: one pass over the train split
    val_steps: int | None = None  # None: one pass over the val split


@dataclasses.dataclass(frozen=True)
class InitConfig:
    classifier: str | None = None  # a .keras whose classifier the stage starts from (a baseline's best.keras)
    codec: str | None = None  # a .keras whose encoder and decoder the stage starts from (a codec run's best.keras)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    model_dir: str | None = None  # the run's folder (a local path or a URL)
    strategy: str = "mirrored"  # a key of tfcxr.train.strategy.STRATEGIES
    cpu_replicas: int = 1  # split the CPU into this many logical devices
    mixed_precision: str = "none"  # "none", "bfloat16" or "float16"
    seed: int = 0  # weights, shuffling and augmentation
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism()
    sync_batchnorm: bool | None = None  # BatchNorm statistics over all replicas; None: when more than one
    jit_compile: bool = False  # XLA for the train step's forward and backward pass (GPUs; slower on CPUs)
    log_every: int = 20  # steps between progress-bar and TensorBoard batch updates
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at epoch ends only
    preview_images: int = 4  # validation images shown in TensorBoard (stages with image outputs)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    stage: str
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    init: InitConfig = InitConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @classmethod
    def from_flags(cls, stage: str, **flags: Any) -> "RunConfig":
        """A config from flat flag names, as the command line gives them:
        RunConfig.from_flags("aecnn", records_dir="r", batch_size=8, codec="residual", codec_width=16)."""
        return cls(stage).replace(**flags)

    def replace(self, **fields: Any) -> "RunConfig":
        """A copy with fields replaced, named by flat flag or dotted path:
        config.replace(batch_size=8) is config.replace(**{"data.batch_size": 8})."""
        return from_fields(self, {name if "." in name else flag_path(name): value for name, value in fields.items()})

    def get(self, path: str) -> Any:
        """The value at a dotted path ("data.batch_size", "model.codec.kind", "model.codec.width")."""
        value = self
        for part in path.split("."):
            value = value.params[part] if isinstance(value, CodecConfig) and part != "kind" else getattr(value, part)
        return value

    def to_dict(self, omit: Iterable[str] = ()) -> dict:
        """{"stage", <section>: {field: value}} without the dotted paths (or whole sections) in `omit`."""
        omitted = set(omit)
        result = {"stage": self.stage}
        for section in SECTIONS:
            if section in omitted:
                continue
            values = {}
            for field in dataclasses.fields(getattr(self, section)):
                if f"{section}.{field.name}" in omitted:
                    continue
                value = getattr(getattr(self, section), field.name)
                values[field.name] = value.to_dict() if isinstance(value, CodecConfig) else value
            result[section] = values
        return result

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """The inverse of to_dict: omitted sections and fields take their defaults; an unknown one is refused."""
        sections = {}
        for section in SECTIONS:
            kind = SECTIONS[section]
            given = dict(values.get(section, {}))
            known = {field.name for field in dataclasses.fields(kind)}
            unknown = set(given) - known
            if unknown:
                raise ValueError(f"{section}: unknown field(s) {', '.join(sorted(unknown))}")
            if section == "model" and "codec" in given:
                given["codec"] = CodecConfig.from_dict(given["codec"])
            sections[section] = kind(**given)
        unknown = set(values) - set(SECTIONS) - {"stage"}
        if unknown:
            raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}")
        return cls(stage=values["stage"], **sections)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
            "init": InitConfig, "runtime": RuntimeConfig}

# Each flat flag of tfcxr.main and its dotted place in the tree. --codec_<parameter> flags go to
# model.codec.<parameter> (CODEC_FLAG_PREFIX); --autoencoder and --init_autoencoder are aliases.
FLAGS = {
    "records_dir": "data.records_dir", "batch_size": "data.batch_size", "image_size": "data.image_size",
    "resize_size": "data.resize_size", "augment": "data.augment", "patches_per_image": "data.patches_per_image",
    "codec_validation": "data.codec_validation",
    "backbone": "model.backbone", "weights": "model.weights", "codec": "model.codec.kind",
    "learning_rate": "optimizer.learning_rate", "classification_weight": "optimizer.classification_weight",
    "latent_rate_weight": "optimizer.latent_rate_weight",
    "latent_rate_budget": "optimizer.latent_rate_budget", "lr_schedule": "optimizer.schedule",
    "epochs": "schedule.epochs", "steps_per_epoch": "schedule.steps_per_epoch", "val_steps": "schedule.val_steps",
    "init_classifier": "init.classifier", "init_codec": "init.codec",
    **{name: f"runtime.{name}" for name in (field.name for field in dataclasses.fields(RuntimeConfig))},
}
CODEC_FLAG_PREFIX = "codec_"
# What a resumed run may change: nothing of its math (the epoch count only upwards).
RESUMABLE_CHANGES = ("schedule.epochs", "runtime.log_every", "runtime.checkpoint_every", "runtime.preview_images")


def flag_path(flag: str) -> str:
    """The dotted field of a flat flag: FLAGS's, or model.codec.<parameter> for --codec_<parameter>."""
    if flag in FLAGS:
        return FLAGS[flag]
    if flag.startswith(CODEC_FLAG_PREFIX):
        return f"model.codec.{flag.removeprefix(CODEC_FLAG_PREFIX)}"
    raise KeyError(f"--{flag}: not a field of the run's config")


def from_fields(config: RunConfig, paths: Mapping[str, Any]) -> RunConfig:
    """`config` with each dotted path of `paths` set (model.codec.<parameter> included)."""
    by_section: dict[str, dict[str, Any]] = {}
    for path, value in paths.items():
        section, _, name = path.partition(".")
        by_section.setdefault(section, {})[name] = value
    changes = {}
    for section, values in by_section.items():
        if section == "stage":
            changes["stage"] = values[""]
            continue
        current = getattr(config, section)
        codec = {name.removeprefix("codec."): v for name, v in values.items() if name.startswith("codec.")}
        plain = {name: v for name, v in values.items() if not name.startswith("codec.")}
        if codec:
            old = current.codec
            kind = codec.pop("kind", old.kind)
            params = {**(old.params if kind == old.kind else {}), **codec}
            plain["codec"] = CodecConfig(kind, params)
        changes[section] = dataclasses.replace(current, **plain)
    return dataclasses.replace(config, **changes)


def describe(path: str) -> str:
    """The flag a user types for a dotted path (for messages): "model.codec.width" -> "--codec_width"."""
    for flag, place in FLAGS.items():
        if place == path:
            return f"--{flag}"
    if path.startswith("model.codec."):
        return f"--{CODEC_FLAG_PREFIX}{path.removeprefix('model.codec.')}"
    return path
