"""ROC-AUC, patient-level bootstrap and Table 1 (tfcxr.evaluate.metrics / tables)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tfcxr.constants import LABELS, TABLE1
from tfcxr.evaluate import metrics, tables


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
    table = metrics.auc_table(labels, probabilities, np.arange(len(labels)), resamples=100)
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
    by_patient = metrics.auc_table(labels, probabilities, np.arange(600) // 10, resamples=300)
    by_image = metrics.auc_table(labels, probabilities, np.arange(600), resamples=300)
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
