"""tfcxr.data.make_dataset (the public entry point) at toy sizes: 128 px originals, small 64, crops 56 / 32 / 112.

`toy_records` writes records of known pixels (noise from a sparse value set, so a crop can be
found in its source and nearest rotation keeps the value set) in both encodings, with small-only
shards; `records_dir` (tests/conftest.py) is the synthetic tree sharded by tfcxr.data.sharding.
"""

import collections
import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcxr.constants import NUM_LABELS, ROTATION_DEGREES
from tfcxr.data import schema
from tfcxr.data import InputSpec, make_dataset, pipeline
from tfcxr import stages
from tfcxr.config import RunConfig
from helpers import encode, expected_zero_fraction

ORIGINAL, SMALL = 128, 64
SIZES = {1: dict(image_size=56, resize_size=SMALL), 2: dict(image_size=32), 3: dict(image_size=112)}
# The stages' inputs at these sizes; the baseline's rotation in the pipeline unless a test says "device".
INPUTS = {number: stages.STAGES[number].task.inputs.with_sizes(**SIZES[number]) for number in SIZES}
INPUTS[1] = dataclasses.replace(INPUTS[1], rotation="pipeline")
SHARDS = {"train": [4, 4, 4], "val": [3, 2]}  # records per shard
VALUES = np.arange(1, 256, 4, dtype=np.uint8)  # pixel values of the originals (never 0)


def write_records(out_dir, sources, encoding):
    """Shards `sources` as SHARDS says, with small-only copies under small/ and a manifest."""
    splits, names = {}, iter(sources)
    (out_dir / "small").mkdir(parents=True)
    for split, sizes in SHARDS.items():
        splits[split] = {"shards": [], "small_shards": []}
        for index, size in enumerate(sizes):
            name = schema.shard_name(split, index, len(sizes))
            with tf.io.TFRecordWriter(str(out_dir / name)) as full, tf.io.TFRecordWriter(str(out_dir / "small" / name)) as small:
                for _ in range(size):
                    filename = next(names)
                    source = sources[filename]
                    original = source["original"]
                    example = schema.make_example(
                        encoded=original.tobytes() if encoding == "raw" else encode(original),
                        image_format=encoding, small=encode(source["small"]), filename=filename,
                        height=ORIGINAL, width=ORIGINAL, labels=source["labels"], patient_id=source["patient_id"])
                    full.write(example.SerializeToString())
                    del example.features.feature[schema.ENCODED]  # small-only: no original
                    small.write(example.SerializeToString())
            splits[split]["shards"].append({"file": name, "records": size})
            splits[split]["small_shards"].append({"file": f"small/{name}", "records": size})
    (out_dir / schema.MANIFEST).write_text(json.dumps({"encoding": encoding, "small_size": SMALL, "splits": splits}))


@pytest.fixture(scope="module")
def sources():
    """filename -> original [128, 128], small [64, 64], labels, patient_id; in shard order."""
    rng = np.random.default_rng(0)
    sources = {}
    for i in range(sum(sum(sizes) for sizes in SHARDS.values())):
        original = rng.choice(VALUES, (ORIGINAL, ORIGINAL))
        small = np.asarray(Image.fromarray(original).resize((SMALL, SMALL), Image.BILINEAR))
        labels = rng.integers(0, 2, NUM_LABELS)
        sources[f"{i:08d}_000.png"] = dict(original=original, small=small, labels=labels, patient_id=1000 + i)
    return sources


@pytest.fixture(scope="module")
def toy_records(sources, tmp_path_factory):
    """{"png": dir, "raw": dir}: the same sources in both encodings."""
    dirs = {}
    for encoding in ("png", "raw"):
        dirs[encoding] = tmp_path_factory.mktemp(f"toy_{encoding}")
        write_records(dirs[encoding], sources, encoding)
    return dirs


def inputs_of(stage, rotation=None):
    """The toy-sized InputSpec of stage number `stage`, its rotation moved where asked."""
    return dataclasses.replace(INPUTS[stage], rotation=rotation) if rotation else INPUTS[stage]


def batches(records, split, stage, batch_size=4, training=False, take=None, rotation=None, **kwargs):
    dataset = make_dataset(records, split, inputs_of(stage, rotation), batch_size, training, include_metadata=True,
                           **kwargs)
    return list((dataset.take(take) if take else dataset).as_numpy_iterator())


def stacked(batch_list, key):
    return np.concatenate([batch[key] for batch in batch_list])


def names(batch_list):
    return [name.decode() for name in stacked(batch_list, "filename")]


def find_window(source, patch):
    """(y, x) of `patch` inside `source`, or None."""
    height, width = patch.shape
    ys, xs = np.nonzero(source[: source.shape[0] - height + 1, : source.shape[1] - width + 1] == patch[0, 0])
    for y, x in zip(ys, xs):
        if np.array_equal(source[y:y + height, x:x + width], patch):
            return int(y), int(x)
    return None


def locate(source, patch):
    """(horizontal flip, vertical flip, y, x) under which `patch` is a window of `source`."""
    for horizontal in (False, True):
        for vertical in (False, True):
            candidate = patch[:, ::-1] if horizontal else patch
            found = find_window(source, candidate[::-1] if vertical else candidate)
            if found:
                return (horizontal, vertical, *found)
    return None


def as_uint8(images):
    pixels = np.round(images * 255)
    assert np.allclose(images * 255, pixels, atol=1e-3)  # float images are exact uint8 / 255
    return pixels.astype(np.uint8)


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_shapes_range_labels_metadata(toy_records, sources, stage, training):
    result = batches(toy_records["png"], "train", stage, training=training, seed=0)
    size = SMALL if stage == 1 and not training else SIZES[stage]["image_size"]
    for batch in result:
        assert batch["image"].shape == (4, size, size, 1) and batch["image"].dtype == np.float32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert batch["labels"].shape == (4, NUM_LABELS) and batch["labels"].dtype == np.float32
        assert batch["patient_id"].dtype == np.int64
    assert sorted(names(result)) == [name for name in sources][:12]
    for name, labels, patient_id in zip(names(result), stacked(result, "labels"), stacked(result, "patient_id")):
        np.testing.assert_array_equal(labels, sources[name]["labels"])
        assert patient_id == sources[name]["patient_id"]


def record_labels(records_dir, split):
    """filename -> labels, parsed straight from the split's full shards."""
    manifest = json.loads((records_dir / schema.MANIFEST).read_text())
    paths = [str(records_dir / shard["file"]) for shard in manifest["splits"][split]["shards"]]
    records = tf.data.TFRecordDataset(paths).map(lambda r: schema.parse(r, [schema.FILENAME, schema.LABEL_VECTOR]))
    return {r[schema.FILENAME].decode(): r[schema.LABEL_VECTOR] for r in records.as_numpy_iterator()}


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_sharded_synthetic_records(records_dir, stage, training):
    expected = record_labels(records_dir, "train")
    result = batches(records_dir, "train", stage, batch_size=8, training=training, seed=0)
    size = SMALL if stage == 1 and not training else SIZES[stage]["image_size"]
    assert stacked(result, "image").shape[1:] == (size, size, 1)
    assert 0.0 <= stacked(result, "image").min() and stacked(result, "image").max() <= 1.0
    assert len(result) == (len(expected) // 8 if training else -(-len(expected) // 8))
    for name, labels in zip(names(result), stacked(result, "labels"), strict=True):
        np.testing.assert_array_equal(labels, expected[name])
    if not training:
        assert names(result) == list(expected)  # record order


def test_eval_images_and_record_order(toy_records, sources):
    stage1 = batches(toy_records["png"], "val", 1, batch_size=2)
    assert names(stage1) == list(sources)[12:]  # manifest order of shards, file order of records
    assert [len(batch["filename"]) for batch in stage1] == [2, 2, 1]  # eval keeps the remainder
    for name, image in zip(names(stage1), stacked(stage1, "image")):
        np.testing.assert_array_equal(as_uint8(image[..., 0]), sources[name]["small"])
    for stage in (2, 3):
        size = SIZES[stage]["image_size"]
        result = batches(toy_records["png"], "val", stage)
        assert names(result) == list(sources)[12:]
        for name, image in zip(names(result), stacked(result, "image")):
            pil = np.asarray(Image.fromarray(sources[name]["original"]).resize((size, size), Image.BILINEAR))
            assert np.abs(as_uint8(image[..., 0]).astype(int) - pil).max() <= 2  # PIL's antialiased resize


@pytest.mark.parametrize("stage", [1, 3])
def test_eval_is_deterministic(toy_records, stage):
    dataset = make_dataset(toy_records["png"], "val", INPUTS[stage], 2, False)
    first, second = list(dataset.as_numpy_iterator()), list(dataset.as_numpy_iterator())
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_training_is_seeded(toy_records, stage):
    def images(seed):
        return stacked(batches(toy_records["png"], "train", stage, training=True, seed=seed), "image")

    np.testing.assert_array_equal(images(1), images(1))
    assert not np.array_equal(images(1), images(2))


def test_stage2_patches_are_flipped_windows(toy_records, sources):
    result = batches(toy_records["png"], "train", 2, batch_size=8, training=True, seed=0, repeat=True, take=16)
    found = [locate(sources[name]["original"], as_uint8(image[..., 0])) for name, image in zip(names(result), stacked(result, "image"))]
    assert None not in found  # every patch is a full-resolution window of its own original
    horizontal, vertical = np.mean([f[0] for f in found]), np.mean([f[1] for f in found])
    assert 0.35 < horizontal < 0.65 and 0.35 < vertical < 0.65
    assert len({f[2:] for f in found}) > 100  # offsets vary


def patch_batches(records, patches_per_image=4, seed=0, batch_size=8, **kwargs):
    return batches(records, "train", 2, batch_size=batch_size, training=True, seed=seed,
                   patches_per_image=patches_per_image, **kwargs)


def test_stage2_patches_per_image(toy_records, sources):
    """K=4: one pass gives 4 distinct flipped windows of each of the 12 train originals."""
    result = patch_batches(toy_records["png"])
    assert len(result) == 12 * 4 // 8 and all(batch["image"].shape == (8, 32, 32, 1) for batch in result)
    found = collections.defaultdict(list)
    for name, image, labels in zip(names(result), stacked(result, "image"), stacked(result, "labels")):
        np.testing.assert_array_equal(labels, sources[name]["labels"])
        found[name].append(locate(sources[name]["original"], as_uint8(image[..., 0])))
    assert sorted(found) == list(sources)[:12] and all(len(f) == 4 for f in found.values())
    assert all(None not in f and len({w[2:] for w in f}) == 4 for f in found.values())  # 4 distinct windows each
    flips = [w[:2] for f in found.values() for w in f]
    assert 0.25 < np.mean([h for h, _ in flips]) < 0.75 and 0.25 < np.mean([v for _, v in flips]) < 0.75


def test_stage2_patches_per_image_is_seeded_and_resumable(toy_records):
    """The same seed gives the same batches; a fresh pipeline skipping n batches gives the rest
    (what the loop does to resume mid-epoch)."""
    def images(seed, skip=0):
        dataset = make_dataset(toy_records["png"], "train", INPUTS[2], 8, True, seed=seed, repeat=True,
                               patches_per_image=4)
        return np.stack([batch["image"] for batch in dataset.skip(skip).take(10 - skip).as_numpy_iterator()])

    full = images(1)
    np.testing.assert_array_equal(full, images(1))
    np.testing.assert_array_equal(full[6:], images(1, skip=6))
    assert not np.array_equal(full, images(2))


def test_stage2_patches_are_mixed(toy_records, monkeypatch):
    """The patch shuffle buffer mixes originals: a batch of 8 holds ~6 of the 12; without it, 2."""
    def originals_per_batch():
        return [len(set(batch["filename"])) for batch in patch_batches(toy_records["png"])]

    assert np.mean(originals_per_batch()) >= 5
    monkeypatch.setattr(pipeline, "PATCH_SHUFFLE", 1)
    assert originals_per_batch() == [2] * 6  # 4 consecutive patches per original


def test_trainer_passes_patches_per_image(toy_records):
    """The autoencoder stage's dataset: config.patches_per_image when training, whole resizes for val."""
    config = RunConfig.from_flags("autoencoder", records_dir=str(toy_records["png"]), batch_size=8, image_size=32,
                                  patches_per_image=4)
    train = stages.STAGES["autoencoder"].task.dataset(config, "train", training=True, seed=0)
    assert len(list(train)) == 12 * 4 // 8
    assert len(list(stages.STAGES["autoencoder"].task.dataset(config, "val", training=False))) == 1  # 5 val images
    assert RunConfig("autoencoder").data.patches_per_image == pipeline.PATCHES_PER_IMAGE


def test_stage3_crops_without_rotation_by_default(toy_records, sources):
    result = batches(toy_records["png"], "train", 3, batch_size=8, training=True, seed=0, repeat=True, take=8)
    found = [locate(sources[name]["original"], as_uint8(image[..., 0])) for name, image in zip(names(result), stacked(result, "image"))]
    assert None not in found and not any(f[1] for f in found)  # crops, horizontal flips only
    assert 0.3 < np.mean([f[0] for f in found]) < 0.7


def test_stage3_rotation_in_pipeline(toy_records):
    result = batches(toy_records["png"], "train", 3, batch_size=8, training=True, seed=0, repeat=True, take=8, rotation="pipeline")
    images = as_uint8(stacked(result, "image"))
    assert set(np.unique(images)) <= set(VALUES) | {0}  # nearest: no new values, black fill
    expected = expected_zero_fraction(SIZES[3]["image_size"], ROTATION_DEGREES)
    assert abs((images == 0).mean() - expected) < 0.2 * expected


def test_stage1_bl5_and_fmix(toy_records, sources):
    bl5 = batches(toy_records["png"], "train", 1, batch_size=4, training=True, seed=0, repeat=True, take=8)
    assert (stacked(bl5, "image") == 0).mean() > 0  # rotation corners (the smalls have no black)
    for name, labels in zip(names(bl5), stacked(bl5, "labels")):
        np.testing.assert_array_equal(labels, sources[name]["labels"])
    device = batches(toy_records["png"], "train", 1, batch_size=4, training=True, seed=0, repeat=True, take=8,
                     rotation="device")  # rotation and contrast left to pipeline.device_augmentation
    assert (as_uint8(stacked(device, "image")) == 0).mean() == 0  # exact 8-bit levels (no contrast), no black fill
    fmix = batches(toy_records["png"], "train", 1, batch_size=4, training=True, seed=0, repeat=True, take=8, augment="fmix")
    assert (stacked(fmix, "image") == 0).mean() == 0  # no rotation with FMix
    fractions = [batch["labels"][(batch["labels"] > 0) & (batch["labels"] < 1)] for batch in fmix]
    assert sum(len(f) for f in fractions) > 0  # labels are mixed
    for fraction in fractions:  # by one lambda per batch: every mixed label is lambda or 1 - lambda
        assert len(np.unique(np.round(np.minimum(fraction, 1 - fraction), 5))) <= 1
    assert not np.array_equal(stacked(bl5, "image"), stacked(fmix, "image"))


def test_stage1_reads_small_shards(toy_records, sources, tmp_path):
    records = tmp_path / "records"
    shutil.copytree(toy_records["png"], records)
    for path in records.glob("*.tfrecord"):
        path.unlink()  # only small/ is left: stage 1 must not need the full shards
    result = batches(records, "val", 1)
    assert names(result) == list(sources)[12:]
    with pytest.raises(FileNotFoundError, match="val-00000-of-00002.tfrecord"):
        make_dataset(records, "val", INPUTS[2], 4, False)


def test_stage1_falls_back_to_full_shards_and_glob(toy_records, sources, tmp_path):
    records = tmp_path / "records"
    shutil.copytree(toy_records["png"], records)
    shutil.rmtree(records / "small")
    manifest = json.loads((records / schema.MANIFEST).read_text())
    for split in manifest["splits"].values():
        del split["small_shards"]
    (records / schema.MANIFEST).write_text(json.dumps(manifest))
    assert names(batches(records, "val", 1)) == list(sources)[12:]
    (records / schema.MANIFEST).unlink()
    assert names(batches(records, "val", 1)) == list(sources)[12:]


@pytest.mark.parametrize("training", [False, True])
def test_input_context_shards_files(toy_records, sources, training):
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2)
        result = batches(toy_records["png"], "train", 2, batch_size=4, training=training, seed=0, input_context=context)
        assert all(len(batch["filename"]) == 2 for batch in result)  # per-replica batch
        seen.append(set(names(result)))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(list(sources)[:12])
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(ValueError, match="2 val shards cannot feed 3"):
        make_dataset(toy_records["png"], "val", INPUTS[2], 6, False, input_context=context)


@pytest.mark.parametrize("stage, source_key", [(1, "small"), (3, "original")])
def test_tencrop(toy_records, sources, stage, source_key):
    size = SIZES[stage]["image_size"]
    result = batches(toy_records["png"], "val", stage, tta="tencrop")
    for name, crops in zip(names(result), stacked(result, "image")):
        assert crops.shape == (10, size, size, 1)
        image = sources[name][source_key]
        height, width = image.shape
        corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size),
                   ((height - size) // 2, (width - size) // 2)]  # even margins here: no rounding
        expected = [image[y:y + size, x:x + size] for y, x in corners]
        expected += [image[:, ::-1][y:y + size, x:x + size] for y, x in corners]
        np.testing.assert_array_equal(as_uint8(crops[..., 0]), np.stack(expected))


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_raw_and_png_records_give_identical_images(toy_records, stage, training):
    png_batches, raw_batches = (batches(toy_records[e], "train", stage, training=training, seed=3, rotation="pipeline" if stage == 3 else None)
                                for e in ("png", "raw"))
    np.testing.assert_array_equal(stacked(png_batches, "image"), stacked(raw_batches, "image"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(stage=2, augment="fmix"), "augment"),
    (dict(stage=3, training=True, tta="tencrop"), "tta"),
    (dict(stage=2, tta="tencrop"), "tta"),
    (dict(stage=2, patches_per_image=4), "patches_per_image"),  # not for evaluation
    (dict(stage=3, training=True, patches_per_image=4), "patches_per_image"),
    (dict(stage=2, training=True, patches_per_image=0), "patches_per_image"),
])
def test_bad_arguments(toy_records, kwargs, message):
    kwargs = {"split": "val", "batch_size": 2, "training": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_dataset(toy_records["png"], inputs=INPUTS[kwargs.pop("stage")], **kwargs)


@pytest.mark.parametrize("spec, message", [
    (lambda: InputSpec(schema.SMALL, 56), "resize_size"),  # image/small needs its resize
    (lambda: InputSpec(schema.ENCODED, 32, resize_size=64), "resize_size"),
    (lambda: InputSpec("image/other", 32), "feature"),
    (lambda: InputSpec(schema.ENCODED, 32, rotation="sideways"), "rotation"),
    (lambda: InputSpec(schema.ENCODED, 32, contrast=True), "contrast needs a rotation"),
    (lambda: INPUTS[3].with_sizes(resize_size=256), "resize_size"),
])
def test_bad_input_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        spec()


def test_input_spec_sizes():
    """with_sizes keeps what is not given; eval_size is image/small's resize or the original's."""
    assert INPUTS[1].eval_size == SMALL and INPUTS[3].eval_size == 112
    assert INPUTS[1].with_sizes(image_size=48) == dataclasses.replace(INPUTS[1], image_size=48)
    assert INPUTS[3].with_sizes() == INPUTS[3]


def test_missing_split(toy_records, tmp_path):
    with pytest.raises(ValueError, match="no split 'test'"):
        make_dataset(toy_records["png"], "test", INPUTS[1], 2, False)
    with pytest.raises(FileNotFoundError, match="no test shards"):
        make_dataset(tmp_path, "test", INPUTS[1], 2, False)


@pytest.mark.slow
def test_public_entry_point_is_lazy():
    """tfcxr.data.make_dataset is the pipeline's; the TensorFlow-free data modules do not load TensorFlow."""
    import tfcxr.data

    assert tfcxr.data.make_dataset is pipeline.make_dataset
    with pytest.raises(AttributeError, match="no attribute 'make_datasets'"):
        tfcxr.data.make_datasets
    code = "import sys, tfcxr.data, tfcxr.data.metadata, tfcxr.data.synthetic; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
