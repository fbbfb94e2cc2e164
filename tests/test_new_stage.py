"""A new stage is one record: a toy fourth stage, defined here and nowhere else, trains, evaluates
and exports through tfcxr.main's modes with no other change to the package.

The toy: the paper's autoencoder trained on image/small (the baseline's 64 px thumbnails, resized
to 40, random 32 crops flipped both ways), measured as a codec, served as one.
"""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tfcxr.data import InputSpec, schema
from tfcxr import stages
from tfcxr.evaluate.evaluators import RECONSTRUCTION
from tfcxr.export.saved_model import CodecModule
from tfcxr.train import tasks
from helpers import concurrently, encode, run_mode

THUMBNAIL_CODEC = stages.Stage(
    "thumbnail_codec", None,
    tasks.Task(InputSpec(schema.SMALL, 32, resize_size=40, vertical_flip=True),
               tasks.build_autoencoder, tasks.reconstruction_loss, metrics=tasks.reconstruction_metrics,
               omits=("model.backbone", "model.weights", "init.classifier", "data.augment", "data.patches_per_image"),
               image_outputs=("reconstruction", "latent")),
    evaluators=(RECONSTRUCTION,), serving=CodecModule, export_name="tfcxr_thumbnail_codec")


def register():
    """Adds the toy to the stage records (what tfcxr.main's child process runs first)."""
    stages.STAGES.register(THUMBNAIL_CODEC)


def toy_mode(*argv, expect=0):
    """tfcxr.main in a child process that knows the toy stage."""
    setup = "import sys\nsys.path.insert(0, 'tests')\nimport test_new_stage\ntest_new_stage.register()"
    return run_mode(*argv, setup=setup, expect=expect)


@pytest.mark.slow
def test_a_toy_fourth_stage_trains_evaluates_and_exports(records_dir, tmp_path):
    run, export_dir = tmp_path / "run", tmp_path / "export"
    toy_mode("--stage=thumbnail_codec", f"--records_dir={records_dir}", f"--model_dir={run}", "--batch_size=8",
             "--epochs=1", "--steps_per_epoch=3", "--val_steps=2", "--learning_rate=1e-3")
    assert json.loads((run / "config.json").read_text())["stage"] == "thumbnail_codec"
    log = pd.read_csv(run / "log.csv")
    assert {"val_loss", "val_psnr", "val_psnr_8bit", "val_ssim_bicubic"} <= set(log) and "val_auc" not in log

    # stage, records, sizes: config.json's; evaluate writes into the run, export into export_dir
    concurrently(lambda: toy_mode("--mode=evaluate", f"--model_dir={run}", "--split=test"),
                 lambda: toy_mode("--mode=export", f"--model_dir={run}", f"--export_dir={export_dir}"))
    summary = json.loads((run / "eval" / "test" / "reconstruction.json").read_text())
    assert summary["stage"] == "thumbnail_codec" and "40x40" in summary["protocol"] and "latent 10x10" in summary["protocol"]
    assert not (run / "eval" / "test" / "auc.json").exists()  # not a classifier

    served = tf.saved_model.load(str(export_dir / "tfcxr_thumbnail_codec" / "1"))
    assert sorted(served.signatures) == ["compress", "reconstruct", "serving_default"]
    image = encode(np.random.default_rng(0).integers(0, 256, (90, 70), dtype=np.uint8))
    latent = served.signatures["serving_default"](image_bytes=tf.constant([image]))["latent"]
    assert latent.shape == (1, 22, 17, 1)  # a codec alone compresses each image at its own size (/4)
    reconstruction = served.signatures["reconstruct"](latent=latent)["reconstruction"]
    assert reconstruction.shape == (1, 88, 68, 1)


@pytest.mark.slow
def test_modes_that_a_stage_lacks_stop_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"stage": "thumbnail_codec"}))
    result, unknown = concurrently(
        lambda: toy_mode("--mode=explain", f"--model_dir={tmp_path}", "--images=x.png", expect=1),
        lambda: run_mode("--mode=explain", f"--model_dir={tmp_path}", "--images=x.png", expect=1))  # no toy here
    assert "needs a classifier; thumbnail_codec is not one" in result.stderr
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'config.json'}: --stage=thumbnail_codec: no such stage; one of baseline (1)")


@pytest.mark.slow
def test_plain_training_loads_no_evaluation_code():
    """--mode=train imports the stage records (their evaluator and serving module names), not the evaluation
    itself (matplotlib figures, sklearn tables, Grad-CAM): each evaluator imports its module when it runs."""
    import subprocess
    import sys

    heavy = ("tfcxr.evaluate.classification", "tfcxr.evaluate.reconstruction", "tfcxr.evaluate.gradcam",
             "tfcxr.evaluate.tables", "tfcxr.evaluate.metrics")
    code = ("import sys, tfcxr.quiet, tfcxr.main, tfcxr.train.loop; "
            f"print(sorted(m for m in sys.modules if m in {heavy!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
