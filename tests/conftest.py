"""Shared fixtures. Tests needing ../shared/cxr14-real skip cleanly when it is absent."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from helpers import ROOT

REAL_DIR = Path(os.environ.get("TFCXR_REAL_DIR", ROOT.parent / "shared" / "cxr14-real"))


@pytest.fixture(scope="session")
def real_dir():
    """../shared/cxr14-real (real ChestX-ray14 metadata, lists and 64 PNGs), or skip."""
    if not (REAL_DIR / "metadata").is_dir():
        pytest.skip(f"real ChestX-ray14 material not found at {REAL_DIR}")
    return REAL_DIR


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small generated ChestX-ray14-shaped tree (Kaggle layout), shared by the session."""
    from tfcxr.data import synthetic

    out = tmp_path_factory.mktemp("synthetic") / "cxr14"
    synthetic.generate(out_dir=out, num_patients=40, image_size=128, layout="kaggle", seed=0)
    return out


@pytest.fixture(scope="session")
def records_dir(synthetic_dir, tmp_path_factory):
    """The synthetic tree sharded into TFRecords (small_size 64, a few shards per split)."""
    from tfcxr.data import sharding

    out = tmp_path_factory.mktemp("records")
    sharding.shard(
        data_dir=synthetic_dir, out_dir=out, seed=0, val_images=30, shard_mb=0.2,
        workers=1, small_size=64, encoding="png",
    )
    return out


@pytest.fixture(scope="module")
def aecnn():
    """tiny_models.tiny_aecnn(): the AECNN the export tests serve, one per module (test_models.py has
    an `aecnn` of its own, around DenseNet121)."""
    from tiny_models import tiny_aecnn

    return tiny_aecnn()


@pytest.fixture(scope="module")
def exported(aecnn, tmp_path_factory):
    """`aecnn` exported for TF Serving at the toy evaluation size 64 with the default image limits:
    (its version folder .../tfcxr_aecnn/1, the loaded SavedModel)."""
    import tensorflow as tf

    from tfcxr.export import saved_model

    export_dir = tmp_path_factory.mktemp("exports")
    path = saved_model.export(aecnn, export_dir, image_size=64, model_name="tfcxr_aecnn")
    return path, tf.saved_model.load(str(path))
