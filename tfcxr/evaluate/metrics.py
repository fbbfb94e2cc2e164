"""Per-label ROC-AUC with patient-level bootstrap confidence intervals.

The point estimates are sklearn's exact ROC-AUC. The intervals resample PATIENTS with
replacement (all images of a drawn patient come along, as often as the patient is drawn),
because images of one patient are not independent. Resampling is expressed as integer
weights per image, so every resample of a label is one weighted Mann-Whitney statistic,
computed for a whole block of resamples at once in numpy.
"""

import numpy as np
import pandas as pd

from tfcxr.models.metrics import label_aucs  # the loop's per-label AUC, the same function

MEAN = "Mean"


def weighted_auc(scores, labels, weights):
    """ROC-AUC of one label under R weightings of the images at once.

    scores, labels: [N]; weights: [R, N] -> [R] (ties count one half, as in sklearn;
    NaN where a weighting leaves no positive or no negative).
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # tie groups
    weights = weights[:, order]
    positive = labels[order].astype(weights.dtype)
    positives = np.add.reduceat(weights * positive, starts, axis=1)  # [R, groups]
    negatives = np.add.reduceat(weights * (1 - positive), starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    wins = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def patient_weights(patient_ids, resamples, rng):
    """[N] patient ids -> [R, N] how often each image's patient is drawn in each resample."""
    patients, image_patient = np.unique(patient_ids, return_inverse=True)
    draws = rng.integers(0, len(patients), size=(resamples, len(patients)))
    offsets = np.arange(resamples)[:, None] * len(patients)
    counts = np.bincount((draws + offsets).ravel(), minlength=resamples * len(patients))
    return counts.reshape(resamples, len(patients))[:, image_patient].astype(np.float64)


def bootstrap_aucs(labels, probabilities, patient_ids, resamples=1000, seed=0, block=50):
    """[R, L] per-label ROC-AUC of `resamples` patient-level bootstrap resamples."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    aucs = []
    for start in range(0, resamples, block):
        weights = patient_weights(patient_ids, min(block, resamples - start), rng)
        aucs.append(np.stack([
            weighted_auc(probabilities[:, k], labels[:, k], weights)
            for k in range(labels.shape[1])
        ], axis=1))
    return np.concatenate(aucs)


def auc_table(labels, probabilities, patient_ids, label_names, resamples=1000, seed=0, confidence=0.95):
    """One row per label (`label_names`, in column order) plus "Mean": auc, ci_low, ci_high, positives,
    negatives.

    A label without both classes gets NaN and is left out of the mean, and out of every
    resample's mean; `excluded_labels(table)` names them.
    """
    labels = np.asarray(labels)
    aucs = label_aucs(labels, probabilities)
    valid = ~np.isnan(aucs)
    boot = bootstrap_aucs(labels[:, valid], probabilities[:, valid], patient_ids, resamples, seed)
    boot = np.column_stack([boot, np.nanmean(boot, axis=1)])  # [R, valid + 1]
    tail = 100 * (1 - confidence) / 2
    ci = np.full((2, len(aucs) + 1), np.nan)
    ci[:, np.r_[valid, True]] = np.nanpercentile(boot, [tail, 100 - tail], axis=0)
    positives = labels.sum(axis=0)
    return pd.DataFrame({
        "auc": np.r_[aucs, aucs[valid].mean()],
        "ci_low": ci[0],
        "ci_high": ci[1],
        "positives": pd.array([*positives, None], dtype="Int64"),
        "negatives": pd.array([*(len(labels) - positives), None], dtype="Int64"),
    }, index=pd.Index([*label_names, MEAN], name="label"))


def excluded_labels(table):
    """Labels whose AUC is undefined on the split (one class only), left out of the mean."""
    return [label for label in table.index if label != MEAN and np.isnan(table.loc[label, "auc"])]
