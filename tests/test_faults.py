"""Faults named in one line: a corrupt or truncated shard while training, --verify of the sharder,
and a resumed epoch that skips serialized records yet reads the same batches."""

import json
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcxr.config import RunConfig
from tfcxr.data import pipeline, sharding
from tfcxr.train import loop, strategy
from helpers import run_tool
from tiny_models import SIZES, tiny_task


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture()
def own_records(records_dir, tmp_path):
    """A copy of the session's records, free to damage."""
    return shutil.copytree(records_dir, tmp_path / "records")


def shard_path(records, split, kind="small_shards", index=0):
    manifest = json.loads((records / "manifest.json").read_text())
    return records / manifest["splits"][split][kind][index]["file"]


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_train_shard_stops_training_naming_it_and_keeps_the_checkpoint(own_records, tmp_path):
    settings = dict(batch_size=8, steps_per_epoch=2, val_steps=1, weights=None, **SIZES)
    config = RunConfig.from_flags("baseline", records_dir=str(own_records), model_dir=str(tmp_path / "run"),
                                  epochs=1, **settings)
    loop.train(tiny_task(), config, strategy.make_strategy("one_device"))
    checkpoint = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    damaged = shard_path(own_records, "train")  # stage 1 reads image/small's shards
    for index in range(len(json.loads((own_records / "manifest.json").read_text())["splits"]["train"]["small_shards"])):
        flip_byte(shard_path(own_records, "train", index=index), 100)  # the first record's data: every read hits it
    more = RunConfig.from_flags("baseline", records_dir=str(own_records), model_dir=str(tmp_path / "run"),
                                epochs=2, **settings)
    with pytest.raises(pipeline.CorruptShard) as stopped:
        loop.train(tiny_task(), more, strategy.make_strategy("one_device"))
    message = str(stopped.value)
    assert re.fullmatch(rf"{re.escape(str(damaged))}: corrupt shard \(corrupted record at byte \d+, after record 0\); .*",
                        message), message
    assert "\n" not in message and "--verify" in message
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) == checkpoint


def test_find_damage_names_a_truncated_shard_and_the_records_before_the_cut(own_records):
    good, cut = shard_path(own_records, "val", "shards", 0), shard_path(own_records, "test", "shards", 0)
    records = sum(1 for _ in tf.data.TFRecordDataset(str(cut)))
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 10])  # the last record cut short
    assert pipeline.find_damage([str(good)]) is None
    path, count, words = pipeline.find_damage([str(good), str(cut)])
    assert (path, count) == (str(cut), records - 1) and words.startswith("truncated record at byte ")


@pytest.mark.slow
def test_verify_names_every_bad_shard_and_exits_non_zero(own_records):
    assert sharding.verify(own_records)[1] == []
    ok = run_tool("shard_cxr14.py", "--verify", f"--out_dir={own_records}", expect=0)
    assert "shards match" in ok.stdout
    flip_byte(shard_path(own_records, "train", "shards"), 200)
    truncated = shard_path(own_records, "val", "shards")
    truncated.write_bytes(truncated.read_bytes()[:-5])
    shard_path(own_records, "test", "small_shards").unlink()
    result = run_tool("shard_cxr14.py", "--verify", f"--out_dir={own_records}", expect=1)
    bad = [line.removeprefix("bad shard: ") for line in result.stderr.splitlines() if line.startswith("bad shard: ")]
    assert len(bad) == 3, result.stderr[-2000:]
    assert bad[0].startswith(f"{shard_path(own_records, 'train', 'shards')}: sha256 differs from the manifest's; "
                             "corrupted record at byte")
    assert bad[1].startswith(f"{truncated}: ") and "bytes, the manifest says" in bad[1] and "truncated record" in bad[1]
    assert bad[2] == f"{shard_path(own_records, 'test', 'small_shards')}: missing"
    assert result.stderr.strip().splitlines()[-1].startswith("error: 3 of ")


@pytest.mark.parametrize("patches_per_image", [1, 4])
def test_skipped_batches_are_the_whole_pipeline_s_batches(records_dir, patches_per_image):
    """skip_batches=k (records skipped before decode; with patches, after the patch shuffle) reads the
    batches k, k+1, ... of the same seeded pipeline read from its start."""
    inputs = (pipeline.InputSpec("image/small", 32, resize_size=40, rotation="device", contrast=True)
              if patches_per_image == 1 else pipeline.InputSpec("image/encoded", 32, vertical_flip=True, patches=True))

    def dataset(skip_batches=0):
        return pipeline.make_dataset(str(records_dir), "train", inputs, 4, True, seed=7, repeat=True,
                                     skip_batches=skip_batches, patches_per_image=patches_per_image)

    expected, skipped = list(dataset().skip(5).take(3)), list(dataset(skip_batches=5).take(3))
    assert len(skipped) == 3
    for want, got in zip(expected, skipped):
        assert sorted(want) == sorted(got)
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
