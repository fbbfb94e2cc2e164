"""FMix (tfcxr.data.fmix): mask, mixing ratio, spectrum and mixing."""

import numpy as np
import tensorflow as tf

from tfcxr.constants import NUM_LABELS
from tfcxr.data import fmix

SIZE = 32


def seeds(count):
    return [tf.constant([7, i], tf.int64) for i in range(count)]


def test_mask_mean_equals_lambda():
    sample_mask = tf.function(fmix.sample_mask)
    for seed in seeds(200):
        lam, mask = sample_mask(SIZE, SIZE, seed)
        mask = mask.numpy()
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0.0, 1.0}
        assert abs(mask.mean() - float(lam)) <= 0.5 / SIZE**2 + 1e-7


def test_lambda_is_uniform_for_beta_1_1():
    sample_lambda = tf.function(fmix.sample_lambda)
    lams = np.sort([float(sample_lambda(seed, alpha=1.0)) for seed in seeds(1000)])
    ks = np.max(np.abs(lams - np.arange(1, len(lams) + 1) / len(lams)))
    assert ks < 0.06  # Kolmogorov-Smirnov 1% critical value at n=1000: 0.052
    skewed = np.array([float(sample_lambda(seed, alpha=0.2)) for seed in seeds(1000)])
    assert np.mean((skewed < 0.1) | (skewed > 0.9)) > 0.5  # alpha is honoured: Beta(0.2, 0.2) is U-shaped


def low_frequency_power(mask, cutoff=0.1):
    """Share of the mask's (mean-free) power at spatial frequencies below `cutoff` cycles/pixel."""
    power = np.abs(np.fft.fft2(mask - mask.mean())) ** 2
    freqs = np.hypot(*np.meshgrid(np.fft.fftfreq(mask.shape[0]), np.fft.fftfreq(mask.shape[1]), indexing="ij"))
    return power[freqs < cutoff].sum() / power.sum()


def test_low_frequencies_dominate():
    rng = np.random.default_rng(0)
    for seed in seeds(20):
        mask = fmix.binary_mask(fmix.low_frequency_noise(64, 64, seed), rng.uniform(0.2, 0.8)).numpy()
        random_mask = (rng.permutation(mask.size) < mask.sum()).reshape(mask.shape).astype(float)
        assert low_frequency_power(mask) > 0.5 > 0.1 > low_frequency_power(random_mask)


def test_decay_power_shapes_the_spectrum():
    def share(decay_power):
        masks = [fmix.binary_mask(fmix.low_frequency_noise(64, 64, seed, decay_power), 0.5) for seed in seeds(10)]
        return np.mean([low_frequency_power(mask.numpy(), cutoff=0.05) for mask in masks])

    assert share(6.0) > share(3.0) > share(1.0)


def test_images_and_labels_mixed_with_one_partner():
    batch = 8
    values = np.arange(1, batch + 1, dtype=np.float32)  # image i is the constant i + 1
    images = tf.constant(values[:, None, None, None] * np.ones([1, SIZE, SIZE, 1], np.float32))
    labels = np.eye(batch, NUM_LABELS, dtype=np.float32)
    for seed in seeds(10):
        mixed_images, mixed_labels = (t.numpy() for t in fmix.fmix(images, tf.constant(labels), seed))
        assert mixed_images.shape == images.shape and mixed_labels.shape == labels.shape
        own = mixed_images[..., 0] == values[:, None, None]  # [B, H, W]: pixels from the image itself
        partners = []
        for i in range(batch):
            others = np.unique(mixed_images[i][~own[i]])
            assert len(others) <= 1  # each pixel is the image's or one partner's
            partners.append(int(others[0]) - 1 if len(others) else i)
        assert sorted(partners) == list(range(batch))  # the partners are a permutation of the batch
        mixed = [i for i in range(batch) if partners[i] != i]
        mask = own[mixed[0]]
        assert all(np.array_equal(own[i], mask) for i in mixed)  # one mask for the whole batch
        lam = mask.mean()
        expected = lam * labels + (1 - lam) * labels[partners]
        np.testing.assert_allclose(mixed_labels, expected, atol=0.5 / SIZE**2 + 1e-6)


def test_label_mixing_is_exact_with_lambda():
    labels = tf.constant(np.random.default_rng(0).integers(0, 2, (6, NUM_LABELS)), tf.float32)
    images = tf.zeros([6, SIZE, SIZE, 1])
    seed = seeds(1)[0]
    _, mixed = fmix.fmix(images, labels, seed)
    mask_seed, perm_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lam, _ = fmix.sample_mask(SIZE, SIZE, mask_seed)
    perm = tf.argsort(tf.random.stateless_uniform([6], perm_seed))
    np.testing.assert_array_equal(mixed, lam * labels + (1 - lam) * tf.gather(labels, perm))
