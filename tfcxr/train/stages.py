"""The training stages of AECNN as records; the loop in loop.py, the modes of tfcxr.main and the
exporter run any of them from its record alone.

name         alias  what it trains                                   best.keras
"baseline"     1    D121 BL5: BCE with logits                        the baseline
"autoencoder"  2    autoencoder head start: MSE on the reconstruction the autoencoder
"aecnn"        3    joint AECNN from 1 and 2: 0.9 BCE + 0.1 MSE      the AECNN

A new stage is one Stage record in STAGES and one flagfile naming it (--stage=<name>).
"""

import dataclasses
from collections.abc import Callable, Mapping

import keras
import tensorflow as tf

from tfcxr import models
from tfcxr.constants import (CLASSIFICATION_WEIGHT, EPOCHS, LABELS, LEARNING_RATE, SMALL_SIZE, STAGE1_CROP,
                             STAGE2_PATCH, STAGE3_CROP)
from tfcxr.data import pipeline, schema
from tfcxr.models import metrics as metrics_lib
from tfcxr.models import residual_codec

Batch = metrics_lib.Batch
Outputs = metrics_lib.Outputs
CLASSIFICATION, RECONSTRUCTION = "classification", "reconstruction"  # the evaluations of --mode=evaluate


@dataclasses.dataclass
class TrainConfig:
    """The settings of one run (the flags of tfcxr.main); written to model_dir/config.json."""

    records_dir: str
    model_dir: str
    batch_size: int  # global, over all replicas and workers
    epochs: int = EPOCHS
    steps_per_epoch: int | None = None  # None: one pass over the train split
    val_steps: int | None = None  # None: one pass over the val split
    image_size: int | None = None  # None: the stage's size (its InputSpec)
    resize_size: int | None = None
    weights: str | None = "imagenet"  # DenseNet121: "imagenet", None or a local .h5
    augment: str = "bl5"  # "bl5", or "fmix" where the stage's inputs allow it
    learning_rate: float = LEARNING_RATE
    mixed_precision: str = "none"  # "none", "bfloat16" or "float16"
    seed: int = 0
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism()
    sync_batchnorm: bool | None = None  # BatchNorm statistics over all replicas; None: when more than one
    jit_compile: bool = False  # XLA for the train step's forward and backward pass (GPUs; slower on CPUs)
    init_autoencoder: str | None = None  # aecnn: the autoencoder stage's best.keras
    init_classifier: str | None = None  # aecnn: the baseline stage's best.keras
    log_every: int = 20  # steps between progress-bar and TensorBoard batch updates
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at epoch ends only
    preview_images: int = 4  # validation images shown in TensorBoard (stages with image_outputs)
    autoencoder: str = "paper"  # codec stages: "paper" (autoencoder.py) or "residual" (residual_codec.py)
    residual_width: int = residual_codec.WIDTH  # residual codec: channels of its hidden convolutions
    residual_decoder_depth: int = residual_codec.DECODER_DEPTH  # residual codec: 3x3 convolutions of the detail
    residual_encoder_depth: int = residual_codec.ENCODER_DEPTH  # residual codec: convolutions of the correction
    patches_per_image: int = pipeline.PATCHES_PER_IMAGE  # inputs with patches: random patches per decoded original
    backbone: str = "densenet121"  # the classifier's trunk: a key of models.BACKBONES


@dataclasses.dataclass(frozen=True)
class Stage:
    """Everything that differs between stages; the rest is the one loop in loop.py.

    name: what --stage and config.json call it; number: the paper's stage number, an alias for --stage.
    inputs: what the model reads from the records (--image_size / --resize_size override its sizes).
    build_model: (config) -> keras.Model, called inside strategy.scope().
    loss: (batch, outputs) -> {"loss": [B], ...}: per-example terms, "loss" is minimised.
    metrics: (config) -> the ValidationMetric objects logged as val_<name> each epoch.
    init_files: (config) -> {flag: path} that must exist before training.
    image_outputs: model outputs shown as images in TensorBoard, beside the input.
    evaluations: what --mode=evaluate measures: CLASSIFICATION (ROC-AUC with CIs; also what
      --mode=explain needs), RECONSTRUCTION (PSNR / SSIM against resizing).
    export_name: the TF Serving model name of --mode=export; None: the stage is not exported.
    """

    name: str
    number: int | None
    inputs: pipeline.InputSpec
    build_model: Callable[[TrainConfig], keras.Model]
    loss: Callable[[Batch, Outputs], dict[str, tf.Tensor]]
    metrics: Callable[[TrainConfig], list[metrics_lib.ValidationMetric]] = lambda config: []
    init_files: Callable[[TrainConfig], dict[str, str | None]] = lambda config: {}
    image_outputs: tuple[str, ...] = ()
    evaluations: tuple[str, ...] = ()
    export_name: str | None = None

    def input_spec(self, config: TrainConfig) -> pipeline.InputSpec:
        """The stage's inputs at the run's sizes."""
        return self.inputs.with_sizes(config.image_size, config.resize_size)

    def dataset(self, config: TrainConfig, split: str, *, training: bool,
                input_context: tf.distribute.InputContext | None = None, seed: int | None = None,
                repeat: bool = False, skip_batches: int = 0) -> tf.data.Dataset:
        """The stage's split of config.records_dir through tfcxr.data.pipeline."""
        inputs = self.input_spec(config)
        return pipeline.make_dataset(
            config.records_dir, split, inputs, config.batch_size, training, augment=config.augment, seed=seed,
            input_context=input_context, repeat=repeat, skip_batches=skip_batches,
            patches_per_image=config.patches_per_image if training and inputs.patches else 1)

    def augmentation(self, config: TrainConfig) -> keras.layers.Layer | None:
        """What the training step applies to each batch on the accelerator (the rotation left to it)."""
        return pipeline.device_augmentation(self.inputs, config.augment)


def classification_loss(batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
    """BCE with logits, averaged over the labels: [B]."""
    labels = tf.cast(batch["labels"], tf.float32)
    logits = tf.cast(outputs["logits"], tf.float32)
    return {"loss": tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=-1)}


def reconstruction_loss(batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
    """MSE between the input image and its reconstruction, averaged over pixels: [B]."""
    error = tf.cast(outputs["reconstruction"], tf.float32) - tf.cast(batch["image"], tf.float32)
    return {"loss": tf.reduce_mean(tf.square(error), axis=[1, 2, 3])}


def joint_loss(batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
    """AECNN: CLASSIFICATION_WEIGHT * BCE + (1 - CLASSIFICATION_WEIGHT) * MSE, with both terms: [B]."""
    bce = classification_loss(batch, outputs)["loss"]
    mse = reconstruction_loss(batch, outputs)["loss"]
    return {"loss": CLASSIFICATION_WEIGHT * bce + (1.0 - CLASSIFICATION_WEIGHT) * mse, "bce": bce, "mse": mse}


def label_names(config: TrainConfig) -> tuple[str, ...]:
    """The run's labels: its records' manifest's (ChestX-ray14's 14 without records)."""
    return pipeline.label_names(config.records_dir) if config.records_dir else LABELS


def classification_metrics(config: TrainConfig) -> list[metrics_lib.ValidationMetric]:
    return [metrics_lib.ClassificationAUC(label_names(config))]


def reconstruction_metrics(config: TrainConfig) -> list[metrics_lib.ValidationMetric]:
    return [metrics_lib.ReconstructionQuality()]


def joint_metrics(config: TrainConfig) -> list[metrics_lib.ValidationMetric]:
    return classification_metrics(config) + reconstruction_metrics(config)


# Models take any image size: the baseline trains on 224 crops and validates on 256 resizes.
def build_baseline(config: TrainConfig) -> keras.Model:
    weights = config.weights if config.weights not in (None, "none") else None
    return models.build_baseline(build_classifier(config, weights), config.backbone)


def build_classifier(config: TrainConfig, weights: str | None = None) -> keras.Model:
    """config.backbone with one logit per label of the run's records."""
    return models.build_classifier(weights=weights, num_labels=len(label_names(config)), backbone=config.backbone)


def build_codec(config: TrainConfig) -> tuple[keras.Model, keras.Model]:
    """(encoder, decoder) of --autoencoder and its --residual_* capacity."""
    return models.build_codec(config.autoencoder, config.residual_width, config.residual_decoder_depth,
                              config.residual_encoder_depth)


def check_same_codec(config: TrainConfig, encoder: keras.Model, decoder: keras.Model) -> None:
    """The AECNN builds the codec of the autoencoder run it loads: one line naming the file otherwise."""
    if config.init_autoencoder is None:
        return
    loaded = models.load_model(config.init_autoencoder)
    for built in (encoder, decoder):
        names = [layer.name for layer in loaded.layers]
        source = loaded.get_layer(built.name) if built.name in names else None  # absent: load_stage_weights says so
        if source is not None and [w.shape for w in source.weights] != [w.shape for w in built.weights]:
            raise ValueError(f"{config.init_autoencoder}: its {built.name} is not the codec that "
                             f"--autoencoder={config.autoencoder} and --residual_* build here: pass the "
                             f"autoencoder run's --autoencoder / --residual_* flags (its config.json)")


def build_autoencoder(config: TrainConfig) -> keras.Model:
    return models.build_autoencoder(*build_codec(config))


def build_aecnn(config: TrainConfig) -> keras.Model:
    """AECNN with the encoder and decoder of the autoencoder's best.keras and the baseline's classifier."""
    encoder, decoder = build_codec(config)
    check_same_codec(config, encoder, decoder)
    aecnn = models.build_aecnn(encoder, decoder, build_classifier(config), config.backbone)
    return models.load_stage_weights(aecnn, config.init_autoencoder, config.init_classifier)


def aecnn_files(config: TrainConfig) -> dict[str, str | None]:
    return {"init_autoencoder": config.init_autoencoder, "init_classifier": config.init_classifier}


BASELINE = Stage(
    "baseline", 1,
    pipeline.InputSpec(schema.SMALL, STAGE1_CROP, resize_size=SMALL_SIZE, rotation="device", contrast=True,
                       fmix=True, tencrop=True, shuffle_records=4096),
    build_baseline, classification_loss, metrics=classification_metrics,
    evaluations=(CLASSIFICATION,), export_name="tfcxr_d121")
AUTOENCODER = Stage(
    "autoencoder", 2,
    pipeline.InputSpec(schema.ENCODED, STAGE2_PATCH, vertical_flip=True, patches=True),
    build_autoencoder, reconstruction_loss, metrics=reconstruction_metrics,
    image_outputs=("reconstruction", "latent"), evaluations=(RECONSTRUCTION,), export_name="tfcxr_autoencoder")
AECNN = Stage(
    "aecnn", 3,
    pipeline.InputSpec(schema.ENCODED, STAGE3_CROP, rotation="device", tencrop=True),
    build_aecnn, joint_loss, metrics=joint_metrics, init_files=aecnn_files,
    image_outputs=("reconstruction", "latent"), evaluations=(CLASSIFICATION, RECONSTRUCTION),
    export_name="tfcxr_aecnn")
class Stages(Mapping):
    """Stage records by name; the paper's numbers (1, "1", ...) are aliases: STAGES[1] is STAGES["baseline"].
    Iterating gives the names."""

    def __init__(self, *records: Stage):
        self.records = {stage.name: stage for stage in records}

    def __getitem__(self, key: str | int) -> Stage:
        for stage in self.records.values():
            if str(key) in (stage.name, str(stage.number)):
                return stage
        aliases = ", ".join(f"{s.name} ({s.number})" if s.number else s.name for s in self.records.values())
        raise KeyError(f"--stage={key}: no such stage; one of {aliases}")

    def __iter__(self):
        return iter(self.records)

    def __len__(self):
        return len(self.records)


STAGES = Stages(BASELINE, AUTOENCODER, AECNN)
