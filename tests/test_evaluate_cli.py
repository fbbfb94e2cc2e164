"""End to end through `python -m tfcxr.main`: --mode=evaluate, explain and export at toy sizes."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tiny_models import box_codec, tiny_aecnn

SIZE = 64  # the toy stage-3 size: the run's image_size


def tfcxr_main(*args):
    return subprocess.run([sys.executable, "-m", "tfcxr.main", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A stage-3 run folder as training leaves it: best.keras and config.json."""
    run = tmp_path_factory.mktemp("runs") / "aecnn"
    run.mkdir()
    box_codec(tiny_aecnn()).save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"stage": 3, "image_size": SIZE, "resize_size": None}))
    return run


def test_evaluate_mode(run_dir, records_dir):
    result = tfcxr_main("--stage=3", "--mode=evaluate", f"--records_dir={records_dir}", f"--model_dir={run_dir}",
                        f"--image_size={SIZE}", "--batch_size=8", "--resamples=20", "--split=test")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "eval" / "test" / "auc.json").read_text())
    assert summary["checkpoint"] == str(run_dir / "best.keras") and summary["stage"] == 3
    assert f"{SIZE}x{SIZE}" in summary["protocol"]
    quality = json.loads((run_dir / "eval" / "test" / "reconstruction.json").read_text())
    assert quality["images"] == summary["images"] and "latent 16x16" in quality["protocol"]
    assert quality["methods"]["autoencoder_8bit"]["psnr"] > 15  # the box codec is a sane one
    assert f"mean ROC-AUC {summary['auc']['Mean']['auc']:.4f}" in result.stdout
    assert "bicubic" in result.stdout and (run_dir / "eval" / "test" / "table1.md").is_file()


def test_explain_mode(run_dir, tmp_path):
    files = []
    for k in range(2):
        files.append(tmp_path / f"0000000{k}_000.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (128, 120), dtype=np.uint8)).save(files[-1])
    bbox_list = tmp_path / "BBox_List_2017.csv"
    bbox_list.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000000_000.png,Infiltrate,10,20,30,40\n")
    result = tfcxr_main("--stage=3", "--mode=explain", f"--model_dir={run_dir}", f"--image_size={SIZE}",
                        f"--images={','.join(map(str, files))}", "--top_k=2", f"--bbox_list={bbox_list}")
    assert result.returncode == 0, result.stderr[-2000:]
    for path in files:
        assert Image.open(run_dir / "explain" / path.name).size[0] > 300
    table = pd.read_csv(run_dir / "explain" / "explain.csv")
    assert len(table) == 4 and set(table["image"]) == {path.name for path in files}
    assert "00000001_000.png: 2." in result.stdout


def test_export_mode(run_dir, tmp_path):
    result = tfcxr_main("--stage=3", "--mode=export", f"--model_dir={run_dir}", f"--export_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "tfcxr_aecnn" / "1" / "saved_model.pb").is_file()
    assert f"({SIZE}x{SIZE} inputs)" in result.stdout  # the size comes from the run's config.json
    again = tfcxr_main("--stage=3", "--mode=export", f"--model_dir={run_dir}", f"--export_dir={tmp_path}", "--version=1")
    assert again.returncode == 1 and "version 1 already exported" in again.stderr.strip().splitlines()[-1]


def test_a_missing_model_is_one_clear_line(tmp_path, records_dir):
    result = tfcxr_main("--stage=1", "--mode=evaluate", f"--records_dir={records_dir}", f"--model_dir={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'best.keras'}")
