"""tf.data input pipelines of the three stages, reading the TFRecords of tools/shard_cxr14.py.

make_dataset(records_dir, split, stage, batch_size, training) yields dicts:
  "image"       float32 [B, H, W, 1] in [0, 1], grayscale (ImageNet normalization lives in the
                model); [B, 10, H, W, 1] with tta="tencrop"
  "labels"      float32 [B, 14] (mixed by FMix with augment="fmix")
  "filename"    string [B] and "patient_id" int64 [B], with include_metadata=True

Sizes (defaults from constants; all configurable, so toy sizes run on a CPU):
  stage 1  train: image/small resized to resize_size (256), random crop image_size (224)
           eval:  image/small resized to resize_size; tencrop: ten image_size crops of it
  stage 2  train: random image_size (128) patch of the original at full resolution; with
                  patches_per_image=K, K patches of each decoded original, mixed with other
                  originals' patches in a shuffle buffer of PATCH_SHUFFLE patches
           eval:  the whole original resized to image_size
  stage 3  train: random image_size (896) crop of the original
           eval:  the original resized to image_size; tencrop: ten image_size crops of it

Augmentation when training:
  stage 1 "bl5":  crop, horizontal flip, rotation, contrast (the paper's BL5); the rotation and
                  contrast here (rotation="pipeline", the default of this function) or in the
                  training step (rotation="device", what tfcxr.train's stage 1 asks for: apply
                  augment.device_augmentation(1) to the batch)
  stage 1 "fmix": the same crop, then FMix instead of flip, rotation and contrast. The crop keeps
                  the scale of BL5 (a 224 crop of the 256 resize), so only the augmentation differs.
  stage 2:        patch, horizontal and vertical flips (drawn per patch)
  stage 3:        crop, horizontal flip, and the rotation either here (rotation="pipeline") or in
                  the training step on the accelerator (rotation="device", the default for stage 3:
                  apply augment.device_augmentation(3) to the batch).

Performance (tf.data performance guide): shard files are shuffled and read interleaved, records
shuffled, only the needed features parsed; decode, crop and flips (a copy only when flipped) run
in a parallel map and stay uint8; rotation, the float conversion, contrast and FMix run once per
batch (vectorised); prefetch at the end.
Random ops are stateless, seeded per record from `seed`, so a seeded pipeline repeats exactly.
Evaluation reads shards in manifest order and records in file order, deterministically.
"""

import json
from pathlib import Path

import tensorflow as tf

from tfcxr.constants import SMALL_SIZE, STAGE1_CROP, STAGE2_PATCH, STAGE3_CROP
from tfcxr.data import augment as augmentations
from tfcxr.data import fmix as fmix_lib
from tfcxr.data import schema

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_IMAGE_SIZE = {1: STAGE1_CROP, 2: STAGE2_PATCH, 3: STAGE3_CROP}
SHUFFLE_RECORDS = {1: 4096, 2: 512, 3: 512}  # records: ~40 kB small PNGs vs ~0.4-1 MB originals
INTERLEAVE_FILES = 8  # shards read at once when training
# Stage 2 cuts K patches from each decoded 1024 original: the PNG decode, not the patch, is the cost
# (benchmarks/results/pipeline.md). PATCHES_PER_IMAGE is the trainer's K (make_dataset's default is the
# paper's 1); PATCH_SHUFFLE patches (64 MiB at 128 px) mix them so that a batch of 64 holds patches of
# ~54 originals on average at K=16 (benchmarks/bench_pipeline.py measures it; tests/test_pipeline.py tests the mixing).
PATCHES_PER_IMAGE = 16
PATCH_SHUFFLE = 4096


def shard_files(records_dir, split, small=False):
    """The split's shard paths in manifest order; `small`: the small-only shards when listed.

    Without a manifest, the `{split}-*.tfrecord` files in name order.
    """
    records_dir = Path(records_dir)
    manifest_path = records_dir / schema.MANIFEST
    if manifest_path.exists():
        splits = json.loads(manifest_path.read_text())["splits"]
        if split not in splits:
            raise ValueError(f"{manifest_path}: no split {split!r} (has {sorted(splits)})")
        shards = (splits[split].get("small_shards") if small else None) or splits[split]["shards"]
        files = [records_dir / shard["file"] for shard in shards]
    else:
        files = sorted(records_dir.glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"{records_dir}: no {split} shards")
    for path in files:
        if not path.exists():
            raise FileNotFoundError(f"{path}: shard listed in {schema.MANIFEST} is missing")
    return [str(path) for path in files]


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


def _feature_keys(stage, include_metadata):
    keys = [schema.SMALL] if stage == 1 else [schema.ENCODED, schema.FORMAT, schema.HEIGHT, schema.WIDTH]
    return keys + [schema.LABELS] + ([schema.FILENAME, schema.PATIENT_ID] if include_metadata else [])


def _decode(features, stage):
    """The record's image as uint8 [H, W, 1]: image/small for stage 1, else the original."""
    if stage == 1:
        return tf.io.decode_png(features[schema.SMALL], channels=1)
    return schema.decode_original(
        features[schema.ENCODED], features[schema.FORMAT],
        tf.cast(features[schema.HEIGHT], tf.int32), tf.cast(features[schema.WIDTH], tf.int32))


def _record_image(image, seed, stage, training, augment, tta, image_size, resize_size):
    """Per-record geometry, uint8 in and out: decoded [H, W, 1] -> the crop (flipped), crops or resize."""
    if stage == 1:
        image = resize_uint8(image, resize_size)  # [resize, resize, 1]
    if training:
        crop_seed, flip_seed = augmentations.split_seed(seed, 2)
        image = augmentations.random_crop(image, image_size, crop_seed)  # [size, size, 1]
        if augment == "fmix":
            return image
        return augmentations.random_flip(image, flip_seed, horizontal=True, vertical=stage == 2)
    if tta == "tencrop":
        return augmentations.ten_crop(image, image_size)  # [10, size, size, 1]
    return image if stage == 1 else resize_uint8(image, image_size)  # [size, size, 1]


def _random_patches(image, size, count, seed):
    """`count` random size x size windows of one image [H, W, 1], each flipped left-right and up-down
    with probability 1/2 -> [count, size, size, 1]."""
    crop_seed, flip_seed = augmentations.split_seed(seed, 2)
    crop_seeds = augmentations.split_seed(crop_seed, count)
    patches = tf.stack([augmentations.random_crop(image, size, s) for s in crop_seeds])  # [K, size, size, 1]
    return augmentations.random_flip(patches, flip_seed, horizontal=True, vertical=True)


def _augment_batch(batch, seed, stage, augment, rotation):
    """Per-batch augmentation when training: uint8 flipped crops [B, H, W, 1] -> float32 in [0, 1]."""
    rotation_seed, color_seed = augmentations.split_seed(seed, 2)
    images = batch["image"]
    if augment == "fmix":
        images, labels = fmix_lib.fmix(to_float(images), batch["labels"], color_seed)
        return {**batch, "image": images, "labels": labels}
    if stage != 2 and rotation == "pipeline":
        images = augmentations.random_rotation(images, rotation_seed)
    images = to_float(images)
    if stage == 1 and rotation == "pipeline":
        images = augmentations.random_contrast(images, color_seed)
    return {**batch, "image": images}


def _check_args(stage, training, augment, rotation, tta, resize_size, patches_per_image):
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    if not (isinstance(patches_per_image, int) and patches_per_image >= 1) or (patches_per_image > 1 and not (stage == 2 and training)):
        raise ValueError(f"patches_per_image={patches_per_image!r}: 1, or more for stage 2 training only")
    if augment not in ("bl5", "fmix") or (augment == "fmix" and stage != 1):
        raise ValueError(f"augment={augment!r}: 'bl5', or 'fmix' for stage 1 only")
    if rotation not in ("pipeline", "device") or (rotation == "device" and stage == 2):
        raise ValueError(f"rotation={rotation!r}: 'pipeline', or 'device' for stages 1 and 3")
    if tta not in ("none", "tencrop") or (tta == "tencrop" and (training or stage == 2)):
        raise ValueError(f"tta={tta!r}: 'none', or 'tencrop' for evaluation of stage 1 or 3")
    if resize_size is not None and stage != 1:
        raise ValueError(f"resize_size applies to stage 1 only, got {resize_size} for stage {stage}")


def make_dataset(
    records_dir,
    split,
    stage,
    batch_size,
    training,
    *,
    image_size=None,
    resize_size=None,
    augment="bl5",
    rotation=None,
    seed=None,
    include_metadata=False,
    input_context=None,
    repeat=False,
    tta="none",
    drop_remainder=None,
    patches_per_image=1,
):
    """The input pipeline of `stage` on `split` (see the module docstring).

    rotation: None = "device" for stage 3, "pipeline" for stage 1 (stage 2 does not rotate);
    stage 1 "device" leaves the rotation and the contrast to augment.device_augmentation(1).
    input_context: a tf.distribute.InputContext; each input pipeline reads its own shard files
    and batches per replica. drop_remainder defaults to `training`.
    patches_per_image: stage 2 training: K patches of each decoded original, each one an element
    (K=1: one patch per decode, the paper's loader, no patch shuffle buffer).
    """
    rotation = rotation or ("device" if stage == 3 else "pipeline")
    _check_args(stage, training, augment, rotation, tta, resize_size, patches_per_image)
    image_size = image_size or DEFAULT_IMAGE_SIZE[stage]
    resize_size = resize_size or SMALL_SIZE
    drop_remainder = training if drop_remainder is None else drop_remainder

    paths = shard_files(records_dir, split, small=stage == 1)
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
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=1 << 20),
        cycle_length=INTERLEAVE_FILES if training else 1,
        num_parallel_calls=AUTOTUNE if training else None,
    )
    if training:
        records = records.shuffle(SHUFFLE_RECORDS[stage], seed=seed)

    keys = _feature_keys(stage, include_metadata)

    def load(serialized, seed):
        features = schema.parse(serialized, keys)
        record_seed, batch_seed = augmentations.split_seed(seed, 2)
        image = _record_image(_decode(features, stage), record_seed, stage, training, augment, tta, image_size, resize_size)
        example = {"image": image, "labels": tf.cast(features[schema.LABELS], tf.float32)}
        if include_metadata:
            example.update(filename=features[schema.FILENAME], patient_id=features[schema.PATIENT_ID])
        return {**example, "seed": batch_seed} if training else example

    def load_patches(serialized, seed):
        """Stage 2 with K > 1: one decode -> K examples [K, ...], one seed [2] each."""
        features = schema.parse(serialized, keys)
        record_seed, batch_seed = augmentations.split_seed(seed, 2)
        patches = _random_patches(_decode(features, stage), image_size, patches_per_image, record_seed)
        example = {"image": patches, "labels": tf.cast(features[schema.LABELS], tf.float32),
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
        return _augment_batch(batch, seed, stage, augment, rotation)

    seeds = tf.data.Dataset.random(seed=seed).batch(2)  # one stateless seed [2] per record
    if patches_per_image > 1:
        dataset = tf.data.Dataset.zip(records, seeds).map(load_patches, num_parallel_calls=AUTOTUNE)
        dataset = dataset.unbatch().shuffle(PATCH_SHUFFLE, seed=seed)  # K patches of many originals mixed
    else:
        dataset = tf.data.Dataset.zip(records, seeds).map(load, num_parallel_calls=AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = not training or seed is not None
    return dataset.with_options(options)
