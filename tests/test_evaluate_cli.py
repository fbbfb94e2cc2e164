"""End to end through `python -m tfcxr.main`: --mode=evaluate, explain and export at toy sizes."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from helpers import ROOT, encode, tfcxr_main
from tiny_models import box_codec, tiny_aecnn

SIZE = 64  # the toy stage-3 size: the run's image_size


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A stage-3 run folder as training leaves it: best.keras and config.json."""
    run = tmp_path_factory.mktemp("runs") / "aecnn"
    run.mkdir()
    box_codec(tiny_aecnn()).save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"stage": "aecnn", "data": {"image_size": SIZE}}))
    return run


@pytest.mark.slow
def test_evaluate_mode(run_dir, records_dir):
    """No --stage, no --image_size: both from the run's config.json."""
    result = tfcxr_main("--mode=evaluate", f"--records_dir={records_dir}", f"--model_dir={run_dir}",
                        "--batch_size=8", "--resamples=20", "--split=test")
    summary = json.loads((run_dir / "eval" / "test" / "auc.json").read_text())
    assert summary["checkpoint"] == str(run_dir / "best.keras") and summary["stage"] == "aecnn"
    assert f"{SIZE}x{SIZE}" in summary["protocol"]
    quality = json.loads((run_dir / "eval" / "test" / "reconstruction.json").read_text())
    assert quality["images"] == summary["images"] and "latent 16x16" in quality["protocol"]
    assert quality["methods"]["autoencoder_8bit"]["psnr"] > 15  # the box codec is a sane one
    assert f"mean ROC-AUC {summary['auc']['Mean']['auc']:.4f}" in result.stdout
    assert "bicubic" in result.stdout and (run_dir / "eval" / "test" / "table1.md").is_file()


@pytest.mark.slow
def test_explain_mode(run_dir, tmp_path):
    files = []
    for k in range(2):
        files.append(tmp_path / f"0000000{k}_000.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (128, 120), dtype=np.uint8)).save(files[-1])
    bbox_list = tmp_path / "BBox_List_2017.csv"
    bbox_list.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000000_000.png,Infiltrate,10,20,30,40\n")
    result = tfcxr_main("--stage=3", "--mode=explain", f"--model_dir={run_dir}", f"--image_size={SIZE}",
                        f"--images={','.join(map(str, files))}", "--top_k=2", f"--bbox_list={bbox_list}")
    for path in files:
        assert Image.open(run_dir / "explain" / path.name).size[0] > 300
    table = pd.read_csv(run_dir / "explain" / "explain.csv")
    assert len(table) == 4 and set(table["image"]) == {path.name for path in files}
    assert "00000001_000.png: 2." in result.stdout


@pytest.mark.slow
def test_export_mode(run_dir, tmp_path):
    result = tfcxr_main("--mode=export", f"--model_dir={run_dir}", f"--export_dir={tmp_path}")
    assert (tmp_path / "tfcxr_aecnn" / "1" / "saved_model.pb").is_file()
    assert f"({SIZE}x{SIZE} inputs)" in result.stdout  # the size comes from the run's config.json
    serving = tf.saved_model.load(str(tmp_path / "tfcxr_aecnn" / "1")).signatures["compress"]
    latent = serving(image_bytes=tf.constant([encode(np.full((200, 150), 90, np.uint8))]))["latent"]
    assert latent.shape == (1, SIZE // 4, SIZE // 4, 1)  # evaluation's size (test_evaluate_mode), not a default
    again = tfcxr_main("--stage=3", "--mode=export", f"--model_dir={run_dir}", f"--export_dir={tmp_path}", "--version=1",
                       expect=1)
    assert "version 1 already exported" in again.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_missing_model_is_one_clear_line(tmp_path, records_dir):
    result = tfcxr_main("--stage=1", "--mode=evaluate", f"--records_dir={records_dir}", f"--model_dir={tmp_path}",
                        expect=1)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'best.keras'}")


@pytest.mark.slow
def test_a_stage_that_contradicts_the_run_is_one_line(run_dir, records_dir):
    result = tfcxr_main("--stage=baseline", "--mode=evaluate", f"--records_dir={records_dir}",
                        f"--model_dir={run_dir}", expect=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --stage=baseline (baseline) contradicts {run_dir / 'config.json'}: the run trains aecnn; "
        "drop --stage or pick another --model_dir")


@pytest.mark.slow
def test_a_stage_that_contradicts_the_flagfile_is_one_line(tmp_path):
    """--stage=1 with the AECNN's flagfile stops before anything runs (it once trained a baseline into runs/aecnn)."""
    result = tfcxr_main("--stage=1", "--flagfile=configs/stage3.cfg", f"--model_dir={tmp_path / 'run'}", expect=1)
    assert result.stderr.strip().splitlines() == [
        "error: --stage=1 (the command line) contradicts --stage=aecnn (configs/stage3.cfg): name one stage "
        "(each flagfile names its own)"]
    assert not (tmp_path / "run").exists()
    same = tfcxr_main("--stage=3", "--flagfile=configs/stage3.cfg", "--mode=nothing", expect=1)  # an alias agrees
    assert "--mode=nothing" in same.stderr and "error: --stage" not in same.stderr


def test_every_flagfile_names_its_stage():
    from tfcxr import stages

    for path in sorted((ROOT / "configs").glob("*.cfg")):
        named = [line.split("=", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("--stage=")]
        assert len(named) == 1 and named[0] in stages.STAGES, path
