"""The three training stages of AECNN as small records; the loop in loop.py runs any of them.

stage 1  D121 BL5 baseline: BCE with logits                    (best.keras: the baseline)
stage 2  autoencoder head start: MSE on the reconstruction     (best.keras: the autoencoder)
stage 3  joint AECNN from stages 1 and 2: 0.9 BCE + 0.1 MSE    (best.keras: the AECNN)
"""

import dataclasses
import functools
from collections.abc import Callable

import tensorflow as tf

from tfcxr import models
from tfcxr.constants import CLASSIFICATION_WEIGHT, EPOCHS, LEARNING_RATE
from tfcxr.data import augment, pipeline
from tfcxr.models import compression, residual_codec


@dataclasses.dataclass
class TrainConfig:
    """The settings of one run (the flags of tfcxr.main); written to model_dir/config.json."""

    records_dir: str
    model_dir: str
    batch_size: int  # global, over all replicas and workers
    epochs: int = EPOCHS
    steps_per_epoch: int | None = None  # None: one pass over the train split
    val_steps: int | None = None  # None: one pass over the val split
    image_size: int | None = None  # None: the stage's size from constants
    resize_size: int | None = None
    weights: str | None = "imagenet"  # stage 1 DenseNet121: "imagenet", None or a local .h5
    augment: str = "bl5"  # stage 1: "bl5" or "fmix"
    learning_rate: float = LEARNING_RATE
    mixed_precision: str = "none"  # "none", "bfloat16" or "float16"
    seed: int = 0
    deterministic: bool = False  # tf.config.experimental.enable_op_determinism()
    sync_batchnorm: bool | None = None  # BatchNorm statistics over all replicas; None: when more than one
    jit_compile: bool = False  # XLA for the train step's forward and backward pass (GPUs; slower on CPUs)
    init_autoencoder: str | None = None  # stage 3: stage 2's best.keras
    init_classifier: str | None = None  # stage 3: stage 1's best.keras
    log_every: int = 20  # steps between progress-bar and TensorBoard batch updates
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: at epoch ends only
    preview_images: int = 4  # validation images shown in TensorBoard (stages 2 and 3)
    autoencoder: str = "paper"  # stages 2 and 3: "paper" (autoencoder.py) or "residual" (residual_codec.py)
    residual_width: int = residual_codec.WIDTH  # residual codec: channels of its hidden convolutions
    residual_decoder_depth: int = residual_codec.DECODER_DEPTH  # residual codec: 3x3 convolutions of the detail
    residual_encoder_depth: int = residual_codec.ENCODER_DEPTH  # residual codec: convolutions of the correction
    patches_per_image: int = pipeline.PATCHES_PER_IMAGE  # stage 2 training: random patches per decoded original


@dataclasses.dataclass(frozen=True)
class Stage:
    """What differs between stages. Everything else is the one loop in loop.py."""

    number: int
    build_model: Callable  # (config) -> keras.Model, called inside strategy.scope()
    loss: Callable  # (batch, outputs) -> {"loss": [B], ...}: per-example terms, "loss" is minimised
    make_dataset: Callable  # (config, split, training, input_context, seed, repeat) -> tf.data.Dataset
    init_files: Callable = lambda config: {}  # (config) -> {flag: path} that must exist before training
    augmentation: Callable = lambda config: None  # (config) -> Keras layer applied to the batch in the train step
    image_outputs: tuple = ()  # model outputs shown as images in TensorBoard, beside the input
    computes_auc: bool = False  # validation ROC-AUC of outputs["logits"] against batch["labels"]
    metrics: Callable | None = None  # (model, batch, outputs) -> {name: [B]}: logged as val_<name>, the mean


def classification_loss(batch, outputs):
    """BCE with logits, averaged over the labels: [B]."""
    labels = tf.cast(batch["labels"], tf.float32)
    logits = tf.cast(outputs["logits"], tf.float32)
    return {"loss": tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=-1)}


def reconstruction_loss(batch, outputs):
    """MSE between the input image and its reconstruction, averaged over pixels: [B]."""
    error = tf.cast(outputs["reconstruction"], tf.float32) - tf.cast(batch["image"], tf.float32)
    return {"loss": tf.reduce_mean(tf.square(error), axis=[1, 2, 3])}


def joint_loss(batch, outputs):
    """Stage 3: CLASSIFICATION_WEIGHT * BCE + (1 - CLASSIFICATION_WEIGHT) * MSE, with both terms: [B]."""
    bce = classification_loss(batch, outputs)["loss"]
    mse = reconstruction_loss(batch, outputs)["loss"]
    return {"loss": CLASSIFICATION_WEIGHT * bce + (1.0 - CLASSIFICATION_WEIGHT) * mse, "bce": bce, "mse": mse}


def reconstruction_metrics(model, batch, outputs):
    """PSNR and SSIM [B] of each validation image: the reconstruction from the float latent, from the
    latent rounded to 8 bits (what a PNG stores), and bicubic's round trip through the same size.

    Bicubic's numbers repeat every epoch (same images): the gap is one glance in log.csv and
    TensorBoard, at the cost of a resize, cheaper than a second pass over the decoded images.
    """
    images = tf.cast(batch["image"], tf.float32)  # [B,H,W,1]
    decoder = model.get_layer("decoder")
    candidates = {
        "": outputs["reconstruction"],
        "_8bit": decoder(compression.quantize(tf.cast(outputs["latent"], tf.float32)), training=False),
        "_bicubic": compression.resize_round_trip(images, "bicubic"),
    }
    metrics = {}
    for suffix, reconstruction in candidates.items():
        reconstruction = tf.cast(reconstruction, tf.float32)
        metrics[f"psnr{suffix}"] = tf.image.psnr(reconstruction, images, max_val=1.0)
        metrics[f"ssim{suffix}"] = tf.image.ssim(reconstruction, images, max_val=1.0)
    return metrics


def records_dataset(stage, config, split, training, input_context=None, seed=None, repeat=False):
    """The stage's split of config.records_dir through tfcxr.data.pipeline."""
    return pipeline.make_dataset(
        config.records_dir, split, stage, config.batch_size, training,
        image_size=config.image_size, resize_size=config.resize_size, augment=config.augment,
        seed=seed, input_context=input_context, repeat=repeat, rotation=None if stage == 2 else "device",
        patches_per_image=config.patches_per_image if stage == 2 and training else 1,
    )


def device_augmentation(stage, config):
    """The rotation (stage 1 BL5: and contrast) that records_dataset leaves to the training step."""
    return augment.device_augmentation(stage, config.augment)


# Models take any image size: stage 1 trains on 224 crops and validates on 256 resizes.
def build_baseline(config):
    weights = config.weights if config.weights not in (None, "none") else None
    return models.build_baseline(models.build_classifier(weights=weights))


def build_codec(config):
    """(encoder, decoder) of --autoencoder and its --residual_* capacity."""
    return models.build_codec(config.autoencoder, config.residual_width, config.residual_decoder_depth,
                              config.residual_encoder_depth)


def check_same_codec(config, encoder, decoder):
    """Stage 3 builds the codec of the stage-2 run it loads: one line naming the file otherwise."""
    if config.init_autoencoder is None:
        return
    loaded = models.load_model(config.init_autoencoder)
    for built in (encoder, decoder):
        names = [layer.name for layer in loaded.layers]
        source = loaded.get_layer(built.name) if built.name in names else None  # absent: load_stage_weights says so
        if source is not None and [w.shape for w in source.weights] != [w.shape for w in built.weights]:
            raise ValueError(f"{config.init_autoencoder}: its {built.name} is not the codec that "
                             f"--autoencoder={config.autoencoder} and --residual_* build here: pass the "
                             f"stage-2 run's --autoencoder / --residual_* flags (its config.json)")


def build_autoencoder(config):
    return models.build_autoencoder(*build_codec(config))


def build_aecnn(config):
    """AECNN with the encoder and decoder of stage 2's best.keras and the classifier of stage 1's."""
    encoder, decoder = build_codec(config)
    check_same_codec(config, encoder, decoder)
    aecnn = models.build_aecnn(encoder, decoder, models.build_classifier())
    return models.load_stage_weights(aecnn, config.init_autoencoder, config.init_classifier)


def stage3_files(config):
    return {"init_autoencoder": config.init_autoencoder, "init_classifier": config.init_classifier}


STAGES = {
    1: Stage(1, build_baseline, classification_loss, functools.partial(records_dataset, 1),
             augmentation=functools.partial(device_augmentation, 1), computes_auc=True),
    2: Stage(2, build_autoencoder, reconstruction_loss, functools.partial(records_dataset, 2),
             image_outputs=("reconstruction", "latent"), metrics=reconstruction_metrics),
    3: Stage(3, build_aecnn, joint_loss, functools.partial(records_dataset, 3), init_files=stage3_files,
             augmentation=functools.partial(device_augmentation, 3),
             image_outputs=("reconstruction", "latent"), computes_auc=True, metrics=reconstruction_metrics),
}
