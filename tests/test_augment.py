"""tfcxr.data.augment against torchvision / PIL semantics, on tiny images."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr.constants import CONTRAST, ROTATION_DEGREES
from tfcxr.data import augment, pipeline
from tfcxr import stages
from helpers import expected_zero_fraction, zero_fraction

SEED = tf.constant([1, 2], tf.int64)


def noise(shape, seed=0, low=1):
    """uint8 noise in [low, 255]; with low=1 a 0 can only come from a rotation's fill."""
    return np.random.default_rng(seed).integers(low, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("angle", [5.0, -5.0, 3.3, -1.7, 30.0])
def test_rotate_matches_pil_nearest(angle):
    image = noise((57, 64))
    pil = np.asarray(Image.fromarray(image).rotate(angle, resample=Image.NEAREST))
    ours = augment.rotate(tf.constant(image[..., None]), tf.constant([angle])).numpy()[..., 0]
    assert (ours == pil).mean() > 0.999  # direction, centre, nearest rounding and fill as PIL


def test_rotate_bilinear_is_configurable():
    image = tf.constant(noise((32, 32, 1)), tf.float32)
    nearest = augment.rotate(image, tf.constant([3.0]))
    bilinear = augment.rotate(image, tf.constant([3.0]), interpolation="bilinear")
    assert not set(np.unique(bilinear.numpy())) <= set(np.unique(image.numpy())) | {0.0}
    assert set(np.unique(nearest.numpy())) <= set(np.unique(image.numpy())) | {0.0}


def test_random_rotation_statistics():
    size = 48
    values = np.arange(1, 256, 8, dtype=np.uint8)  # a sparse value set
    images = np.random.default_rng(0).choice(values, (256, size, size, 1))
    rotated = augment.random_rotation(tf.constant(images), SEED).numpy()
    assert rotated.dtype == np.uint8 and rotated.shape == images.shape
    assert set(np.unique(rotated)) <= set(values) | {0}  # nearest keeps the value set
    fractions = (rotated == 0).mean(axis=(1, 2, 3))
    expected = expected_zero_fraction(size, ROTATION_DEGREES)
    assert abs(fractions.mean() - expected) < 0.15 * expected
    assert fractions.max() <= zero_fraction(size, ROTATION_DEGREES) + 4 / size**2  # |angle| <= 5
    assert np.std(fractions) > 0.2 * expected  # one angle per image, not one per batch


def test_random_rotation_single_image_and_seeds():
    image = tf.constant(noise((40, 40, 1)))
    first = augment.random_rotation(image, SEED)
    assert first.shape == image.shape
    assert np.array_equal(first, augment.random_rotation(image, SEED))
    assert not np.array_equal(first, augment.random_rotation(image, SEED + 1))


def test_random_flip_statistics():
    images = tf.constant(noise((400, 8, 8, 1)))
    flipped = augment.random_flip(images, SEED, horizontal=True, vertical=True).numpy()
    seen = {(False, False): 0, (True, False): 0, (False, True): 0, (True, True): 0}
    for image, out in zip(images.numpy(), flipped):
        for horizontal, vertical in seen:
            candidate = image[:, ::-1] if horizontal else image
            if np.array_equal(candidate[::-1] if vertical else candidate, out):
                seen[horizontal, vertical] += 1
    assert sum(seen.values()) == len(flipped)
    assert all(60 < count < 140 for count in seen.values()), seen
    only_horizontal = augment.random_flip(images, SEED).numpy()
    assert all(np.array_equal(o, i) or np.array_equal(o, i[:, ::-1]) for i, o in zip(images.numpy(), only_horizontal))


def test_random_flip_single_image():
    image = noise((8, 8, 1))
    outputs = [augment.random_flip(tf.constant(image), SEED + i, horizontal=True, vertical=True).numpy() for i in range(80)]
    flips = [(np.array_equal(o, image[:, ::-1]) or np.array_equal(o, image[::-1, ::-1]),
              np.array_equal(o, image[::-1]) or np.array_equal(o, image[::-1, ::-1])) for o in outputs]
    assert all(np.array_equal(o, image) or any(f) for o, f in zip(outputs, flips))
    assert 25 < sum(f[0] for f in flips) < 55 and 25 < sum(f[1] for f in flips) < 55


def torchvision_adjust_contrast(image, factor):
    """torchvision.transforms.functional.adjust_contrast on a float CHW-as-HWC numpy image."""
    gray = image[..., 0] if image.shape[-1] == 1 else image @ np.array([0.2989, 0.587, 0.114])
    return np.clip(factor * image + (1 - factor) * gray.mean(), 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_adjust_contrast_matches_torchvision(channels):
    images = noise((3, 16, 16, channels), low=0) / 255.0
    factors = np.array([0.75, 1.0, 1.25])
    ours = augment.adjust_contrast(tf.constant(images, tf.float32), tf.constant(factors[:, None, None, None], tf.float32))
    expected = np.stack([torchvision_adjust_contrast(i, f) for i, f in zip(images, factors)])
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)


def test_random_contrast_factor_range():
    images = tf.constant(np.random.default_rng(0).uniform(0.3, 0.7, (300, 8, 8, 1)), tf.float32)
    out = augment.random_contrast(images, SEED).numpy()
    # No clipping here, so out - mean(out) = factor * (image - mean(image)): recover each factor.
    centred = images.numpy() - images.numpy().mean(axis=(1, 2, 3), keepdims=True)
    out_centred = out - out.mean(axis=(1, 2, 3), keepdims=True)
    factors = (out_centred * centred).sum(axis=(1, 2, 3)) / (centred**2).sum(axis=(1, 2, 3))
    assert factors.min() >= 1 - CONTRAST - 1e-4 and factors.max() <= 1 + CONTRAST + 1e-4
    assert factors.min() < 1 - 0.8 * CONTRAST and factors.max() > 1 + 0.8 * CONTRAST
    assert abs(factors.mean() - 1) < 0.03


def test_random_crop_is_a_window():
    image = noise((30, 40, 1))
    crops = [augment.random_crop(tf.constant(image), 16, SEED + i).numpy() for i in range(20)]
    offsets = set()
    for crop in crops:
        hits = [(y, x) for y in range(15) for x in range(25) if np.array_equal(image[y:y + 16, x:x + 16], crop)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 10


@pytest.mark.parametrize("height, width, size", [(128, 128, 112), (65, 70, 56)])
def test_ten_crop_torchvision_order(height, width, size):
    image = noise((height, width, 1))
    crops = augment.ten_crop(tf.constant(image), size).numpy()
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]
    mirrored = image[:, ::-1]
    expected = [image[y:y + size, x:x + size] for y, x in corners] + [mirrored[y:y + size, x:x + size] for y, x in corners]
    assert crops.shape == (10, size, size, 1)
    np.testing.assert_array_equal(crops, np.stack(expected))


def test_stage1_device_augmentation_rotates_then_jitters_contrast():
    baseline, autoencoder = (stages.STAGES[name].task.inputs for name in ("baseline", "autoencoder"))
    assert pipeline.device_augmentation(baseline, "fmix") is None and pipeline.device_augmentation(autoencoder) is None
    assert pipeline.device_augmentation(dataclasses.replace(baseline, rotation="pipeline")) is None
    layer = pipeline.device_augmentation(baseline)
    images = tf.constant(noise((4, 40, 40, 1), low=1) / 255.0, tf.float32)
    assert np.array_equal(layer(images, training=False), images)
    outputs = layer(images, training=True).numpy()
    assert outputs.shape == images.shape and outputs.dtype == np.float32
    assert np.abs(outputs * 255 - np.round(outputs * 255)).max() > 0.01  # contrast: off the 8-bit levels nearest keeps
    clone = type(layer).from_config(layer.get_config())
    assert clone.contrast == CONTRAST and clone.degrees == ROTATION_DEGREES


def test_device_augmentation():
    layer = pipeline.device_augmentation(stages.STAGES["aecnn"].task.inputs)
    images = tf.constant(noise((4, 40, 40, 1)) / 255.0, tf.float32)
    assert np.array_equal(layer(images, training=False), images)
    rotated = layer(images, training=True)
    assert rotated.shape == images.shape and rotated.dtype == tf.float32
    assert (rotated.numpy() == 0).any() and not np.array_equal(rotated, images)
    assert not np.array_equal(rotated, layer(images, training=True))  # a new draw per call
    clone = type(layer).from_config(layer.get_config())
    assert clone.degrees == ROTATION_DEGREES and clone.interpolation == "nearest" and clone.fill_value == 0.0
