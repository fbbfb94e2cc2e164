"""FMix (Harris et al. 2020, arXiv:2002.12047) in TensorFlow, one mask per batch.

A mixing ratio lambda ~ Beta(alpha, alpha); a low-frequency image drawn in Fourier space
(Gaussian complex coefficients weighted by 1 / max(freq, 1 / max(H, W))^decay_power, back to
pixels with irfft2d); the binary mask keeps its top round(lambda * H * W) pixels. Each image is
mixed with a partner from a permutation of its batch: x = m * x + (1 - m) * x[perm], and the
labels by lambda: y = lambda * y + (1 - lambda) * y[perm].
"""

import numpy as np
import tensorflow as tf

from tfcxr.constants import FMIX_ALPHA, FMIX_DECAY_POWER
from tfcxr.data.augment import split_seed


def spectrum_weights(height, width, decay_power=FMIX_DECAY_POWER):
    """1 / max(freq, 1 / max(H, W))^decay_power on the rfft2d frequency grid: [H, W // 2 + 1]."""
    freqs = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :])
    return tf.constant(1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power, tf.float32)


def low_frequency_noise(height, width, seed, decay_power=FMIX_DECAY_POWER):
    """A real [H, W] image whose spectrum is Gaussian noise shaped by spectrum_weights."""
    weights = spectrum_weights(height, width, decay_power)
    real, imag = tf.unstack(tf.random.stateless_normal([2, *weights.shape], seed))
    return tf.signal.irfft2d(tf.complex(weights * real, weights * imag), fft_length=[height, width])


def sample_lambda(seed, alpha=FMIX_ALPHA):
    """lambda ~ Beta(alpha, alpha), as the ratio g1 / (g1 + g2) of two Gamma(alpha) draws."""
    gammas = tf.random.stateless_gamma([2], seed, alpha=alpha)
    return gammas[0] / (gammas[0] + gammas[1])


def binary_mask(noise, lam):
    """1 on the top round(lam * H * W) pixels of `noise`, 0 elsewhere: float32 [H, W]."""
    flat = tf.reshape(noise, [-1])
    num_ones = tf.cast(tf.round(lam * tf.cast(tf.size(flat), tf.float32)), tf.int32)
    ranks = tf.argsort(tf.argsort(flat, direction="DESCENDING"))  # 0 = largest
    return tf.reshape(tf.cast(ranks < num_ones, tf.float32), tf.shape(noise))


def sample_mask(height, width, seed, alpha=FMIX_ALPHA, decay_power=FMIX_DECAY_POWER):
    """(lambda, its binary FMix mask [H, W])."""
    lam_seed, noise_seed = split_seed(seed, 2)
    lam = sample_lambda(lam_seed, alpha)
    return lam, binary_mask(low_frequency_noise(height, width, noise_seed, decay_power), lam)


def fmix(images, labels, seed, alpha=FMIX_ALPHA, decay_power=FMIX_DECAY_POWER):
    """Mixes a batch [B, H, W, C] with a permutation of itself; labels [B, L] by lambda."""
    mask_seed, perm_seed = split_seed(seed, 2)
    lam, mask = sample_mask(images.shape[1], images.shape[2], mask_seed, alpha, decay_power)
    mask = tf.cast(mask, images.dtype)[None, :, :, None]  # [1, H, W, 1]
    perm = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], perm_seed))
    images = mask * images + (1 - mask) * tf.gather(images, perm)
    labels = lam * labels + (1 - lam) * tf.gather(labels, perm)
    return images, labels
