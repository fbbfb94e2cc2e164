"""The real stages through `python -m tfcxr.main`: DenseNet121 (weights=None) and the autoencoder
at toy sizes, a couple of steps each, stage 3 starting from stages 1 and 2's best.keras."""

import json

import numpy as np
import pytest

from tfcxr import models
from tfcxr import stages
from tfcxr.config import RunConfig
from tfcxr.constants import LABELS
from tfcxr.train import callbacks
from helpers import tfcxr_main


def test_stage3_without_the_earlier_stages_stops_with_one_line(records_dir, tmp_path):
    missing = tmp_path / "stage2" / "best.keras"
    result = tfcxr_main("--stage=3", f"--records_dir={records_dir}", f"--model_dir={tmp_path / 'stage3'}",
                        f"--init_autoencoder={missing}", f"--init_classifier={missing}", expect=1)
    assert result.stderr.splitlines()[-1] == f"error: --init_codec={missing}: file not found (train the earlier stage first)"
    assert not (tmp_path / "stage3" / "checkpoints").exists()


@pytest.mark.slow
def test_stages_2_and_3_end_to_end(records_dir, tmp_path):
    """Stage 2 trains; stage 3 trains DenseNet121 in the AECNN from stage 2's best.keras and a stage 1
    best.keras (the real stage 1 model, saved untrained here: training it too would double the time;
    the tiny-classifier tests run stage 1's record through the same loop)."""
    common = [f"--records_dir={records_dir}", "--batch_size=8", "--steps_per_epoch=2", "--val_steps=2"]
    stage1 = tmp_path / "stage1" / "best.keras"
    stage1.parent.mkdir()
    callbacks.save_model_atomic(stages.STAGES[1].task.build_model(RunConfig("baseline").replace(weights="none"), LABELS),
                                stage1)

    # Two CPU replicas and float16 with loss scaling on the (tiny) autoencoder.
    stage2 = tfcxr_main("--stage=2", f"--model_dir={tmp_path / 'stage2'}", "--image_size=32", "--cpu_replicas=2",
                        "--mixed_precision=float16", "--epochs=2", *common)
    assert "best val_loss" in stage2.stdout and "AUC" not in stage2.stdout
    config = json.loads((tmp_path / "stage2" / "config.json").read_text())
    assert (config["stage"], config["runtime"]["cpu_replicas"], config["runtime"]["mixed_precision"],
            config["schedule"]["epochs"]) == ("autoencoder", 2, "float16", 2)
    assert "backbone" not in config["model"] and "classifier" not in config["init"]  # what applies to a codec only

    # learning_rate 0: stage 3 must hold exactly the weights it was initialised with.
    stage3 = tfcxr_main("--stage=3", f"--model_dir={tmp_path / 'stage3'}", "--image_size=128",
                        "--mixed_precision=bfloat16", "--learning_rate=0", "--strategy=one_device", "--epochs=1",
                        f"--init_autoencoder={tmp_path / 'stage2' / 'best.keras'}", f"--init_classifier={stage1}",
                        *common)
    assert "best val_loss" in stage3.stdout and "val mean AUC" in stage3.stdout
    aecnn = models.load_model(tmp_path / "stage3" / "best.keras")
    assert set(aecnn.output) == {"latent", "reconstruction", "logits"}
    for part, source in {"encoder": tmp_path / "stage2" / "best.keras", "decoder": tmp_path / "stage2" / "best.keras",
                         "classifier": stage1}.items():
        initial = models.load_model(source).get_layer(part)
        for trained, expected in zip(aecnn.get_layer(part).trainable_weights, initial.trainable_weights, strict=True):
            np.testing.assert_array_equal(trained.numpy(), expected.numpy(), err_msg=f"{part} {trained.path}")
