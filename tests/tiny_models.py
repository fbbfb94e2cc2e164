"""Tiny stand-ins for DenseNet121 in the evaluation / export / codec / training tests (CPU seconds).

`tiny_densenet` keeps the classifier's contract (ImageNet-normalized [B,H,W,3] -> logits
[B,14], its last conv activation named models.FEATURE_LAYER), so the real encoder, decoder,
baseline and AECNN builders wrap it exactly as they wrap DenseNet121. `tiny_task` is stage 1
training a smaller one still (test_train.py in this process, test_train_distributed.py in child
processes).
"""

import dataclasses

import keras
import numpy as np
from keras import layers

from tfcxr import models
from tfcxr.constants import NUM_LABELS
from tfcxr.train import tasks

SIZES = dict(image_size=32, resize_size=40)  # stage 1: the 64 px image/small resized, then cropped


def tiny_densenet(seed=0):
    """DenseNet121's stand-in: two strided convolutions, FEATURE_LAYER, pooling, 14 logits; seeded."""
    keras.utils.set_random_seed(seed)
    image = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(image)  # [B,H/2,W/2,8]
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="conv2")(x)  # [B,H/4,W/4,16]
    features = layers.ReLU(name=models.FEATURE_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(features)  # [B,16]
    logits = layers.Dense(NUM_LABELS, name="logits")(x)  # [B,14]
    return keras.Model(image, logits, name="classifier")


def tiny_baseline(seed=0):
    """Stage 1's model (models.build_baseline) around tiny_densenet."""
    return models.build_baseline(tiny_densenet(seed))


def tiny_aecnn(seed=0):
    """Stage 3's model (the paper's encoder and decoder, untrained) around tiny_densenet."""
    keras.utils.set_random_seed(seed)
    return models.build_aecnn(models.build_encoder(), models.build_decoder(), tiny_densenet(seed))


def box_codec(model):
    """Sets `model`'s encoder / decoder to a 5x5 box average and nearest upsampling (a sane codec).

    An untrained autoencoder reconstructs noise; this one gives realistic PSNRs without training.
    """
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    conv, project = encoder.get_layer("encoder_conv"), encoder.get_layer("encoder_project")
    kernel, bias = (np.zeros_like(w) for w in conv.get_weights())
    kernel[..., 0] = 1 / 25  # filter 0: the 5x5 mean (ELU keeps it, as it is >= 0)
    conv.set_weights([kernel, bias])
    kernel, bias = (np.zeros_like(w) for w in project.get_weights())
    kernel[0, 0, 0, 0] = 1
    project.set_weights([kernel, bias])
    up = decoder.get_layer("decoder_conv")
    kernel, bias = (np.zeros_like(w) for w in up.get_weights())
    kernel[1, 1, 0, :] = 1  # every one of the 16 sub-pixels copies the latent pixel
    up.set_weights([kernel, bias])
    return model


def toy_trunk(image, weights):
    """BACKBONES["toy"]'s trunk: two strided convolutions on `image` ([B,H,W,3] -> [B,H/4,W/4,8]), its
    last activation "toy_features"; random weights only."""
    if weights is not None:
        raise ValueError(f"--backbone=toy has no pretrained weights (got {weights})")
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="toy_conv1")(image)  # [B,H/2,W/2,4]
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="toy_conv2")(x)  # [B,H/4,W/4,8]
    return keras.Model(image, layers.ReLU(name="toy_features")(x), name="toy_trunk")


TOY_BACKBONE = models.Backbone(toy_trunk, models.ImageNetNormalization, "toy_features")
# tfcxr.main's child process runs this first (helpers.run_mode's setup): --backbone=toy exists there.
TOY_BACKBONE_SETUP = "import sys\nsys.path.insert(0, 'tests')\nimport tiny_models\ntiny_models.register_toy_backbone()"


def register_toy_backbone():
    """BACKBONES["toy"] (--backbone=toy): a stage with a classifier, seconds instead of DenseNet121's
    minutes, where the trunk takes no part in what a test checks; a new backbone is one entry."""
    models.BACKBONES["toy"] = TOY_BACKBONE


def tiny_classifier(config, label_names=(), batchnorm=False):
    """Stage 1's baseline around a 2-layer classifier instead of DenseNet121 (trains in seconds).

    batchnorm: the classifier's TorchBatchNormalization after the convolution, with momentum 0 so that
    its moving statistics after a step are that step's batch statistics (the fused kernel on one
    replica, the all-reduced moments when synchronized).
    """
    image = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(image)  # [B,H/2,W/2,4]
    if batchnorm:
        x = models.TorchBatchNormalization(momentum=0.0, name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # [B,4]
    logits = keras.layers.Dense(NUM_LABELS, dtype="float32", name="logits")(x)  # [B,14]
    return models.build_baseline(keras.Model(image, logits, name="classifier"))


def as_task(cls, task):
    """`task`'s record as an instance of the Task subclass `cls` (which overrides a method)."""
    return cls(**{field.name: getattr(task, field.name) for field in dataclasses.fields(task)})


@dataclasses.dataclass(frozen=True)
class FixedInputTask(tasks.Task):
    """The eval pipeline on train and no device augmentation: a global batch is the same images
    however it is split over replicas."""

    def dataset(self, config, split, *, training, **kwargs):
        return super().dataset(config, split, training=False, **kwargs)

    def augmentation(self, config):
        return None


def tiny_task(fixed_input=False, batchnorm=False):
    """The baseline's task with the tiny classifier; `fixed_input`: as FixedInputTask."""
    build = (lambda config, label_names: tiny_classifier(config, batchnorm=True)) if batchnorm else tiny_classifier
    task = dataclasses.replace(tasks.BASELINE, build_model=build)
    return as_task(FixedInputTask, task) if fixed_input else task
