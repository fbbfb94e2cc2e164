"""The paper's augmentations as pure TensorFlow functions, torchvision semantics.

Images are NHWC: one image [H, W, C] or a batch [B, H, W, C], uint8 or float in [0, 1].
Every random function takes a stateless `seed` (int [2]): the same seed gives the same output
whichever thread, worker or replica runs it. Batched functions draw one random decision per
image, so they can run once per batch after `Dataset.batch` (or on the accelerator).

- random_crop:      RandomCrop(size)
- random_flip:      RandomHorizontalFlip() / RandomVerticalFlip()
- random_rotation:  RandomRotation(ROTATION_DEGREES): angle ~ U[-5, 5] degrees, counter-clockwise,
                    about the image centre, nearest neighbour (torchvision's default), fill 0
- random_contrast:  ColorJitter(contrast=CONTRAST): factor ~ U[0.75, 1.25], blend with the
                    image's grayscale mean, clip to [0, 1] (torchvision's tensor formula)
- ten_crop:         TenCrop(size): 4 corners + centre, then the same of the flipped image
- RandomRotation: the Keras layer the training step applies on the accelerator
                    (pipeline.device_augmentation picks it for an InputSpec)
"""

import math

import keras
import tensorflow as tf

from tfcxr.constants import CONTRAST, ROTATION_DEGREES


def split_seed(seed, num):
    """One stateless seed [2] -> a list of `num` independent seeds [2]."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def random_crop(image, size, seed):
    """A random size x size window of one image [H, W, C] -> [size, size, C]."""
    return tf.image.stateless_random_crop(image, [size, size, tf.shape(image)[-1]], seed)


def _reverse(images, axis):
    """tf.reverse along H (-3) or W (-2); one channel reversed as [.., H, W], which Eigen does faster."""
    if images.shape[-1] != 1:
        return tf.reverse(images, [axis])
    return tf.reverse(tf.squeeze(images, -1), [axis + 1])[..., None]


def _random_reverse(images, seed, axis):
    """Reverses each image along `axis` with probability 1/2: a cond for one image, a select for a batch."""
    if images.shape.rank == 3:
        flip = tf.random.stateless_uniform([], seed) < 0.5
        return tf.cond(flip, lambda: _reverse(images, axis), lambda: images)
    flip = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed) < 0.5
    return tf.where(flip, _reverse(images, axis), images)


def random_flip(images, seed, horizontal=True, vertical=False):
    """Flips each image left-right and/or up-down with probability 1/2 each.

    One image is copied only when it flips (a cond); a batch is reversed whole, then selected
    from, so flipping records before batching is cheaper.
    """
    horizontal_seed, vertical_seed = split_seed(seed, 2)
    if horizontal:
        images = _random_reverse(images, horizontal_seed, axis=-2)
    if vertical:
        images = _random_reverse(images, vertical_seed, axis=-3)
    return images


def rotation_transforms(angles, height, width):
    """Counter-clockwise rotations about the image centre as projective transforms [B, 8].

    Each row maps an output pixel (x, y) to the input pixel it samples (ImageProjectiveTransform);
    the centre ((W - 1) / 2, (H - 1) / 2) in pixel indices is PIL's (W / 2, H / 2) in its
    pixel-corner coordinates, so nearest sampling picks the same pixels as PIL's rotate.
    """
    radians = tf.cast(angles, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    center_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    center_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    offset_x = center_x - cos * center_x + sin * center_y
    offset_y = center_y - sin * center_x - cos * center_y
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, offset_x, sin, cos, offset_y, zeros, zeros], axis=1)


def rotate(images, angles, interpolation="nearest", fill_value=0.0):
    """Rotates each image by its angle (degrees, counter-clockwise), filling with `fill_value`."""
    batched = images.shape.rank == 4
    images = images if batched else images[None]  # [B, H, W, C]
    angles = tf.reshape(angles, [-1])
    shape = tf.shape(images)
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=rotation_transforms(angles, shape[1], shape[2]),
        output_shape=shape[1:3],
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation.upper(),
        fill_mode="CONSTANT",
    )
    rotated = tf.ensure_shape(rotated, images.shape)
    return rotated if batched else rotated[0]


def random_rotation(images, seed, degrees=ROTATION_DEGREES, interpolation="nearest", fill_value=0.0):
    """torchvision RandomRotation(degrees): one angle ~ U[-degrees, degrees] per image."""
    num_images = tf.shape(images)[0] if images.shape.rank == 4 else 1
    angles = tf.random.stateless_uniform([num_images], seed, -degrees, degrees)
    return rotate(images, angles, interpolation, fill_value)


def adjust_contrast(images, factors):
    """torchvision adjust_contrast on float images in [0, 1]: blend with the grayscale mean.

    `factors` broadcasts against the batch ([B, 1, 1, 1]) or is a scalar.
    """
    gray = images if images.shape[-1] == 1 else tf.image.rgb_to_grayscale(images)
    mean = tf.reduce_mean(gray, axis=[-3, -2, -1], keepdims=True)
    return tf.clip_by_value(factors * images + (1.0 - factors) * mean, 0.0, 1.0)


def random_contrast(images, seed, strength=CONTRAST):
    """ColorJitter(contrast=strength): one factor ~ U[1 - strength, 1 + strength] per image."""
    factor_shape = [tf.shape(images)[0], 1, 1, 1] if images.shape.rank == 4 else []
    factors = tf.random.stateless_uniform(factor_shape, seed, 1.0 - strength, 1.0 + strength)
    return adjust_contrast(images, factors)


def five_crop(image, size):
    """torchvision FiveCrop order: top-left, top-right, bottom-left, bottom-right, centre."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top = tf.cast(tf.round((height - size) / 2), tf.int32)  # round half to even, as Python's
    left = tf.cast(tf.round((width - size) / 2), tf.int32)
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]
    return tf.stack([tf.image.crop_to_bounding_box(image, y, x, size, size) for y, x in corners])


def ten_crop(image, size):
    """torchvision TenCrop: five crops of the image, then five of its mirror: [10, size, size, C]."""
    return tf.concat([five_crop(image, size), five_crop(tf.image.flip_left_right(image), size)], 0)


@keras.saving.register_keras_serializable(package="tfcxr")
class RandomRotation(keras.layers.Layer):
    """random_rotation as a Keras layer for the training step; identity when not training.

    contrast: None, or the strength of a random_contrast applied after the rotation (stage 1's BL5
    order: rotation, then contrast, on [0, 1] images).
    Each replica folds its id into the seed, so replicas draw different angles (Keras's own
    RandomRotation mirrors its seed state and would rotate every replica's batch alike).
    """

    def __init__(self, degrees=ROTATION_DEGREES, interpolation="nearest", fill_value=0.0, seed=None, contrast=None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")  # images stay float32 under mixed precision
        super().__init__(**kwargs)
        self.degrees = degrees
        self.interpolation = interpolation
        self.fill_value = fill_value
        self.seed = seed
        self.contrast = contrast
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        context = tf.distribute.get_replica_context()  # None in a cross-replica context
        replica_id = context.replica_id_in_sync_group if context else 0
        seed = tf.random.experimental.stateless_fold_in(self.seed_generator.next(), replica_id)
        if self.contrast is None:
            return random_rotation(images, seed, self.degrees, self.interpolation, self.fill_value)
        rotation_seed, contrast_seed = split_seed(seed, 2)
        images = random_rotation(images, rotation_seed, self.degrees, self.interpolation, self.fill_value)
        return random_contrast(images, contrast_seed, self.contrast)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {"degrees": self.degrees, "interpolation": self.interpolation}
        return {**super().get_config(), **config, "fill_value": self.fill_value, "seed": self.seed,
                "contrast": self.contrast}
