"""The evaluations a stage runs in --mode=evaluate, as records: each takes an EvalRun and returns the
lines it prints. A stage lists its evaluators (tfcxr/stages.py); the mode runs them in order.

    CLASSIFICATION  Table 1: per-label ROC-AUC with patient-level bootstrap CIs (also what
                    --mode=explain needs); one resize or ten crops (--tta)
    RECONSTRUCTION  PSNR / SSIM of the codec against resizing to the same latent size
"""

import dataclasses
from collections.abc import Callable

import keras

from tfcxr import storage
from tfcxr.data import pipeline
from tfcxr.data.records import Records


@dataclasses.dataclass(frozen=True)
class EvalRun:
    """What an evaluator measures: a model on a split of the records, at the run's inputs."""

    model: keras.Model
    records: Records
    model_dir: str
    split: str
    inputs: pipeline.InputSpec  # the stage's inputs at the run's sizes
    batch_size: int
    stage: str
    checkpoint: str | None = None
    tta: str = "none"
    resamples: int = 1000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Evaluator:
    name: str
    run: Callable[[EvalRun], list[str]]
    tencrop: bool = False  # whether it measures the ten-crop protocol too (--tta=tencrop)
    classifies: bool = False  # whether it needs a classifier (and so makes --mode=explain possible)


def classification(run: EvalRun) -> list[str]:
    from tfcxr.evaluate import classification as classification_lib, outputs

    summary = classification_lib.evaluate_classifier(
        run.model, run.records, run.model_dir, inputs=run.inputs, tta=run.tta, resamples=run.resamples,
        seed=run.seed, split=run.split, stage=run.stage, batch_size=run.batch_size, checkpoint=run.checkpoint)
    mean = summary["auc"]["Mean"]
    return [f"mean ROC-AUC {mean['auc']:.4f} [{mean['ci_low']:.4f}, {mean['ci_high']:.4f}] on {summary['images']} "
            f"images ({summary['protocol']}; labels {summary['label_file']})",
            f"wrote {outputs.eval_dir(run.model_dir, run.split, run.tta)}/"]


def reconstruction(run: EvalRun) -> list[str]:
    from tfcxr.evaluate import outputs, reconstruction as reconstruction_lib

    if run.tta != "none":
        return []
    summary = reconstruction_lib.evaluate_reconstruction(
        run.model, run.records, run.model_dir, inputs=run.inputs, split=run.split, stage=run.stage,
        batch_size=run.batch_size, checkpoint=run.checkpoint)
    lines = [f"{name:18s} PSNR {values['psnr']:6.2f} dB  SSIM {values['ssim']:.4f}"
             for name, values in summary["methods"].items()]
    return lines + [f"wrote {storage.join(outputs.eval_dir(run.model_dir, run.split), 'reconstruction.md')}"]


CLASSIFICATION = Evaluator("classification", classification, tencrop=True, classifies=True)
RECONSTRUCTION = Evaluator("reconstruction", reconstruction)
