"""Records, runs and exports at URLs: everything through tf.io.gfile, on TensorFlow's in-memory ram://
filesystem (the same URL code path as gs://). ram:// lives in one process: every step runs here."""

import io
import json
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfcxr import storage
from tfcxr.config import RunConfig
from tfcxr.data import pipeline, sharding
from tfcxr.data.records import Records
from tfcxr.evaluate import classification
from tfcxr.export import saved_model
from tfcxr.models import load_model
from tfcxr.train import loop, strategy
from helpers import encode, gray_noise
from tiny_models import SIZES, tiny_task

BUCKET = "ram://remote_test"


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def no_local_ram_folder(*folders):
    """`Path("ram://x")` would make a local folder `ram:`: none may appear."""
    for folder in folders:
        assert not (Path(folder) / "ram:").exists(), folder


@pytest.mark.slow
def test_shard_train_resume_evaluate_export_in_a_bucket(synthetic_dir, tmp_path, capsys):
    records_dir, model_dir, export_dir = f"{BUCKET}/records", f"{BUCKET}/run", f"{BUCKET}/exports"
    manifest = sharding.shard(data_dir=synthetic_dir, out_dir=records_dir, seed=0, val_images=30, shard_mb=0.2,
                              workers=1, small_size=64, encoding="png")
    assert storage.read_manifest(records_dir) == json.loads(json.dumps(manifest))
    assert sharding.verify(records_dir)[1] == []

    settings = dict(batch_size=8, steps_per_epoch=2, val_steps=2, weights=None, checkpoint_every=1, **SIZES)
    first = RunConfig.from_flags("baseline", records_dir=records_dir, model_dir=model_dir, epochs=1, **settings)
    loop.train(tiny_task(), first, strategy.make_strategy("one_device"))
    assert tf.train.latest_checkpoint(f"{model_dir}/checkpoints").startswith(f"{model_dir}/checkpoints/ckpt-")
    resumed = RunConfig.from_flags("baseline", records_dir=records_dir, model_dir=model_dir, epochs=2, **settings)
    model = loop.train(tiny_task(), resumed, strategy.make_strategy("one_device"))
    assert f"resuming from {model_dir}/checkpoints" in capsys.readouterr().out
    log = pd.read_csv(io.StringIO(storage.read_text(f"{model_dir}/log.csv")))
    assert list(log["epoch"]) == [0, 1]
    assert storage.glob(f"{model_dir}/tensorboard/train/events.out.tfevents.*")

    best = load_model(f"{model_dir}/best.keras")
    inputs = tiny_task().input_spec(resumed)
    summary = classification.evaluate_classifier(best, records_dir, model_dir, inputs=inputs, split="test",
                                                 batch_size=8, resamples=20)
    assert summary["images"] > 0
    assert json.loads(storage.read_text(f"{model_dir}/eval/test/auc.json"))["images"] == summary["images"]
    assert storage.isfile(f"{model_dir}/eval/test/roc.png")

    path = saved_model.export(best, export_dir, image_size=inputs.eval_size, model_name="tfcxr_d121",
                              small_size=Records.open(records_dir).small_size,
                              label_names=pipeline.label_names(records_dir))
    assert path == f"{export_dir}/tfcxr_d121/1"
    served = tf.saved_model.load(path)
    probabilities = served.signatures["serving_default"](image_bytes=tf.constant([encode(gray_noise(64, 64))]))
    assert probabilities["probabilities"].shape == (1, 14)
    assert np.isfinite(model.get_weights()[0]).all()
    no_local_ram_folder(os.getcwd(), tmp_path, synthetic_dir, synthetic_dir.parent)


TINY_STAGE = """
import sys
sys.path.insert(0, "tests")
from tfcxr import stages
from tfcxr.evaluate.evaluators import CLASSIFICATION
from tfcxr.export.saved_model import ClassifierModule
from tiny_models import tiny_task
stages.STAGES.register(stages.Stage("tiny_baseline", None, tiny_task(), (CLASSIFICATION,), ClassifierModule,
                                    "tfcxr_tiny"))
"""


@pytest.mark.slow
def test_the_command_line_trains_resumes_evaluates_and_exports_in_a_bucket(synthetic_dir):
    """python -m tfcxr.main's modes, one after another in one process (ram:// is per process), with
    --records_dir, --model_dir and --export_dir all in ram://."""
    from helpers import ROOT, run_python

    script = TINY_STAGE + f"""
import json
import tensorflow as tf
from absl import flags
from tfcxr import main, storage
from tfcxr.data import sharding

sharding.shard(data_dir={str(synthetic_dir)!r}, out_dir="ram://bucket/records", seed=0, val_images=30, shard_mb=0.2,
               workers=1, small_size=64, encoding="png")

def run(*argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfcxr.main", *argv])
    main.main([])

common = ["--model_dir=ram://bucket/run"]
run("--stage=tiny_baseline", "--records_dir=ram://bucket/records", *common, "--batch_size=8", "--epochs=1",
    "--steps_per_epoch=2", "--val_steps=2", "--image_size=32", "--resize_size=40", "--weights=none")
run(*common, "--epochs=2")  # resumed from its config.json, in the bucket
run("--mode=evaluate", *common, "--split=test", "--resamples=10")
run("--mode=export", *common, "--export_dir=ram://bucket/export")
log = storage.read_text("ram://bucket/run/log.csv").splitlines()
summary = json.loads(storage.read_text("ram://bucket/run/eval/test/auc.json"))
served = tf.saved_model.load("ram://bucket/export/tfcxr_tiny/1")
probabilities = served.signatures["predict_images"](images=tf.zeros([1, 40, 40, 1]))["probabilities"]
print("RESULT", len(log) - 1, summary["images"], probabilities.shape[-1])
"""
    result = run_python("-c", script, expect=0)
    epochs, images, labels = result.stdout.split("RESULT")[-1].split()
    assert (int(epochs), labels) == (2, "14") and int(images) > 0
    assert "resuming from ram://bucket/run/checkpoints" in result.stdout
    no_local_ram_folder(ROOT, synthetic_dir.parent)
