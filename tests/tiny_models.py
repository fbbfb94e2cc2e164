"""Tiny stand-ins for DenseNet121 in the evaluation / export / codec tests (CPU seconds).

`tiny_classifier` keeps the classifier's contract (ImageNet-normalized [B,H,W,3] -> logits
[B,14], its last conv activation named models.FEATURES), so the real encoder, decoder,
baseline and AECNN builders wrap it exactly as they wrap DenseNet121.
"""

import keras
import numpy as np
from keras import layers

from tfcxr import models
from tfcxr.constants import NUM_LABELS


def tiny_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    image = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(image)  # [B,H/2,W/2,8]
    x = layers.Conv2D(16, 3, strides=2, padding="same", name="conv2")(x)  # [B,H/4,W/4,16]
    features = layers.ReLU(name=models.FEATURES)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(features)  # [B,16]
    logits = layers.Dense(NUM_LABELS, name="logits")(x)  # [B,14]
    return keras.Model(image, logits, name="classifier")


def tiny_baseline(seed=0):
    return models.build_baseline(tiny_classifier(seed))


def tiny_aecnn(seed=0):
    keras.utils.set_random_seed(seed)
    return models.build_aecnn(models.build_encoder(), models.build_decoder(), tiny_classifier(seed))


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
