"""--mode=evaluate for classifiers (stage 1 BL5, FMix, stage 3 AECNN): Table 1 with CIs.

Streams the split through the input pipeline (images are never all in memory; only the
[N, 14] probabilities are kept) and writes under model_dir/eval/<split>[_tencrop]/:
auc.csv, auc.json, table1.md, roc.png, predictions.csv. Each states the label file
version of the records and the test-time protocol (one resize, or ten crops averaged).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tfcxr.constants import BOOTSTRAP_RESAMPLES, LABELS  # noqa: E402
from tfcxr.data import pipeline  # noqa: E402
from tfcxr.data.records import Records  # noqa: E402
from tfcxr.evaluate import metrics, outputs, tables  # noqa: E402
from tfcxr import storage  # noqa: E402
from tfcxr.storage import save_figure, write_json, write_text  # noqa: E402


def logits_of(outputs):
    """The logits of a baseline / AECNN (dict outputs) or of a bare classifier."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def predict(model, dataset, label_names=LABELS):
    """Streams `dataset` (include_metadata=True) through `model` -> predictions and protocol.

    Ten-crop elements ("image" [B, 10, H, W, 1]) are averaged in probability space.
    Returns (DataFrame filename, patient_id, prob_<label>..., label_<label>..., protocol str).
    """
    @tf.function(reduce_retracing=True)
    def probabilities_of(images):  # [B, H, W, 1] -> [B, 14]
        return tf.sigmoid(tf.cast(logits_of(model(images, training=False)), tf.float32))

    rows, protocol = [], None
    for batch in tqdm(dataset, desc="evaluate", unit="batch"):
        images = batch["image"]
        if images.shape.rank == 5:  # ten crops: [B, 10, H, W, 1]
            crops = tf.shape(images)[1]
            probabilities = probabilities_of(tf.reshape(images, [-1, *images.shape[2:]]))
            probabilities = tf.reduce_mean(tf.reshape(probabilities, [-1, crops, len(label_names)]), axis=1)
            protocol = f"tencrop: mean probability of {images.shape[1]} crops of {images.shape[2]}x{images.shape[3]}"
        else:
            probabilities = probabilities_of(images)
            protocol = f"resize: one {images.shape[1]}x{images.shape[2]} resize of the whole image"
        rows.append(pd.DataFrame({
            "filename": [f.decode() for f in batch["filename"].numpy()],
            "patient_id": batch["patient_id"].numpy(),
            **{f"prob_{label}": probabilities.numpy()[:, k] for k, label in enumerate(label_names)},
            **{f"label_{label}": batch["labels"].numpy()[:, k].astype(int) for k, label in enumerate(label_names)},
        }))
    if not rows:
        raise ValueError("the split holds no images")
    return pd.concat(rows, ignore_index=True), protocol


def plot_roc(predictions, table, title):
    """The ROC curve of every label of one split in one figure."""
    figure, axes = plt.subplots(figsize=(7, 7))
    colors = plt.get_cmap("tab20").colors
    for k, label in enumerate(table.index.drop(metrics.MEAN)):
        truth = predictions[f"label_{label}"]
        if np.isnan(table.loc[label, "auc"]):
            continue
        fpr, tpr, _ = roc_curve(truth, predictions[f"prob_{label}"])
        axes.plot(fpr, tpr, color=colors[k], lw=1.2, label=f"{label} {table.loc[label, 'auc']:.3f}")
    axes.plot([0, 1], [0, 1], "k:", lw=0.8)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1), title=title)
    axes.legend(loc="lower right", fontsize=7)
    return figure


def _json_value(value):
    """NaN / NA -> None (JSON null), counts stay integers."""
    if pd.isna(value):
        return None
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def evaluate_classifier(model, records: Records | str, model_dir, *, inputs: pipeline.InputSpec, stage: str = "baseline",
                        split: str = "test", tta: str = "none", batch_size: int = 32, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0, checkpoint=None) -> dict:
    """Evaluates a classifier on the images `inputs` reads from a split (`stage` names it in the
    outputs); writes the five outputs; returns the auc.json dict."""
    records = Records.of(records)
    source = records.label_source
    dataset = pipeline.make_dataset(records, split, inputs, batch_size, training=False, include_metadata=True,
                                    tta=tta)
    label_names = records.label_names
    predictions, protocol = predict(model, dataset, label_names)
    labels = predictions[[f"label_{label}" for label in label_names]].to_numpy()
    probabilities = predictions[[f"prob_{label}" for label in label_names]].to_numpy()
    table = metrics.auc_table(labels, probabilities, predictions["patient_id"].to_numpy(), label_names, resamples,
                              seed)
    excluded = metrics.excluded_labels(table)

    summary = {
        "split": split, "stage": stage, "checkpoint": str(checkpoint) if checkpoint else None, "tta": tta,
        "protocol": protocol,
        **source, "images": len(predictions), "patients": int(predictions["patient_id"].nunique()),
        "confidence_interval": f"95% percentile bootstrap, {resamples} patient-level resamples, seed {seed}",
        "excluded_from_mean": excluded,
        "auc": {row: {k: _json_value(v) for k, v in values.items()} for row, values in table.to_dict("index").items()},
    }
    stated = {"label_file": source["label_file"], "label_version": source["label_version"], "protocol": protocol}
    notes = [
        f"Split `{split}`: {summary['images']} images of {summary['patients']} patients. "
        f"Labels: `{source['label_file']}` (version {source['label_version']}). Protocol: {protocol}.",
        f"Ours: ROC-AUC [{summary['confidence_interval']}].",
    ]
    if excluded:
        notes.append(f"Without both classes in this split (AUC n/a, left out of the mean): {', '.join(excluded)}.")

    out = outputs.eval_dir(model_dir, split, tta)
    write_json(storage.join(out, "auc.json"), summary)
    write_text(storage.join(out, "auc.csv"), table.reset_index().assign(**stated).to_csv(index=False))
    write_text(storage.join(out, "predictions.csv"), predictions.assign(**stated).to_csv(index=False))
    heading = f"# Table 1: per-label ROC-AUC, `{split}` split, {stage}\n\n"
    table1 = tables.table1({"Ours": summary["auc"]}, label_names)
    write_text(storage.join(out, "table1.md"), heading + table1 + "\n" + "\n\n".join(notes) + "\n")
    title = (f"{split}: mean AUC {table.loc[metrics.MEAN, 'auc']:.4f}\n{protocol}\n"
             f"labels {source['label_file']} ({source['label_version']})")
    figure = plot_roc(predictions, table, title)
    save_figure(figure, storage.join(out, "roc.png"))
    plt.close(figure)
    return summary
