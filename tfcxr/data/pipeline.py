"""tf.data input pipelines over the TFRecords of tools/shard_cxr14.py, described by an InputSpec.

The data layer knows no training stages: a stage (tfcxr/train/stages.py) hands make_dataset the
InputSpec of what its model reads. make_dataset(records_dir, split, inputs, batch_size, training)
yields dicts:
  "image"       float32 [B, H, W, 1] in [0, 1], grayscale (ImageNet normalization lives in the
                model); [B, 10, H, W, 1] with tta="tencrop"
  "labels"      float32 [B, L] (L labels, the manifest's; mixed by FMix with augment="fmix")
  "filename"    string [B] and "patient_id" int64 [B], with include_metadata=True

Geometry (InputSpec.feature):
  image/small   train: resized to resize_size (256), random crop image_size (224)
                eval:  resized to resize_size; tencrop: ten image_size crops of it
  original      train: random image_size crop (or patch) at full resolution; with
                patches_per_image=K (InputSpec.patches), K patches of each decoded original,
                mixed with other originals' patches in a shuffle buffer of PATCH_SHUFFLE patches
                eval:  the whole original resized to image_size; tencrop: ten image_size crops of it;
                with eval_geometry="full" each original at its own size, its sides cut to multiples
                of COMPRESSION (the top-left part), in batches of one size

Augmentation when training: the crop, a left-right flip (up-down too with vertical_flip), and
with rotation the random rotation (and the contrast jitter with contrast) either here
(rotation="pipeline") or in the training step on the accelerator (rotation="device": the step
applies device_augmentation(inputs, augment)). augment="fmix" (InputSpec.fmix) replaces flips,
rotation and contrast with FMix; the crop keeps BL5's scale, so only the augmentation differs.

Performance (tf.data performance guide): shard files are shuffled and read interleaved, records
shuffled, only the needed features parsed; decode, crop and flips (a copy only when flipped) run
in a parallel map and stay uint8; rotation, the float conversion, contrast and FMix run once per
batch (vectorised); prefetch at the end.
Random ops are stateless, seeded per record from `seed`, so a seeded pipeline repeats exactly.
Evaluation reads shards in manifest order and records in file order, deterministically.
"""
import contextlib
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfcxr.constants import COMPRESSION, CONTRAST, PATCHES_PER_IMAGE  # noqa: F401  (the trainer's K; see below)
from tfcxr.data import augment as augmentations
from tfcxr.data import fmix as fmix_lib
from tfcxr.data import schema
from tfcxr.data.records import Records
from tfcxr import storage

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_FEATURES = (schema.SMALL, schema.ENCODED)  # what an InputSpec reads: image/small or the original
ROTATIONS = (None, "pipeline", "device")  # where the training rotation runs (None: no rotation)
EVAL_GEOMETRIES = ("resize", "full")  # an original when evaluating: resized to image_size, or at its own size
INTERLEAVE_FILES = 8  # shards read at once when training
# Stage 2 cuts K patches from each decoded 1024 original: the PNG decode, not the patch, is the cost
# (benchmarks/results/pipeline.md). PATCHES_PER_IMAGE is the trainer's K (make_dataset's default is the
# paper's 1); PATCH_SHUFFLE patches (64 MiB at 128 px) mix them so that a batch of 64 holds patches of
# ~54 originals on average at K=16 (benchmarks/bench_pipeline.py measures it; tests/test_pipeline.py tests the mixing).
PATCH_SHUFFLE = 4096


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model reads from the records and how training augments it (see the module docstring).

    feature: schema.SMALL (image/small, resized to resize_size first) or schema.ENCODED (the original).
    image_size: the training crop / patch side, and the evaluation resize of an original.
    resize_size: image/small only: the resize before the crop, and the evaluation size.
    vertical_flip: training flips up-down too (left-right always, unless FMix).
    rotation: where the training rotation runs: None (none), "pipeline" or "device".
    contrast: the contrast jitter after the rotation (where the rotation runs).
    fmix: augment="fmix" is allowed. tencrop: tta="tencrop" is allowed.
    patches: patches_per_image > 1 is allowed when training.
    shuffle_records: the training shuffle buffer, in records (~40 kB small PNGs, ~0.4-1 MB originals).
    eval_geometry: originals when evaluating: "resize" (to image_size) or "full" (each at its own size,
    cut to multiples of COMPRESSION: what a codec compresses).
    """

    feature: str
    image_size: int
    resize_size: int | None = None
    vertical_flip: bool = False
    rotation: str | None = None
    contrast: bool = False
    fmix: bool = False
    tencrop: bool = False
    patches: bool = False
    shuffle_records: int = 512
    eval_geometry: str = "resize"

    def __post_init__(self):
        if self.feature not in IMAGE_FEATURES:
            raise ValueError(f"InputSpec.feature={self.feature!r}: one of {IMAGE_FEATURES}")
        if (self.resize_size is None) != (self.feature == schema.ENCODED):
            raise ValueError(f"InputSpec: resize_size is for {schema.SMALL} inputs (and they need one)")
        if self.rotation not in ROTATIONS or (self.contrast and self.rotation is None):
            raise ValueError(f"InputSpec.rotation={self.rotation!r}: one of {ROTATIONS}; contrast needs a rotation")
        if self.eval_geometry not in EVAL_GEOMETRIES or (self.eval_geometry == "full" and self.feature != schema.ENCODED):
            raise ValueError(f"InputSpec.eval_geometry={self.eval_geometry!r}: one of {EVAL_GEOMETRIES}; "
                             f"'full' reads {schema.ENCODED}")

    @property
    def eval_size(self) -> int:
        """The side of the whole-image evaluation input: the resize of image/small, or of the original."""
        return self.resize_size if self.feature == schema.SMALL else self.image_size

    def with_sizes(self, image_size: int | None = None, resize_size: int | None = None) -> "InputSpec":
        """This spec at a run's --image_size / --resize_size (None keeps the spec's)."""
        if resize_size is not None and self.feature != schema.SMALL:
            raise ValueError(f"resize_size applies to {schema.SMALL} inputs only, got {resize_size} for "
                             f"inputs of {self.feature}")
        return dataclasses.replace(self, image_size=image_size or self.image_size,
                                   resize_size=resize_size or self.resize_size)


def device_augmentation(inputs: InputSpec, augment: str = "bl5") -> keras.layers.Layer | None:
    """The augmentation the training step applies on the accelerator (inputs.rotation == "device"):
    the 5-degree rotation (nearest, fill 0), then the contrast jitter with inputs.contrast; None
    otherwise and with FMix. Both cost little on a GPU and a lot on the input pipeline's CPU cores."""
    if inputs.rotation != "device" or augment == "fmix":
        return None
    if inputs.contrast:
        return augmentations.RandomRotation(contrast=CONTRAST, name="device_rotation_contrast")
    return augmentations.RandomRotation(name="device_rotation")


def folder_of(records: Records | str | Path) -> str:
    """The records folder (a local path or a URL) of a Records or of a folder itself."""
    return records.path if isinstance(records, Records) else str(records)


def manifest_of(records: Records | str | Path) -> Mapping[str, Any] | None:
    """The manifest of `records` (a Records holds it; a folder's is read), or None for a folder without one."""
    if isinstance(records, Records):
        return records.manifest
    return storage.read_manifest(records) if storage.exists(storage.join(records, schema.MANIFEST)) else None


def shard_files(records: Records | str | Path, split, small=False):
    """The split's shard paths (strings: local paths or URLs) in manifest order; `small`: the
    small-only shards when listed. records: a Records (its manifest, read once) or a folder.

    Without a manifest, the `{split}-*.tfrecord` files in name order.
    """
    records_dir, manifest = folder_of(records), manifest_of(records)
    if manifest is not None:
        splits = manifest["splits"]
        if split not in splits:
            raise ValueError(f"{storage.join(records_dir, schema.MANIFEST)}: no split {split!r} (has {sorted(splits)})")
        shards = (splits[split].get("small_shards") if small else None) or splits[split]["shards"]
        files = [storage.join(records_dir, shard["file"]) for shard in shards]
    else:
        files = storage.glob(storage.join(records_dir, f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"{records_dir}: no {split} shards")
    for path in files:
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: shard listed in {schema.MANIFEST} is missing")
    return files


def label_names(records: Records | str | Path) -> tuple[str, ...]:
    """The records' label names, in label-vector order (the manifest's; ChestX-ray14's without one)."""
    return schema.label_names(manifest_of(records) or {})


class CorruptShard(ValueError):
    """A shard that TFRecordDataset cannot read to its end (bad CRC, cut short): one line naming it."""


def find_damage(paths) -> tuple[str, int, str] | None:
    """(path, records read before the damage, TensorFlow's words) of the first unreadable shard, or None.

    Reads every record of every file in `paths`, in order, stopping at the first damaged one.
    """
    for path in paths:
        count = 0
        try:
            for batch in tf.data.TFRecordDataset(path, buffer_size=1 << 20).batch(256):
                count += int(tf.shape(batch)[0])
        except tf.errors.DataLossError as error:
            count = 0
            try:  # the batch that failed is lost: count its good records one by one
                for _ in tf.data.TFRecordDataset(path, buffer_size=1 << 20):
                    count += 1
            except tf.errors.DataLossError:
                pass
            return path, count, damage_words(error)
    return None


def damage_words(error) -> str:
    """TensorFlow's own words for a DataLossError ("corrupted record at 1028"), without its op names."""
    found = re.search(r"(\w+ record at \d+)", error.message)
    return found.group(1).replace(" at ", " at byte ") if found else error.message.splitlines()[0][:200]


@contextlib.contextmanager
def naming_bad_shards(records: Records | str | Path, split, small=False):
    """Turns a DataLossError raised while reading `split` into CorruptShard, one line naming the shard
    file and the record: on failure, the split's shards are read once more, up to the damaged one."""
    try:
        yield
    except tf.errors.DataLossError as error:
        records_dir = folder_of(records)
        paths = shard_files(records, split, small=small)
        found = find_damage(paths)
        if found is None:
            raise CorruptShard(f"{records_dir}: a {split} shard could not be read ({damage_words(error)}); "
                               f"it reads whole now (storage flaky?)") from None
        path, count, words = found
        raise CorruptShard(f"{path}: corrupt shard ({words}, after record {count}); re-shard it or check "
                           f"every shard with tools/shard_cxr14.py --verify --out_dir={records_dir}") from None


def to_float(images):
    """uint8 -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def resize_uint8(image, size):
    """Antialiased bilinear resize to size x size, kept uint8 (as PIL's Resize); a no-op if equal."""
    def resized():
        resized = tf.image.resize(image, [size, size], antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
    return tf.ensure_shape(tf.cond(same, lambda: image, resized), [size, size, None])


def _feature_keys(inputs, include_metadata):
    keys = [schema.SMALL] if inputs.feature == schema.SMALL else [schema.ENCODED, schema.FORMAT, schema.HEIGHT, schema.WIDTH]
    return keys + [schema.LABEL_VECTOR] + ([schema.FILENAME, schema.PATIENT_ID] if include_metadata else [])


def _decode(features, inputs):
    """The record's image as uint8 [H, W, 1]: image/small, or the original."""
    if inputs.feature == schema.SMALL:
        return tf.io.decode_png(features[schema.SMALL], channels=1)
    return schema.decode_original(
        features[schema.ENCODED], features[schema.FORMAT],
        tf.cast(features[schema.HEIGHT], tf.int32), tf.cast(features[schema.WIDTH], tf.int32))


def _record_image(image, seed, inputs, training, augment, tta):
    """Per-record geometry, uint8 in and out: decoded [H, W, 1] -> the crop (flipped), crops or resize."""
    if inputs.feature == schema.SMALL:
        image = resize_uint8(image, inputs.resize_size)  # [resize, resize, 1]
    if training:
        crop_seed, flip_seed = augmentations.split_seed(seed, 2)
        image = augmentations.random_crop(image, inputs.image_size, crop_seed)  # [size, size, 1]
        if augment == "fmix":
            return image
        return augmentations.random_flip(image, flip_seed, horizontal=True, vertical=inputs.vertical_flip)
    if tta == "tencrop":
        return augmentations.ten_crop(image, inputs.image_size)  # [10, size, size, 1]
    if inputs.eval_geometry == "full":
        size = tf.shape(image)[:2]
        return image[: size[0] - size[0] % COMPRESSION, : size[1] - size[1] % COMPRESSION]  # [H - H % 4, W - W % 4, 1]
    return image if inputs.feature == schema.SMALL else resize_uint8(image, inputs.image_size)  # [size, size, 1]


def _random_patches(image, inputs, count, seed):
    """`count` random image_size windows of one image [H, W, 1], each flipped left-right (and up-down
    with vertical_flip) with probability 1/2 -> [count, size, size, 1]."""
    crop_seed, flip_seed = augmentations.split_seed(seed, 2)
    crop_seeds = augmentations.split_seed(crop_seed, count)
    patches = tf.stack([augmentations.random_crop(image, inputs.image_size, s) for s in crop_seeds])  # [K, size, size, 1]
    return augmentations.random_flip(patches, flip_seed, horizontal=True, vertical=inputs.vertical_flip)


def _augment_batch(batch, seed, inputs, augment):
    """Per-batch augmentation when training: uint8 flipped crops [B, H, W, 1] -> float32 in [0, 1]."""
    rotation_seed, color_seed = augmentations.split_seed(seed, 2)
    images = batch["image"]
    if augment == "fmix":
        images, labels = fmix_lib.fmix(to_float(images), batch["labels"], color_seed)
        return {**batch, "image": images, "labels": labels}
    in_pipeline = inputs.rotation == "pipeline"
    if in_pipeline:
        images = augmentations.random_rotation(images, rotation_seed)
    images = to_float(images)
    if in_pipeline and inputs.contrast:
        images = augmentations.random_contrast(images, color_seed)
    return {**batch, "image": images}


def _check_args(inputs, training, augment, tta, patches_per_image):
    if not (isinstance(patches_per_image, int) and patches_per_image >= 1) or (
            patches_per_image > 1 and not (inputs.patches and training)):
        raise ValueError(f"patches_per_image={patches_per_image!r}: 1, or more when training inputs with patches")
    if augment not in ("bl5", "fmix") or (augment == "fmix" and not inputs.fmix):
        raise ValueError(f"augment={augment!r}: 'bl5', or 'fmix' for inputs that allow FMix")
    if tta not in ("none", "tencrop") or (tta == "tencrop" and (training or not inputs.tencrop)):
        raise ValueError(f"tta={tta!r}: 'none', or 'tencrop' when evaluating inputs that allow it")
    if tta == "tencrop" and inputs.eval_geometry == "full":
        raise ValueError("tta='tencrop' crops resized images; eval_geometry='full' reads originals at their own size")


def batch_by_size(dataset, batch_size, drop_remainder):
    """Examples whose "image" [H, W, 1] differ in size -> batches of one size (record order within a size)."""
    def size_key(example):
        size = tf.cast(tf.shape(example["image"])[:2], tf.int64)
        return size[0] * (1 << 20) + size[1]

    return dataset.group_by_window(size_key, lambda key, group: group.batch(batch_size, drop_remainder=drop_remainder),
                                   window_size=batch_size)


def make_dataset(
    records: Records | str | Path,  # a Records (its manifest read once), or a folder: a local path or a URL
    split: str,
    inputs: InputSpec,
    batch_size: int,
    training: bool,
    *,
    augment: str = "bl5",
    seed: int | None = None,
    include_metadata: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool = False,
    tta: str = "none",
    drop_remainder: bool | None = None,
    patches_per_image: int = 1,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """The input pipeline of `inputs` on `split` (see the module docstring).

    input_context: each input pipeline reads its own shard files and batches per replica.
    drop_remainder defaults to `training`.
    patches_per_image: training inputs with patches: K patches of each decoded original, each one
    an element (K=1: one patch per decode, the paper's loader, no patch shuffle buffer).
    skip_batches: start after this many batches (a resumed epoch). They are skipped as serialized
    records, after the record shuffle and before any parse or decode, so the batches that follow
    are those of the whole pipeline at the same position. With patches_per_image > 1 the patch
    shuffle mixes decoded patches: there the batches are skipped after it (one decode per K patches).
    """
    _check_args(inputs, training, augment, tta, patches_per_image)
    drop_remainder = training if drop_remainder is None else drop_remainder

    records_dir = folder_of(records)
    paths = shard_files(records, split, small=inputs.feature == schema.SMALL)
    if input_context is not None:
        if len(paths) < input_context.num_input_pipelines:
            raise ValueError(f"{records_dir}: {len(paths)} {split} shards cannot feed "
                             f"{input_context.num_input_pipelines} input pipelines; shard smaller")
        paths = paths[input_context.input_pipeline_id::input_context.num_input_pipelines]
        batch_size = input_context.get_per_replica_batch_size(batch_size)

    files = tf.data.Dataset.from_tensor_slices(paths)
    if training:
        files = files.shuffle(len(paths), seed=seed)
    if repeat:
        files = files.repeat()
    serialized_records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=1 << 20),
        cycle_length=INTERLEAVE_FILES if training else 1,
        num_parallel_calls=AUTOTUNE if training else None,
    )
    if training:
        serialized_records = serialized_records.shuffle(inputs.shuffle_records, seed=seed)

    keys = _feature_keys(inputs, include_metadata)
    num_labels = len(label_names(records))

    def load(serialized, seed):
        features = schema.parse(serialized, keys, num_labels)
        record_seed, batch_seed = augmentations.split_seed(seed, 2)
        image = _record_image(_decode(features, inputs), record_seed, inputs, training, augment, tta)
        example = {"image": image, "labels": tf.cast(features[schema.LABEL_VECTOR], tf.float32)}
        if include_metadata:
            example.update(filename=features[schema.FILENAME], patient_id=features[schema.PATIENT_ID])
        return {**example, "seed": batch_seed} if training else example

    def load_patches(serialized, seed):
        """K > 1 patches: one decode -> K examples [K, ...], one seed [2] each."""
        features = schema.parse(serialized, keys, num_labels)
        record_seed, batch_seed = augmentations.split_seed(seed, 2)
        patches = _random_patches(_decode(features, inputs), inputs, patches_per_image, record_seed)
        example = {"image": patches, "labels": tf.cast(features[schema.LABEL_VECTOR], tf.float32),
                   "seed": tf.random.experimental.stateless_split(batch_seed, patches_per_image)}
        if include_metadata:
            example.update(filename=features[schema.FILENAME], patient_id=features[schema.PATIENT_ID])
        return {key: value if key in ("image", "seed") else tf.repeat(value[None], patches_per_image, axis=0)
                for key, value in example.items()}

    def finish(batch):
        if not training:
            return {**batch, "image": to_float(batch["image"])}
        batch = dict(batch)
        seed = batch.pop("seed")[0]  # the batch's seed: its first record's
        return _augment_batch(batch, seed, inputs, augment)

    seeds = tf.data.Dataset.random(seed=seed).batch(2)  # one stateless seed [2] per record
    examples = tf.data.Dataset.zip(serialized_records, seeds)  # (serialized record, its seed)
    if patches_per_image > 1:
        dataset = examples.map(load_patches, num_parallel_calls=AUTOTUNE)
        dataset = dataset.unbatch().shuffle(PATCH_SHUFFLE, seed=seed)  # K patches of many originals mixed
        dataset = dataset.skip(skip_batches * batch_size)
    else:  # skipped records are neither parsed nor decoded
        dataset = examples.skip(skip_batches * batch_size).map(load, num_parallel_calls=AUTOTUNE)
    if inputs.eval_geometry == "full" and not training:
        dataset = batch_by_size(dataset, batch_size, drop_remainder)  # [B, H, W, 1], one size per batch
    else:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = not training or seed is not None
    return dataset.with_options(options)
