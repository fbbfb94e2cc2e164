"""ROC-AUC, patient-level bootstrap, Table 1 and evaluate_classifier (tfcxr.evaluate)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.metrics import roc_auc_score

from tfcxr.constants import LABELS, TABLE1
from tfcxr.data.pipeline import make_dataset
from tfcxr import stages
from tfcxr.evaluate import classification, metrics, tables
from helpers import run_tool
from tiny_models import tiny_baseline


def _scores(n=600, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(LABELS))) < 0.3).astype(int)
    probabilities = np.round(np.clip(0.25 * labels + rng.random(labels.shape), 0, 1), 2)  # with ties
    return labels, probabilities


def test_weighted_auc_equals_sklearn_with_sample_weights():
    labels, probabilities = _scores()
    weights = np.random.default_rng(1).integers(0, 4, size=(6, len(labels))).astype(float)
    ours = metrics.weighted_auc(probabilities[:, 0], labels[:, 0], weights)
    expected = [roc_auc_score(labels[:, 0], probabilities[:, 0], sample_weight=w) for w in weights]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_weighted_auc_is_nan_without_both_classes():
    assert np.isnan(metrics.weighted_auc(np.array([0.1, 0.9]), np.array([1, 1]), np.ones((1, 2))))[0]


def test_patient_weights_move_all_images_of_a_patient_together():
    patient_ids = np.array([7, 7, 7, 3, 3, 9])
    weights = metrics.patient_weights(patient_ids, 200, np.random.default_rng(0))
    assert weights.shape == (200, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 3] == weights[:, 4]).all()
    np.testing.assert_array_equal(weights[:, [0, 3, 5]].sum(axis=1), 3)  # 3 patients drawn per resample
    assert weights.std() > 0


def test_auc_table_excludes_single_class_labels_from_the_mean():
    labels, probabilities = _scores()
    hernia = LABELS.index("Hernia")
    labels[:, hernia] = 0
    table = metrics.auc_table(labels, probabilities, np.arange(len(labels)), LABELS, resamples=100)
    exact = [roc_auc_score(labels[:, k], probabilities[:, k]) for k in range(len(LABELS)) if k != hernia]
    assert np.isnan(table.loc["Hernia", "auc"]) and np.isnan(table.loc["Hernia", "ci_low"])
    assert metrics.excluded_labels(table) == ["Hernia"]
    assert table.loc[metrics.MEAN, "auc"] == pytest.approx(np.mean(exact))
    assert table.loc["Atelectasis", "positives"] == labels[:, 0].sum()
    inside = (table["ci_low"] <= table["auc"]) & (table["auc"] <= table["ci_high"])
    assert inside.drop("Hernia").all()


def test_bootstrap_is_seeded():
    labels, probabilities = _scores(200)
    patients = np.arange(200) // 4
    first = metrics.bootstrap_aucs(labels, probabilities, patients, resamples=30, seed=5)
    np.testing.assert_array_equal(first, metrics.bootstrap_aucs(labels, probabilities, patients, resamples=30, seed=5))
    assert not np.array_equal(first, metrics.bootstrap_aucs(labels, probabilities, patients, resamples=30, seed=6))


def test_patient_level_intervals_are_wider_than_image_level_for_repeated_patients():
    labels, probabilities = _scores(60)
    labels, probabilities = np.repeat(labels, 10, axis=0), np.repeat(probabilities, 10, axis=0)  # 10 copies/patient
    by_patient = metrics.auc_table(labels, probabilities, np.arange(600) // 10, LABELS, resamples=300)
    by_image = metrics.auc_table(labels, probabilities, np.arange(600), LABELS, resamples=300)
    width = lambda table: (table["ci_high"] - table["ci_low"]).loc[metrics.MEAN]  # noqa: E731
    assert width(by_patient) > 2 * width(by_image)


def test_table1_puts_ours_beside_the_papers_columns():
    ours = {label: {"auc": 0.5 + k / 100, "ci_low": 0.4, "ci_high": 0.6} for k, label in enumerate(LABELS)}
    ours["Hernia"] = {"auc": None, "ci_low": None, "ci_high": None}
    ours[metrics.MEAN] = {"auc": 0.55}
    lines = tables.table1({"Ours": ours, "Other": {}}).splitlines()
    assert lines[0].split(" | ")[-2:] == ["Ours", "Other |"]
    rows = {line.split(" | ")[0].strip("| *"): line for line in lines[2:]}
    assert list(rows) == [*LABELS, "Mean"]
    assert rows["Atelectasis"].startswith("| Atelectasis | 0.7829 | 0.7860 | 0.7848 | 0.7844 | 0.7810 |")
    assert rows["Atelectasis"].endswith("| 0.5000 [0.400, 0.600] | n/a |")
    assert "| n/a |" in rows["Hernia"]
    assert rows["Mean"] == "| **Mean** | " + " | ".join(f"**{v:.4f}**" for v in TABLE1["Mean"]) + " | **0.5500** | **n/a** |"


# --- evaluate_classifier on the synthetic records (tests/conftest.py records_dir) ---------------

BASELINE_TOY = stages.STAGES["baseline"].task.inputs.with_sizes(image_size=48, resize_size=64)
STAGE1_TOY = dict(stage="baseline", inputs=BASELINE_TOY, batch_size=8)


def _read_json(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def baseline():
    return tiny_baseline()


@pytest.fixture(scope="module")
def evaluated(baseline, records_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    summary = classification.evaluate_classifier(baseline, records_dir, model_dir, split="test", resamples=50, **STAGE1_TOY)
    return model_dir, summary


def test_evaluate_classifier_writes_every_output(evaluated, records_dir):
    model_dir, summary = evaluated
    out = model_dir / "eval" / "test"
    assert sorted(p.name for p in out.iterdir()) == ["auc.csv", "auc.json", "predictions.csv", "roc.png", "table1.md"]
    manifest = _read_json(records_dir / "manifest.json")
    stated_as_text = {"label_file": str, "label_version": str, "protocol": str}
    predictions = pd.read_csv(out / "predictions.csv", dtype=stated_as_text)
    assert len(predictions) == summary["images"] == manifest["splits"]["test"]["written"]
    assert predictions["filename"].is_unique
    assert summary["protocol"].startswith("resize: one 64x64 resize") and summary["tta"] == "none"
    for stated in ("label_file", "label_version", "protocol"):  # every output says which labels / protocol
        assert summary[stated] == manifest.get(stated, summary[stated])
        assert (predictions[stated] == summary[stated]).all()
        assert (pd.read_csv(out / "auc.csv", dtype=stated_as_text)[stated] == summary[stated]).all()
    table = (out / "table1.md").read_text()
    assert manifest["label_file"] in table and manifest["label_version"] in table and "resize" in table
    assert Image.open(out / "roc.png").size[0] > 300


def test_evaluate_classifier_aucs_match_sklearn_on_its_predictions(evaluated):
    model_dir, summary = evaluated
    predictions = pd.read_csv(model_dir / "eval" / "test" / "predictions.csv")
    expected = {}
    for label in LABELS:
        truth = predictions[f"label_{label}"]
        if truth.nunique() == 2:
            expected[label] = roc_auc_score(truth, predictions[f"prob_{label}"])
            assert summary["auc"][label]["auc"] == pytest.approx(expected[label])
        else:
            assert summary["auc"][label]["auc"] is None and label in summary["excluded_from_mean"]
    assert summary["auc"]["Mean"]["auc"] == pytest.approx(np.mean(list(expected.values())))
    if summary["excluded_from_mean"]:
        assert "left out of the mean" in (model_dir / "eval" / "test" / "table1.md").read_text()


def test_evaluate_classifier_probabilities_are_the_models(evaluated, baseline, records_dir):
    model_dir, _ = evaluated
    predictions = pd.read_csv(model_dir / "eval" / "test" / "predictions.csv").set_index("filename")
    batch = next(iter(make_dataset(records_dir, "test", BASELINE_TOY, 8, training=False, include_metadata=True)))
    expected = tf.sigmoid(baseline(batch["image"])["logits"]).numpy()
    names = [n.decode() for n in batch["filename"].numpy()]
    np.testing.assert_allclose(predictions.loc[names, [f"prob_{l}" for l in LABELS]], expected, atol=1e-6)
    np.testing.assert_array_equal(predictions.loc[names, [f"label_{l}" for l in LABELS]], batch["labels"].numpy())
    np.testing.assert_array_equal(predictions.loc[names, "patient_id"], batch["patient_id"].numpy())


def test_evaluate_classifier_tencrop_averages_ten_crop_probabilities(baseline, records_dir, tmp_path):
    summary = classification.evaluate_classifier(baseline, records_dir, tmp_path, split="test", tta="tencrop",
                                                 resamples=20, **STAGE1_TOY)
    assert summary["protocol"].startswith("tencrop") and "48x48" in summary["protocol"]
    predictions = pd.read_csv(tmp_path / "eval" / "test_tencrop" / "predictions.csv").set_index("filename")
    batch = next(iter(make_dataset(records_dir, "test", BASELINE_TOY, 8, training=False, include_metadata=True,
                                   tta="tencrop")))
    crops = [tf.sigmoid(baseline(batch["image"][:, k])["logits"]) for k in range(10)]
    names = [n.decode() for n in batch["filename"].numpy()]
    np.testing.assert_allclose(predictions.loc[names, [f"prob_{l}" for l in LABELS]], np.mean(crops, axis=0), atol=1e-6)
    assert (predictions["protocol"] == summary["protocol"]).all()


# --- tools/compare_runs.py --------------------------------------------------------------------

def _fake_run(run_dir, mean, label_version="v2020", tta="none", protocol="resize: one 896x896 resize of the whole image"):
    auc = {label: {"auc": mean + k / 1000, "ci_low": mean - 0.01, "ci_high": mean + 0.02} for k, label in enumerate(LABELS)}
    auc["Mean"] = {"auc": mean, "ci_low": mean - 0.005, "ci_high": mean + 0.005}
    summary = {"split": "test", "images": 25596, "label_file": "Data_Entry_2017_v2020.csv",
               "label_version": label_version, "tta": tta, "protocol": protocol, "auc": auc}
    (run_dir / "eval" / "test").mkdir(parents=True)
    (run_dir / "eval" / "test" / "auc.json").write_text(json.dumps(summary))
    return run_dir


def compare_runs(*args):
    return run_tool("compare_runs.py", *args, timeout=120)


@pytest.mark.slow
def test_compare_runs_puts_runs_beside_the_papers_columns(tmp_path):
    d121 = _fake_run(tmp_path / "d121", 0.81, protocol="resize: one 256x256 resize of the whole image")
    aecnn = _fake_run(tmp_path / "aecnn", 0.82)
    result = compare_runs(d121, aecnn, "--names=D121,AECNN", "--out", tmp_path / "table.md")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("| FMix (repro) | D121 | AECNN |")
    assert lines[2] == "| Atelectasis | 0.7829 | 0.7860 | 0.7848 | 0.7844 | 0.7810 | 0.8100 [0.800, 0.830] | 0.8200 [0.810, 0.840] |"
    assert "| **0.8100 [0.805, 0.815]** | **0.8200 [0.815, 0.825]** |" in lines[16]
    assert "Data_Entry_2017_v2020.csv" in result.stdout and "Warning" not in result.stdout
    assert (tmp_path / "table.md").read_text() == result.stdout


@pytest.mark.slow
def test_compare_runs_warns_when_runs_differ_and_fails_on_a_missing_run(tmp_path):
    old = _fake_run(tmp_path / "old", 0.8, label_version="2017")
    new = _fake_run(tmp_path / "new", 0.8, tta="tencrop", protocol="tencrop: mean probability of 10 crops of 896x896")
    result = compare_runs(old, new)
    assert result.returncode == 0 and "| old | new |" in result.stdout.splitlines()[0]
    assert "differ in label version" in result.stdout and "differ in test-time protocol" in result.stdout
    missing = compare_runs(old, tmp_path / "nowhere")
    assert missing.returncode == 1 and "nowhere/eval/test/auc.json: not found" in missing.stderr
