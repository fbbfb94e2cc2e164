"""The TFRecord schema: one tf.train.Example per radiograph. The only place that names a feature.

image/encoded   the original image, 8-bit grayscale: PNG bytes, or raw uint8 bytes (HxW)
                when the records were written with --encoding=raw (see image/format)
image/format    b"png" or b"raw"
image/small     a SMALL_SIZE x SMALL_SIZE antialiased resize, 8-bit grayscale PNG (stage 1)
image/filename  the ChestX-ray14 "Image Index", e.g. b"00000001_000.png"
image/height    height of image/encoded
image/width     width of image/encoded
labels          one int64 (0/1) per label, in the order of the manifest's "labels" (ChestX-ray14's
                records: constants.LABELS)
patient_id      int64
meta/*          the rest of the Data_Entry CSV row
"""

import tensorflow as tf

from tfcxr.constants import LABELS as CXR14_LABELS
from tfcxr.constants import NUM_LABELS
from tfcxr.storage import MANIFEST  # noqa: F401 - the records folder's manifest.json, beside the shards

ENCODED = "image/encoded"
FORMAT = "image/format"
SMALL = "image/small"
FILENAME = "image/filename"
HEIGHT = "image/height"
WIDTH = "image/width"
LABEL_VECTOR = "labels"
PATIENT_ID = "patient_id"
FOLLOW_UP = "meta/follow_up"
PATIENT_AGE = "meta/patient_age"
PATIENT_GENDER = "meta/patient_gender"
VIEW_POSITION = "meta/view_position"
ORIGINAL_WIDTH = "meta/original_width"
ORIGINAL_HEIGHT = "meta/original_height"
PIXEL_SPACING_X = "meta/pixel_spacing_x"
PIXEL_SPACING_Y = "meta/pixel_spacing_y"

FEATURE_SPECS = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=b"png"),
    SMALL: tf.io.FixedLenFeature([], tf.string),
    FILENAME: tf.io.FixedLenFeature([], tf.string),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    LABEL_VECTOR: tf.io.FixedLenFeature([NUM_LABELS], tf.int64),
    PATIENT_ID: tf.io.FixedLenFeature([], tf.int64),
    FOLLOW_UP: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    PATIENT_AGE: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    PATIENT_GENDER: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    VIEW_POSITION: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    ORIGINAL_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    ORIGINAL_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    PIXEL_SPACING_X: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    PIXEL_SPACING_Y: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
}


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def make_example(
    *,
    encoded: bytes,
    small: bytes,
    filename: str,
    height: int,
    width: int,
    labels,
    patient_id: int,
    image_format: str = "png",
    follow_up: int = 0,
    patient_age: int = 0,
    patient_gender: str = "",
    view_position: str = "",
    original_width: int = 0,
    original_height: int = 0,
    pixel_spacing_x: float = 0.0,
    pixel_spacing_y: float = 0.0,
    num_labels: int = NUM_LABELS,
) -> tf.train.Example:
    """Builds the Example of one radiograph. `labels` holds num_labels 0/1 ints in the order of the
    manifest's label names (ChestX-ray14: constants.LABELS)."""
    labels = [int(v) for v in labels]
    if len(labels) != num_labels:
        raise ValueError(f"{filename}: expected {num_labels} labels, got {len(labels)}")
    feature = {
        ENCODED: _bytes(encoded),
        FORMAT: _bytes(image_format.encode()),
        SMALL: _bytes(small),
        FILENAME: _bytes(filename.encode()),
        HEIGHT: _ints([height]),
        WIDTH: _ints([width]),
        LABEL_VECTOR: _ints(labels),
        PATIENT_ID: _ints([patient_id]),
        FOLLOW_UP: _ints([follow_up]),
        PATIENT_AGE: _ints([patient_age]),
        PATIENT_GENDER: _bytes(patient_gender.encode()),
        VIEW_POSITION: _bytes(view_position.encode()),
        ORIGINAL_WIDTH: _ints([original_width]),
        ORIGINAL_HEIGHT: _ints([original_height]),
        PIXEL_SPACING_X: _floats([pixel_spacing_x]),
        PIXEL_SPACING_Y: _floats([pixel_spacing_y]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def label_names(manifest: dict) -> tuple[str, ...]:
    """The records' label names in label-vector order: the manifest's "labels" (ChestX-ray14's 14
    for records written before the manifest carried them)."""
    return tuple(manifest.get("labels", CXR14_LABELS))


def parse(serialized, keys=None, num_labels=NUM_LABELS):
    """Parses one serialized Example (or a batch) into a dict; `keys` limits the features read.

    Reading only the keys a stage needs skips the work of materialising the others.
    num_labels: the length of the label vector (the manifest's label names).
    """
    spec = FEATURE_SPECS if keys is None else {k: FEATURE_SPECS[k] for k in keys}
    if LABEL_VECTOR in spec:
        spec = {**spec, LABEL_VECTOR: tf.io.FixedLenFeature([num_labels], tf.int64)}
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, spec)
    return tf.io.parse_example(serialized, spec)


def decode_original(encoded, image_format, height, width):
    """image/encoded -> uint8 [H, W, 1], whichever encoding the records were written with."""
    def from_png():
        return tf.io.decode_png(encoded, channels=1)

    def from_raw():
        return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), tf.stack([height, width, 1]))

    image = tf.cond(tf.equal(image_format, b"raw"), from_raw, from_png)
    return tf.ensure_shape(image, [None, None, 1])


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00012.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


SPLITS = ("train", "val", "test")
