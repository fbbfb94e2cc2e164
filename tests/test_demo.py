"""`make demo`'s job (tools/demo.py), as a smoke run: every step, two training steps a stage."""

import re

import pytest

from tfcxr.constants import LABELS
from helpers import run_tool


@pytest.mark.slow
def test_demo_runs_every_step_and_ends_with_table1_psnr_export_and_tensorboard(tmp_path):
    workspace = tmp_path / "demo"
    result = run_tool("demo.py", f"--workspace={workspace}", "--num_patients=40", "--val_images=20", "--quick",
                      expect=0, timeout=900)
    out = result.stdout
    titles = re.findall(r"^=== (.+): done in \d+ s$", out, flags=re.MULTILINE)
    assert titles == ["generate a ChestX-ray14-shaped dataset", "shard it into TFRecords",
                      "stage 1: DenseNet121 baseline (BL5)", "stage 2: autoencoder head start",
                      "stage 2: residual codec (--codec=residual)", "stage 3: joint AECNN",
                      "evaluate stage 1 on the test split", "evaluate stage 3 on the test split",
                      "evaluate the paper autoencoder (stage 2) on the test split",
                      "evaluate the residual codec (stage 2) on the test split",
                      "export stage 3 for TF Serving", "query the SavedModel's serving_default with a generated PNG",
                      "Table 1 of the demo (test split)"]

    query = out.split("=== query the SavedModel's serving_default")[1]
    for label in LABELS:  # one probability per label from serving_default
        assert re.search(rf"^{label} +[01]\.\d{{4}}$", query, flags=re.MULTILINE), label
    mean = re.search(r"^\| \*\*Mean\*\* \|.*\| \*\*(0\.\d{4}) \[.*\]\*\* \| \*\*(0\.\d{4}) \[.*\]\*\* \|$", out, re.MULTILINE)
    assert mean, "Table 1 with the D121 and AECNN columns"
    assert (workspace / "runs" / "table1_demo.md").read_text().count("**Mean**") == 1
    tail = out.split("=== Table 1 of the demo (test split): done")[1]
    assert "## AECNN Reconstruction quality" in tail and re.search(r"^\| bicubic \| \d+\.\d\d \|", tail, re.MULTILINE)
    both = tail.split("## Both codecs (stage 2)")[1]
    for row in ("paper autoencoder, latent stored as 8 bits", "residual codec, latent stored as 8 bits",
                "bicubic (small image stored as 8 bits)"):
        assert re.search(rf"^\| {re.escape(row)} \| \d+\.\d\d \| [01]\.\d{{4}} \|$", both, re.MULTILINE), row
    export = workspace / "exports" / "tfcxr_aecnn" / "1"
    assert f"SavedModel for TF Serving: {export}" in tail and (export / "saved_model.pb").is_file()
    assert f"--logdir {workspace / 'runs'}" in tail
