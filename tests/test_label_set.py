"""The label set is data: records whose manifest names 3 labels train a 3-logit baseline, log and
evaluate 3 per-label AUCs and export the 3 names; ChestX-ray14's 14 are only the default.

The baseline's trunk takes no part in the label set, so the run uses tiny_models' toy backbone,
registered in tfcxr.main's child process (one BACKBONES entry and --backbone, as a new backbone is
added): the same stage, head, loop, evaluation and export as DenseNet121's, in seconds.
"""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfcxr.data import schema
from tfcxr.data.pipeline import label_names
from helpers import concurrently, encode, run_mode
from tiny_models import TOY_BACKBONE_SETUP

LABELS = ("Opacity", "Device", "Fracture")
ORIGINAL, SMALL = 128, 64


def write_records(records_dir, images_per_split=8):
    """A records folder of random images, LABELS in its manifest, one shard per split."""
    rng = np.random.default_rng(0)
    splits = {}
    for index, split in enumerate(("train", "val", "test")):
        name = schema.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(str(records_dir / name)) as writer:
            for k in range(images_per_split):
                original = rng.integers(0, 256, (ORIGINAL, ORIGINAL), dtype=np.uint8)
                labels = np.eye(len(LABELS), dtype=int)[k % len(LABELS)]  # every label positive somewhere
                example = schema.make_example(
                    encoded=encode(original), small=encode(original[::2, ::2]), filename=f"{index}{k:07d}_000.png",
                    height=ORIGINAL, width=ORIGINAL, labels=labels, patient_id=100 * index + k,
                    num_labels=len(LABELS))
                writer.write(example.SerializeToString())
        splits[split] = {"shards": [{"file": name, "records": images_per_split}], "written": images_per_split}
    manifest = {"small_size": SMALL, "labels": list(LABELS), "label_file": "toy.csv", "label_version": "toy",
                "encoding": "png", "splits": splits}
    (records_dir / schema.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.slow
def test_records_with_three_labels_train_evaluate_and_export(tmp_path):
    records, run, export_dir = tmp_path / "records", tmp_path / "run", tmp_path / "export"
    records.mkdir()
    write_records(records)
    assert label_names(records) == LABELS
    run_mode("--stage=baseline", f"--records_dir={records}", f"--model_dir={run}", "--backbone=toy", "--weights=none",
             "--resize_size=40", "--image_size=32", "--batch_size=4", "--epochs=1", "--steps_per_epoch=1",
             setup=TOY_BACKBONE_SETUP)
    log = pd.read_csv(run / "log.csv")
    assert sorted(c for c in log if c.startswith("val_auc_")) == sorted(f"val_auc_{label}" for label in LABELS)
    assert json.loads((run / "config.json").read_text())["model"]["backbone"] == "toy"

    concurrently(lambda: run_mode("--mode=evaluate", f"--model_dir={run}", "--resamples=10", setup=TOY_BACKBONE_SETUP),
                 lambda: run_mode("--mode=export", f"--model_dir={run}", f"--export_dir={export_dir}",
                                  setup=TOY_BACKBONE_SETUP))
    summary = json.loads((run / "eval" / "test" / "auc.json").read_text())
    assert list(summary["auc"]) == [*LABELS, "Mean"]
    table = (run / "eval" / "test" / "table1.md").read_text()
    assert "| Opacity | n/a | n/a | n/a | n/a | n/a |" in table  # not one of the paper's labels

    served = tf.saved_model.load(str(export_dir / "tfcxr_d121" / "1")).signatures["serving_default"]
    answer = served(image_bytes=tf.constant([encode(np.full((80, 80), 128, np.uint8))]))
    assert answer["probabilities"].shape == (1, 3)
    assert [name.decode() for name in answer["labels"].numpy()[0]] == list(LABELS)


def test_records_without_label_names_are_chestxray14s(tmp_path):
    (tmp_path / schema.MANIFEST).write_text(json.dumps({"splits": {}}))
    from tfcxr.constants import LABELS as CXR14

    assert label_names(tmp_path) == CXR14 and label_names(tmp_path / "no-manifest") == CXR14
