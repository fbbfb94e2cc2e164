"""What a task measures on its validation split: metric objects the training loop runs without knowing them.

A metric computes per-example values inside the distributed eval step (`per_example`), the loop
gathers them over every replica and worker for one pass, and `result` turns them into the numbers
logged as val_<name> (log.csv, TensorBoard, the plateau scheduler's logs).

- ClassificationAUC: ROC-AUC per label (sklearn's exact value) and their mean, as evaluation's Table 1;
- ReconstructionQuality: PSNR and SSIM of the reconstruction from the codec's latent, from the latent
  rounded to 8 bits (what a PNG stores), and of bicubic's round trip through the same size (PSNR
  also through an 8-bit thumbnail: the baseline a stored latent must beat).
"""

from collections.abc import Mapping, Sequence
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from tfcxr.models import compression
from tfcxr.models.codecs.base import CODECS
from tfcxr.models.described import codec_of
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


def rounds_latent(model: keras.Model) -> bool:
    """Whether the model's codec rounds its latent to 8 bits itself (its class's rounds_latent)."""
    return CODECS[codec_of(model).kind].rounds_latent


class ReconstructionQuality:
    """Mean PSNR / SSIM (suffix "", "_8bit", "_bicubic") of outputs["reconstruction"] against the input,
    and psnr_bicubic_8bit (bicubic through an 8-bit thumbnail, the stored baseline).

    A codec that rounds its latent itself (the residual codec) has "_8bit" equal to "": it is copied,
    not decoded twice. Bicubic's numbers repeat every epoch (same images): the gap is one glance in
    log.csv and TensorBoard, at the cost of a resize, cheaper than a second pass over the decoded images.
    """

    def per_example(self, model, batch, outputs):
        images = tf.cast(batch["image"], tf.float32)  # [B,H,W,1]
        decoder = model.get_layer(DECODER)
        candidates = {"": outputs["reconstruction"]}
        if not rounds_latent(model):
            candidates["_8bit"] = decoder(compression.quantize(tf.cast(outputs["latent"], tf.float32)), training=False)
        candidates["_bicubic"] = compression.resize_round_trip(images, "bicubic")
        values = {}
        for suffix, reconstruction in candidates.items():
            reconstruction = tf.cast(reconstruction, tf.float32)
            values[f"psnr{suffix}"] = tf.image.psnr(reconstruction, images, max_val=1.0)  # [B]
            values[f"ssim{suffix}"] = tf.image.ssim(reconstruction, images, max_val=1.0)  # [B]
        if "_8bit" not in candidates:  # the latent is already the 8-bit one
            values.update(psnr_8bit=values["psnr"], ssim_8bit=values["ssim"])
        thumbnail = compression.resize_round_trip(images, "bicubic", quantized=True)
        values["psnr_bicubic_8bit"] = tf.image.psnr(thumbnail, images, max_val=1.0)  # [B]
        return values

    def result(self, values):
        return {name: float(np.mean(value)) for name, value in values.items()}
