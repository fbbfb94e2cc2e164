"""What the training loop needs of each stage, as records (TF Model Garden's Task): the inputs, the
model, the loss terms, the validation metrics and the initialisation of a fresh run.

task          model                         loss                                   starts from
BASELINE      DenseNet121 BL5 (stage 1)     BCE with logits                        ImageNet, or init.classifier
AUTOENCODER   a codec (stage 2)             MSE (+ w * latent rate, if asked)       its codec's initialisation
AECNN         codec + classifier (stage 3)  0.9 BCE + 0.1 MSE                      init.codec + init.classifier

tfcxr/stages.py pairs each task with its evaluation and export.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tfcxr import models, storage
from tfcxr.config import RunConfig
from tfcxr.constants import CLASSIFICATION_WEIGHT, LATENT_LEVELS, SMALL_SIZE, STAGE1_CROP, STAGE2_PATCH, STAGE3_CROP
from tfcxr.data import pipeline, schema
from tfcxr.data.records import Records
from tfcxr.models import metrics as metrics_lib
from tfcxr.models.compression import thumbnail

Batch = metrics_lib.Batch
Outputs = metrics_lib.Outputs
LabelNames = Sequence[str]


def no_initialisation(model: keras.Model, config: RunConfig) -> None:
    """A fresh run starts from the weights build_model gave it."""


def nothing_derived(config: RunConfig) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything that differs between stages in training; the rest is the one loop in loop.py.

    inputs: what the model reads from the records (data.image_size / resize_size override its sizes).
    build_model: (config, label names) -> keras.Model, called inside strategy.scope().
    loss: (batch, outputs) -> {"loss": [B], ...}: per-example terms, "loss" is minimised.
    metrics: (label names) -> the ValidationMetric objects logged as val_<name> each epoch.
    requires: the config's init files the task cannot start without ("init.codec", ...).
    initialize: (model, config) -> None: loads a fresh run's starting weights (init files); never on resume.
    derive: (config) -> {dotted field: value} the run takes from elsewhere (stage 3: its codec from init.codec).
    omits: the config fields that do not apply (left out of config.json).
    image_outputs: model outputs shown as images in TensorBoard, beside the input.
    loss_for: (config) -> the loss at the run's settings (stage 3: its classification_weight); None: `loss`.
    eval_geometry: (config) -> how validation reads originals: "resize" or "full" (InputSpec.eval_geometry).
    recommended_pixels: (config) -> the training pixels (steps x global batch x image side^2) the model needs; a run
        far below them says so.
    """

    inputs: pipeline.InputSpec
    build_model: Callable[[RunConfig, LabelNames], keras.Model]
    loss: Callable[[Batch, Outputs], dict[str, tf.Tensor]]
    metrics: Callable[[LabelNames], list[metrics_lib.ValidationMetric]] = lambda label_names: []
    requires: tuple[str, ...] = ()
    initialize: Callable[[keras.Model, RunConfig], None] = no_initialisation
    derive: Callable[[RunConfig], dict[str, Any]] = nothing_derived
    omits: tuple[str, ...] = ()
    image_outputs: tuple[str, ...] = ()
    loss_for: Callable[[RunConfig], Callable[[Batch, Outputs], dict[str, tf.Tensor]]] | None = None
    eval_geometry: Callable[[RunConfig], str] = lambda config: "resize"
    recommended_pixels: Callable[[RunConfig], int | None] = lambda config: None

    def configured(self, config: RunConfig) -> "Task":
        """This task with the loss of the run's settings (loss_for), what the loop trains."""
        return dataclasses.replace(self, loss=self.loss_for(config)) if self.loss_for else self

    def input_spec(self, config: RunConfig) -> pipeline.InputSpec:
        """The task's inputs at the run's sizes and validation geometry."""
        inputs = self.inputs.with_sizes(config.data.image_size, config.data.resize_size)
        return dataclasses.replace(inputs, eval_geometry=self.eval_geometry(config))

    def budget_note(self, config: RunConfig, steps_per_epoch: int) -> str | None:
        """One line when the run's pixels (epochs x steps x batch x side^2) are far below (under half) the model's
        recommended_pixels: the same pixels in larger or smaller patches count the same."""
        recommended = self.recommended_pixels(config)
        batch_size, side = config.data.batch_size, self.input_spec(config).image_size
        pixels = config.schedule.epochs * steps_per_epoch * batch_size * side**2
        if not recommended or pixels * 2 >= recommended:
            return None
        return (f"note: this run trains {config.schedule.epochs} epochs x {steps_per_epoch} steps of {batch_size} "
                f"{side}-px images = {pixels / 1e6:,.0f} megapixels, far below the ~{recommended / 1e6:,.0f} its model "
                f"needs; set --epochs / --steps_per_epoch (configs/stage2_residual.cfg states its budget in steps)")

    def dataset(self, config: RunConfig, split: str, *, training: bool,
                input_context: tf.distribute.InputContext | None = None, seed: int | None = None,
                repeat: bool = False, skip_batches: int = 0, records: Records | None = None) -> tf.data.Dataset:
        """The task's split of data.records_dir through tfcxr.data.pipeline (`records`: that folder, already open)."""
        inputs = self.input_spec(config)
        return pipeline.make_dataset(
            records or config.data.records_dir, split, inputs, config.data.batch_size, training, augment=config.data.augment,
            seed=seed, input_context=input_context, repeat=repeat, skip_batches=skip_batches,
            patches_per_image=config.data.patches_per_image if training and inputs.patches else 1)

    def augmentation(self, config: RunConfig) -> keras.layers.Layer | None:
        """What the training step applies to each batch on the accelerator (the rotation left to it)."""
        return pipeline.device_augmentation(self.inputs, config.data.augment)


def classification_loss(batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
    """BCE with logits, averaged over the labels: [B]."""
    labels = tf.cast(batch["labels"], tf.float32)
    logits = tf.cast(outputs["logits"], tf.float32)
    return {"loss": tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=-1)}


def reconstruction_loss(batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
    """MSE between the input image and its reconstruction, averaged over pixels: [B]."""
    error = tf.cast(outputs["reconstruction"], tf.float32) - tf.cast(batch["image"], tf.float32)
    return {"loss": tf.reduce_mean(tf.square(error), axis=[1, 2, 3])}


def latent_rate(latent: tf.Tensor) -> tf.Tensor:
    """latent [B,h,w,1] in [0, 1] -> its mean absolute difference between horizontal and vertical neighbours,
    in 8-bit levels: [B]. What a lossless coder's spatial prediction (PNG's Sub / Up filters, WebP's
    predictors) leaves to code: a latent with a smaller one stores in fewer bytes."""
    levels = tf.cast(latent, tf.float32) * LATENT_LEVELS
    across = tf.reduce_mean(tf.abs(levels[:, :, 1:] - levels[:, :, :-1]), axis=[1, 2, 3])
    down = tf.reduce_mean(tf.abs(levels[:, 1:] - levels[:, :-1]), axis=[1, 2, 3])
    return 0.5 * (across + down)


def thumbnail_rate(images: tf.Tensor) -> tf.Tensor:
    """images [B,H,W,1] in [0, 1] -> latent_rate of their 8-bit bicubic thumbnails (what the residual codec's
    latent is compared with in bytes): [B]."""
    return latent_rate(thumbnail(tf.cast(images, tf.float32), "bicubic", quantized=True))


def reconstruction_loss_for(config: RunConfig) -> Callable[[Batch, Outputs], dict[str, tf.Tensor]]:
    """Stage 2's loss: MSE, plus optimizer.latent_rate_weight (w) times a rate term when w is not 0:
    the latent's latent_rate, or with optimizer.latent_rate_budget (r > 0) only its excess over r times the
    thumbnails' rate, on the batch's means: w * max(0, mean rate - r * mean thumbnail rate), the same for every
    example (a cap on the mean, as bytes are compared over a set of images: within it each patch spends freely)."""
    weight, budget = config.optimizer.latent_rate_weight, config.optimizer.latent_rate_budget
    if weight < 0:
        raise ValueError(f"--latent_rate_weight={weight}: a weight >= 0")
    if budget < 0 or (budget and not weight):
        raise ValueError(f"--latent_rate_budget={budget}: a ratio > 0 to the thumbnail's rate, with --latent_rate_weight > 0 "
                         f"(0: no budget)")
    if not weight:
        return reconstruction_loss

    def loss(batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
        mse = reconstruction_loss(batch, outputs)["loss"]
        rate = latent_rate(outputs["latent"])
        if not budget:
            return {"loss": mse + weight * rate, "mse": mse, "rate": rate}
        thumbnail_rates = thumbnail_rate(batch["image"])
        excess = tf.nn.relu(tf.reduce_mean(rate) - budget * tf.reduce_mean(thumbnail_rates))
        return {"loss": mse + weight * excess * tf.ones_like(mse), "mse": mse, "rate": rate,
                "rate_thumbnail": thumbnail_rates}

    return loss


def joint_loss(batch: Batch, outputs: Outputs, weight: float = CLASSIFICATION_WEIGHT) -> dict[str, tf.Tensor]:
    """AECNN: weight * BCE + (1 - weight) * MSE (the paper's weight 0.9), with both terms: [B]."""
    bce = classification_loss(batch, outputs)["loss"]
    mse = reconstruction_loss(batch, outputs)["loss"]
    return {"loss": weight * bce + (1.0 - weight) * mse, "bce": bce, "mse": mse}


def joint_loss_for(config: RunConfig) -> Callable[[Batch, Outputs], dict[str, tf.Tensor]]:
    """joint_loss at optimizer.classification_weight."""
    weight = config.optimizer.classification_weight
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--classification_weight={weight}: a weight in [0, 1]")
    return lambda batch, outputs: joint_loss(batch, outputs, weight)


def classification_metrics(label_names: LabelNames) -> list[metrics_lib.ValidationMetric]:
    return [metrics_lib.ClassificationAUC(tuple(label_names))]


def reconstruction_metrics(label_names: LabelNames) -> list[metrics_lib.ValidationMetric]:
    return [metrics_lib.ReconstructionQuality()]


def joint_metrics(label_names: LabelNames) -> list[metrics_lib.ValidationMetric]:
    return classification_metrics(label_names) + reconstruction_metrics(label_names)


# Models take any image size: the baseline trains on 224 crops and validates on 256 resizes.
def build_classifier(config: RunConfig, label_names: LabelNames, weights: str | None = None) -> keras.Model:
    """model.backbone with one logit per label of the run's records."""
    return models.build_classifier(weights=weights, label_names=label_names, backbone=config.model.backbone)


def build_baseline(config: RunConfig, label_names: LabelNames) -> keras.Model:
    """ImageNet (model.weights) DenseNet121, or random where init.classifier will set every weight."""
    weights = config.model.weights if config.model.weights not in (None, "none") else None
    weights = None if config.init.classifier else weights
    return models.build_baseline(build_classifier(config, label_names, weights))


def build_autoencoder(config: RunConfig, label_names: LabelNames = ()) -> keras.Model:
    return models.build_autoencoder(*models.build_codec(config.model.codec))


def build_aecnn(config: RunConfig, label_names: LabelNames) -> keras.Model:
    """The run's codec and classifier, at their initialisation (initialize_aecnn loads stages 2 and 1)."""
    return models.build_aecnn(*models.build_codec(config.model.codec), build_classifier(config, label_names))


def initialize_from_files(model: keras.Model, config: RunConfig) -> None:
    """The codec from init.codec's .keras and the classifier from init.classifier's, where given."""
    models.load_stage_weights(model, config.init.codec, config.init.classifier)


def codec_validation(config: RunConfig) -> str:
    """data.codec_validation, or the codec's own (its class's validation): "full" or "resize"."""
    geometry = config.data.codec_validation or codec_class(config).validation
    if geometry not in pipeline.EVAL_GEOMETRIES:
        raise ValueError(f"--codec_validation={geometry}: one of {', '.join(pipeline.EVAL_GEOMETRIES)}")
    return geometry


def codec_recommended_pixels(config: RunConfig) -> int | None:
    """The codec class's recommended_pixels for a run from scratch; None for one from init.codec (a fine-tune)."""
    return None if config.init.codec else codec_class(config).recommended_pixels


def codec_class(config: RunConfig) -> type[models.Codec]:
    """The class of the run's codec (one line naming an unknown kind or parameter)."""
    return type(models.make_codec(config.model.codec))


def codec_of_init(config: RunConfig) -> dict[str, Any]:
    """Stage 3 trains the codec of the run it starts from: init.codec's saved spec."""
    if not config.init.codec:
        return {}
    if not storage.isfile(config.init.codec):
        raise FileNotFoundError(f"--init_codec={config.init.codec}: file not found (train the earlier stage first)")
    codec = models.read_spec(config.init.codec).get("codec")
    if codec is None:
        raise ValueError(f"--init_codec={config.init.codec}: holds no codec (expected a codec run's best.keras)")
    return {"model.codec": models.make_codec(codec).config().to_dict()}  # every parameter, defaults included


CLASSIFIER_ONLY = ("model.codec", "init.codec")
BASELINE = Task(
    pipeline.InputSpec(schema.SMALL, STAGE1_CROP, resize_size=SMALL_SIZE, rotation="device", contrast=True,
                       fmix=True, tencrop=True, shuffle_records=4096),
    build_baseline, classification_loss, metrics=classification_metrics, initialize=initialize_from_files,
    omits=CLASSIFIER_ONLY + ("data.patches_per_image", "data.codec_validation", "optimizer.classification_weight",
                             "optimizer.latent_rate_weight", "optimizer.latent_rate_budget"))
AUTOENCODER = Task(
    pipeline.InputSpec(schema.ENCODED, STAGE2_PATCH, vertical_flip=True, patches=True),
    build_autoencoder, reconstruction_loss, metrics=reconstruction_metrics, initialize=initialize_from_files,
    derive=codec_of_init, loss_for=reconstruction_loss_for,
    omits=("model.backbone", "model.weights", "init.classifier", "data.resize_size", "data.augment",
           "optimizer.classification_weight"),
    image_outputs=("reconstruction", "latent"), eval_geometry=codec_validation, recommended_pixels=codec_recommended_pixels)
AECNN = Task(
    pipeline.InputSpec(schema.ENCODED, STAGE3_CROP, rotation="device", tencrop=True),
    build_aecnn, joint_loss, metrics=joint_metrics, requires=("init.codec", "init.classifier"),
    initialize=initialize_from_files, derive=codec_of_init, loss_for=joint_loss_for,
    omits=("model.weights", "data.resize_size", "data.augment", "data.patches_per_image", "data.codec_validation",
           "optimizer.latent_rate_weight", "optimizer.latent_rate_budget"),
    image_outputs=("reconstruction", "latent"))
