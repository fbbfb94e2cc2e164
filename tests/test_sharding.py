"""tfcxr.data.sharding + tools/shard_cxr14.py on hand-built trees, the synthetic tree and real PNGs."""

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image, PngImagePlugin

from tfcxr.constants import LABELS
from tfcxr.data import metadata, schema, sharding
from tfcxr.data.sharding import ShardingError
from helpers import ROOT, run_shard, run_tool, write_tree

TOOL = ROOT / "tools" / "shard_cxr14.py"


def examples(path):
    return [tf.train.Example.FromString(record.numpy()) for record in tf.data.TFRecordDataset(str(path))]


def feature(example, key):
    value = example.features.feature[key]
    return (list(value.bytes_list.value) or list(value.int64_list.value)
            or list(value.float_list.value))


def tree_bytes(out_dir):
    """Every shard and the manifest, by relative path (the .progress sidecars are bookkeeping)."""
    return {path.relative_to(out_dir).as_posix(): path.read_bytes()
            for path in sorted(Path(out_dir).rglob("*")) if path.is_file() and ".progress" not in path.parts}


def source_image(data_dir, name):
    return next(Path(data_dir).glob(f"images*/**/{name}"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("tree") / "cxr14", num_patients=10, images_per_patient=3)


@pytest.fixture(scope="module")
def sharded(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    return out, run_shard(tree, out)


def test_manifest_describes_what_was_written(tree, sharded):
    out, manifest = sharded
    assert json.loads((out / schema.MANIFEST).read_text()) == manifest
    assert manifest["labels"] == list(LABELS)
    assert (manifest["label_file"], manifest["label_version"]) == ("Data_Entry_2017.csv", "2017")
    assert (manifest["seed"], manifest["small_size"], manifest["encoding"]) == (0, 8, "png")
    assert manifest["converted"] == [] and manifest["missing"] == {"train": [], "val": [], "test": []}
    csv = pd.read_csv(tree / "Data_Entry_2017.csv", index_col=False).set_index("Image Index")
    seen = []
    for split, summary in manifest["splits"].items():
        names, patients, labels = [], set(), np.zeros(len(LABELS), np.int64)
        count = len(summary["shards"])
        for index, (entry, small_entry) in enumerate(zip(summary["shards"], summary["small_shards"], strict=True)):
            path = out / entry["file"]
            assert entry["file"] == schema.shard_name(split, index, count)
            assert small_entry["file"] == f"small/{entry['file']}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            assert hashlib.sha256((out / small_entry["file"]).read_bytes()).hexdigest() == small_entry["sha256"]
            records = examples(path)
            assert entry["records"] == small_entry["records"] == len(records) > 0
            for example in records:
                names.append(feature(example, schema.FILENAME)[0].decode())
                patients.add(feature(example, schema.PATIENT_ID)[0])
                labels += feature(example, schema.LABEL_VECTOR)
        assert summary["planned"] == summary["written"] == len(names) == len(set(names))
        assert summary["patients"] == len(patients)
        assert summary["label_counts"] == dict(zip(LABELS, labels.tolist()))
        assert set(csv.loc[names, "Patient ID"]) == patients
        seen += names
    assert sorted(seen) == sorted(csv.index)
    assert manifest["splits"]["test"]["written"] == 6  # the last two patients, three images each
    assert names != sorted(names)  # shuffled within the split


def test_records_hold_the_source_pixels_labels_and_metadata(tree, sharded):
    out, manifest = sharded
    csv = pd.read_csv(tree / "Data_Entry_2017.csv", index_col=False).set_index("Image Index")
    shard = manifest["splits"]["train"]["shards"][0]
    for example, small_example in zip(examples(out / shard["file"]), examples(out / "small" / shard["file"])):
        name = feature(example, schema.FILENAME)[0].decode()
        row = csv.loc[name]
        with Image.open(source_image(tree, name)) as image:
            source = np.asarray(image)
        original = tf.io.decode_png(feature(example, schema.ENCODED)[0]).numpy()
        np.testing.assert_array_equal(original[..., 0], source)
        small = tf.io.decode_png(feature(example, schema.SMALL)[0]).numpy()[..., 0]
        np.testing.assert_array_equal(
            small, np.asarray(Image.fromarray(source).resize((8, 8), Image.Resampling.BILINEAR)))
        assert feature(example, schema.FORMAT) == [b"png"]
        assert (feature(example, schema.HEIGHT), feature(example, schema.WIDTH)) == ([32], [32])
        expected = [int(label in row["Finding Labels"].split("|")) for label in LABELS]
        assert feature(example, schema.LABEL_VECTOR) == expected
        assert feature(example, schema.PATIENT_ID) == [row["Patient ID"]]
        assert feature(example, schema.FOLLOW_UP) == [row["Follow-up #"]]
        assert feature(example, schema.PATIENT_AGE) == [row["Patient Age"]]
        assert feature(example, schema.PATIENT_GENDER) == [row["Patient Gender"].encode()]
        assert feature(example, schema.VIEW_POSITION) == [row["View Position"].encode()]
        assert feature(example, schema.ORIGINAL_WIDTH) == [2500]
        assert feature(example, schema.ORIGINAL_HEIGHT) == [2048]
        assert feature(example, schema.PIXEL_SPACING_X) == [pytest.approx(0.143)]
        assert feature(example, schema.PIXEL_SPACING_Y) == [pytest.approx(0.168)]
        # small/: the same Example minus the original
        assert feature(small_example, schema.ENCODED) == [b""]
        example.features.feature[schema.ENCODED].bytes_list.value[0] = b""
        assert small_example == example


def test_shard_sizes_follow_shard_mb(tree, tmp_path):
    manifest = run_shard(tree, tmp_path, shard_mb=0.005)
    target = 0.005 * 2**20
    for split, summary in manifest["splits"].items():
        names = [feature(e, schema.FILENAME)[0].decode() for s in summary["shards"] for e in examples(tmp_path / s["file"])]
        source_bytes = sum(source_image(tree, name).stat().st_size for name in names)
        assert len(summary["shards"]) == max(1, -(-source_bytes // target))
        sizes = [shard["bytes"] for shard in summary["shards"]]
        assert sizes == [(tmp_path / shard["file"]).stat().st_size for shard in summary["shards"]]
        assert all(0.5 * target < size < 2 * target for size in sizes)  # + small image, metadata, framing
        counts = [shard["records"] for shard in summary["shards"]]
        assert max(counts) - min(counts) <= 1


def test_same_inputs_give_the_same_bytes(tree, sharded, tmp_path):
    out, _ = sharded
    run_shard(tree, tmp_path / "again")
    run_shard(tree, tmp_path / "workers", workers=2)
    kaggle = write_tree(tmp_path / "kaggle", num_patients=10, images_per_patient=3, layout="kaggle")
    run_shard(kaggle, tmp_path / "kaggle_records")
    reference = tree_bytes(out)
    assert sum(name.startswith("train-") for name in reference) > 1
    for other in ("again", "workers", "kaggle_records"):
        assert tree_bytes(tmp_path / other) == reference, other
    run_shard(tree, tmp_path / "seed1", seed=1)
    assert tree_bytes(tmp_path / "seed1") != reference


def test_rerun_skips_complete_shards_and_removes_stale_ones(tree, tmp_path):
    first = run_shard(tree, tmp_path)
    reference = tree_bytes(tmp_path)
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.tfrecord")}
    assert len(first["splits"]["train"]["shards"]) > 1
    victim = tmp_path / first["splits"]["train"]["shards"][-1]["file"]
    victim.unlink()
    (tmp_path / f".{victim.name}.123.tmp").write_bytes(b"half a shard")  # left by a killed run
    run_shard(tree, tmp_path)
    assert tree_bytes(tmp_path) == reference
    rewritten = {path for path, stamp in stamps.items() if path.stat().st_mtime_ns != stamp}
    assert rewritten == {victim, tmp_path / "small" / victim.name}
    manifest = run_shard(tree, tmp_path, shard_mb=1)  # one shard per split: the old ones go
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tfrecord")) == sorted(
        s["file"] for split in manifest["splits"].values() for s in split["shards"] + split["small_shards"])
    assert sorted(p.name for p in (tmp_path / sharding.PROGRESS_DIR).iterdir()) == [
        f"{split}-00000-of-00001.tfrecord.json" for split in ("test", "train", "val")]


def test_raw_encoding_round_trip(tree, tmp_path):
    manifest = run_shard(tree, tmp_path, encoding="raw")
    assert manifest["encoding"] == "raw"
    for shard in manifest["splits"]["val"]["shards"]:
        for record in tf.data.TFRecordDataset(str(tmp_path / shard["file"])):
            parsed = schema.parse(record)
            assert parsed[schema.FORMAT].numpy() == b"raw"
            original = schema.decode_original(parsed[schema.ENCODED], parsed[schema.FORMAT],
                                              parsed[schema.HEIGHT], parsed[schema.WIDTH]).numpy()
            with Image.open(source_image(tree, parsed[schema.FILENAME].numpy().decode())) as image:
                np.testing.assert_array_equal(original[..., 0], np.asarray(image))
            assert len(parsed[schema.ENCODED].numpy()) == 32 * 32


def test_conversions_and_stored_png(tmp_path):
    data_dir = write_tree(tmp_path / "cxr14", num_patients=4, images_per_patient=2)
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    quirks = {  # name -> (source image, expected 8-bit pixels)
        "00000001_000.png": (Image.fromarray(rgb).convert("RGBA"), np.asarray(Image.fromarray(rgb).convert("L"))),
        "00000001_001.png": (Image.fromarray(rgb), np.asarray(Image.fromarray(rgb).convert("L"))),
        "00000002_000.png": (Image.fromarray(gray.astype(np.uint16) * 257), gray),  # 16-bit: / 257
        "00000002_001.png": (Image.fromarray(gray).convert("P"), gray),
        "00000003_000.png": (Image.fromarray(gray), gray),  # not square, L, with a tIME chunk
    }
    for name, (image, _) in quirks.items():
        image.save(data_dir / "images" / name)
    info = PngImagePlugin.PngInfo()  # an ancillary chunk, as NIH's PNGs carry tIME
    info.add_text("Software", "scanner")
    Image.fromarray(gray).save(data_dir / "images" / "00000003_000.png", pnginfo=info)

    manifest = run_shard(data_dir, tmp_path / "records", val_images=2)
    assert manifest["converted"] == [{"image": "00000001_000.png", "mode": "RGBA"},
                                     {"image": "00000001_001.png", "mode": "RGB"},
                                     {"image": "00000002_000.png", "mode": "I;16"},
                                     {"image": "00000002_001.png", "mode": "P"}]
    stored = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            for example in examples(tmp_path / "records" / shard["file"]):
                stored[feature(example, schema.FILENAME)[0].decode()] = feature(example, schema.ENCODED)[0]
    for name, (_, expected) in quirks.items():
        decoded = tf.io.decode_png(stored[name]).numpy()
        assert decoded.shape == expected.shape + (1,)
        np.testing.assert_array_equal(decoded[..., 0], expected)
    with Image.open(io.BytesIO(stored["00000003_000.png"])) as image:
        assert image.mode == "L" and image.info == {}  # passed through without its text chunk


@pytest.mark.parametrize("breakage,message", [
    (lambda d: (d / "test_list.txt").unlink(), r"test_list.txt not found"),
    (lambda d: (d / "Data_Entry_2017.csv").unlink(), r"no label file"),
    (lambda d: edit(d / "Data_Entry_2017.csv", "Patient Age", "Age"), r"Data_Entry_2017.csv: missing column 'Patient Age'"),
    (lambda d: edit(d / "Data_Entry_2017.csv", "00000002_001.png,", "00000002_001.png,Flu|"),
     r"Data_Entry_2017.csv: line 5: unknown label 'Flu'"),
    (lambda d: edit(d / "test_list.txt", "00000008_000.png", "../00000008_000.png"),
     r"test_list.txt: image name '../00000008_000.png' is not a plain file name"),
    (lambda d: edit(d / "test_list.txt", "00000007_000.png", "00000001_000.png\n00000007_000.png"),
     r"1 images are in both train_val_list.txt and test_list.txt \(first: 00000001_000.png\)"),
    (lambda d: [(d / "images" / f"0000000{p}_000.png").unlink() for p in (1, 3, 5, 6)],
     r"4 of 16 listed images are missing \(first: 00000001_000.png, 00000003_000.png, 00000005_000.png\); "
     r"pass --allow_missing"),
])
def test_bad_input_fails_before_writing(tmp_path, breakage, message):
    data_dir = write_tree(tmp_path / "cxr14")
    breakage(data_dir)
    with pytest.raises(ShardingError, match=message):
        run_shard(data_dir, tmp_path / "records")
    assert not (tmp_path / "records").exists()


def edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


def test_missing_data_dir(tmp_path):
    with pytest.raises(ShardingError, match=r"nowhere: data_dir not found"):
        run_shard(tmp_path / "nowhere", tmp_path / "records")


def test_missing_images_are_skipped_and_listed_with_allow_missing(tmp_path):
    data_dir = write_tree(tmp_path / "cxr14")
    for name in ("00000001_000.png", "00000008_001.png"):
        (data_dir / "images" / name).unlink()
    manifest = run_shard(data_dir, tmp_path / "records", allow_missing=True)
    assert manifest["missing"]["test"] == ["00000008_001.png"]
    assert "00000001_000.png" in manifest["missing"]["train"] + manifest["missing"]["val"]
    assert sum(split["planned"] - split["written"] for split in manifest["splits"].values()) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_png_stops_the_run_and_loses_nothing(tmp_path, workers):
    data_dir = write_tree(tmp_path / "cxr14", num_patients=10, images_per_patient=3)
    out = tmp_path / "records"
    run_shard(data_dir, out)
    before = tree_bytes(out)
    bad = data_dir / "images" / "00000009_002.png"
    bad.write_bytes(bad.read_bytes()[:-200])  # truncated
    with pytest.raises(ShardingError, match=r"00000009_002.png: corrupt or truncated image"):
        run_shard(data_dir, out, workers=workers, shard_mb=0.005)  # every shard to write anew
    after = tree_bytes(out)
    assert all(after[name] == before[name] for name in before)  # the complete run, manifest included
    for name in set(after) - set(before):
        assert examples(out / name)  # what the failed run finished is complete (or this raises)
    assert not list(out.rglob("*.tmp"))

    manifest = run_shard(data_dir, out, workers=workers, allow_missing=True)
    assert [u["image"] for u in manifest["unreadable"]["test"]] == ["00000009_002.png"]
    assert manifest["splits"]["test"]["written"] == manifest["splits"]["test"]["planned"] - 1


def test_bad_crc_in_a_passed_through_png_is_caught(tmp_path):
    data_dir = write_tree(tmp_path / "cxr14")
    path = data_dir / "images" / "00000002_000.png"
    data = bytearray(path.read_bytes())
    data[-13] ^= 0xFF  # the last byte of the IDAT CRC (IEND is the last 12 bytes): PIL ignores it
    path.write_bytes(bytes(data))
    with pytest.raises(ShardingError, match=r"00000002_000.png: corrupt or truncated PNG \(bad b'IDAT' chunk"):
        run_shard(data_dir, tmp_path / "records")


@pytest.mark.slow
def test_cli_prints_one_error_line_and_exits_1(tmp_path):
    data_dir = write_tree(tmp_path / "cxr14")
    edit(data_dir / "Data_Entry_2017.csv", "00000002_001.png,", "00000002_001.png,Flu|")
    result = run_tool("shard_cxr14.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'records'}", "--workers=1",
                      timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {data_dir / 'Data_Entry_2017.csv'}: line 5: unknown label 'Flu'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "records").exists()


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_rerun_gives_the_same_bytes(tmp_path):
    data_dir = write_tree(tmp_path / "cxr14", num_patients=50, images_per_patient=4, size=128)
    options = dict(val_images=40, shard_mb=0.1, small_size=32)
    run_shard(data_dir, tmp_path / "reference", **options)
    reference = tree_bytes(tmp_path / "reference")
    out = tmp_path / "records"
    kill_at = random.randint(1, sum(name.endswith(".tfrecord") for name in reference) // 2)
    process = subprocess.Popen(
        [sys.executable, str(TOOL), f"--data_dir={data_dir}", f"--out_dir={out}", "--workers=2",
         *(f"--{flag}={value}" for flag, value in options.items())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, start_new_session=True)
    while len(final_shards(out)) < kill_at and process.poll() is None:
        assert_complete(out, reference)  # at any time, a final name holds a complete shard
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.02))
    os.killpg(process.pid, signal.SIGKILL)  # the CLI with its pool and forkserver
    assert process.wait() == -signal.SIGKILL, f"finished before shard {kill_at}"
    assert_complete(out, reference)
    assert not (out / schema.MANIFEST).exists()
    run_shard(data_dir, out, **options)  # the rerun
    assert tree_bytes(out) == reference
    assert not list(out.rglob("*.tmp"))


def final_shards(out):
    return [*out.glob("*.tfrecord"), *out.glob("small/*.tfrecord")]


def assert_complete(out, reference):
    for path in final_shards(out):
        name = path.relative_to(out).as_posix()
        assert path.read_bytes() == reference[name], name


def test_synthetic_tree_quirks_are_converted(synthetic_dir, records_dir):
    quirks = json.loads((synthetic_dir / "SYNTHETIC_QUIRKS.json").read_text())
    manifest = json.loads((records_dir / schema.MANIFEST).read_text())
    modes = {"rgba": "RGBA", "rgb": "RGB", "gray16": "I;16"}
    assert manifest["converted"] == [{"image": name, "mode": modes[quirk]}
                                     for name, quirk in sorted(quirks.items()) if quirk in modes]
    listed = [(synthetic_dir / name).read_text().split() for name in ("train_val_list.txt", "test_list.txt")]
    assert sum(split["written"] for split in manifest["splits"].values()) == sum(map(len, listed))
    not_square = next(name for name, quirk in quirks.items() if quirk == "not_square")
    sizes = {feature(e, schema.FILENAME)[0].decode(): (feature(e, schema.HEIGHT)[0], feature(e, schema.WIDTH)[0])
             for split in manifest["splits"].values() for s in split["shards"] for e in examples(records_dir / s["file"])}
    with Image.open(source_image(synthetic_dir, not_square)) as image:
        assert sizes[not_square] == (image.height, image.width) and image.width != image.height


@pytest.mark.slow
def test_real_images(real_dir, tmp_path):
    manifest = sharding.shard(real_dir, tmp_path, allow_missing=True, small_size=64, workers=1)
    index = pd.read_csv(real_dir / "images_index.csv").set_index("image_index")
    on_disk = index[index.file.str.startswith("images/")]
    splits = manifest["splits"]
    assert manifest["label_version"] == "v2020"
    assert splits["train"]["planned"] + splits["val"]["planned"] == 86_524
    assert splits["test"]["planned"] == 25_596
    # the plan does not depend on the disk: 64 images present, the same val as with all of them
    frame = metadata.read_metadata(metadata.find_label_file(real_dir))
    plan = metadata.plan_splits(frame, metadata.read_list(real_dir / "splits" / "train_val_list.txt"),
                                metadata.read_list(real_dir / "splits" / "test_list.txt"), 0, 10_000)
    assert splits["val"]["planned"] == len(plan["val"])
    assert sum(s["written"] for s in splits.values()) == 64
    assert manifest["converted"] == [{"image": name, "mode": "RGBA"}
                                     for name in sorted(on_disk.index[on_disk["mode"] == "RGBA"])]
    assert len(manifest["converted"]) == 2
    for split, summary in splits.items():
        for shard in summary["shards"]:
            for example in examples(tmp_path / shard["file"]):
                name = feature(example, schema.FILENAME)[0].decode()
                assert name in set(plan[split].image_index)
                row = index.loc[name]
                assert (row.official_split == "test") == (split == "test")
                original = tf.io.decode_png(feature(example, schema.ENCODED)[0]).numpy()
                assert original.shape == (1024, 1024, 1) and original.dtype == np.uint8
                with Image.open(real_dir / row.file) as image:
                    np.testing.assert_array_equal(original[..., 0], np.asarray(image.convert("L")))
                expected = [int(label in row.finding_labels.split("|")) for label in LABELS]
                assert feature(example, schema.LABEL_VECTOR) == expected
                assert feature(example, schema.PATIENT_ID) == [row.patient_id]
