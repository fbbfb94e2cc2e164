"""What a task measures on its validation split: metric objects the training loop runs without knowing them.

A metric computes per-example values inside the distributed eval step (`per_example`), the loop
gathers them over every replica and worker for one pass, and `result` turns them into the numbers
logged as val_<name> (log.csv, TensorBoard, the plateau scheduler's logs).

- ClassificationAUC: ROC-AUC per label (sklearn's exact value) and their mean, as evaluation's Table 1;
- ReconstructionQuality: PSNR and SSIM of the reconstruction from the float latent, from the latent
  rounded to 8 bits (what a PNG stores), and of bicubic's round trip through the same size.
"""

from collections.abc import Mapping, Sequence
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from tfcxr.models import compression
from tfcxr.models.names import DECODER

Batch = Mapping[str, tf.Tensor]  # "image" [B,H,W,1], "labels" [B,L], ...
Outputs = Mapping[str, tf.Tensor]  # the model's outputs: "logits" [B,L], "reconstruction", "latent"


class ValidationMetric(Protocol):
    def per_example(self, model: keras.Model, batch: Batch, outputs: Outputs) -> dict[str, tf.Tensor]:
        """Values [B, ...] of one replica's batch, in the eval step's graph."""

    def result(self, values: Mapping[str, np.ndarray]) -> dict[str, float]:
        """{name: number} from the values of the whole pass, concatenated along the batch."""


def label_aucs(labels, probabilities):
    """[N, L] 0/1 labels and scores -> [L] ROC-AUC; NaN where a label lacks a class."""
    labels = np.asarray(labels)
    return np.array([
        roc_auc_score(labels[:, k], probabilities[:, k]) if 0 < labels[:, k].sum() < len(labels)
        else np.nan
        for k in range(labels.shape[1])
    ])


class ClassificationAUC:
    """val_auc (mean over the labels that have both classes) and val_auc_<label> from outputs["logits"]."""

    def __init__(self, label_names: Sequence[str]):
        self.label_names = tuple(label_names)

    def per_example(self, model, batch, outputs):
        return {"labels": batch["labels"], "probabilities": tf.sigmoid(tf.cast(outputs["logits"], tf.float32))}

    def result(self, values):
        aucs = label_aucs(values["labels"], values["probabilities"])
        mean = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
        return {"auc": mean, **{f"auc_{label}": float(auc) for label, auc in zip(self.label_names, aucs)}}


class ReconstructionQuality:
    """Mean PSNR / SSIM (suffix "", "_8bit", "_bicubic") of outputs["reconstruction"] against the input.

    Bicubic's numbers repeat every epoch (same images): the gap is one glance in log.csv and
    TensorBoard, at the cost of a resize, cheaper than a second pass over the decoded images.
    """

    def per_example(self, model, batch, outputs):
        images = tf.cast(batch["image"], tf.float32)  # [B,H,W,1]
        decoder = model.get_layer(DECODER)
        candidates = {
            "": outputs["reconstruction"],
            "_8bit": decoder(compression.quantize(tf.cast(outputs["latent"], tf.float32)), training=False),
            "_bicubic": compression.resize_round_trip(images, "bicubic"),
        }
        values = {}
        for suffix, reconstruction in candidates.items():
            reconstruction = tf.cast(reconstruction, tf.float32)
            values[f"psnr{suffix}"] = tf.image.psnr(reconstruction, images, max_val=1.0)  # [B]
            values[f"ssim{suffix}"] = tf.image.ssim(reconstruction, images, max_val=1.0)  # [B]
        return values

    def result(self, values):
        return {name: float(np.mean(value)) for name, value in values.items()}
