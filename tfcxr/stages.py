"""The stages of AECNN as records: what each trains (a tfcxr.train Task), how it is evaluated
(tfcxr.evaluate evaluators) and how it is served (a tfcxr.export serving module).

name          alias  trains                                           best.keras      export
"baseline"      1    D121 BL5: BCE with logits                        the baseline    tfcxr_d121
"autoencoder"   2    a codec (--codec): MSE on the reconstruction     the codec       tfcxr_autoencoder
"aecnn"         3    joint AECNN from 1 and 2: 0.9 BCE + 0.1 MSE      the AECNN       tfcxr_aecnn

A new stage is one Stage record registered in STAGES and one flagfile naming it (--stage=<name>).
"""

import dataclasses
from collections.abc import Mapping

from tfcxr.evaluate.evaluators import CLASSIFICATION, RECONSTRUCTION, Evaluator
from tfcxr.export.saved_model import AECNNServingModule, ClassifierModule, CodecModule, ServingModule
from tfcxr.train import tasks
from tfcxr.train.tasks import Task


@dataclasses.dataclass(frozen=True)
class Stage:
    """name: what --stage and config.json call it; number: the paper's stage number, an alias.
    task: what training needs. evaluators: what --mode=evaluate runs, in order.
    serving: the SavedModel module of --mode=export; export_name: its TF Serving model name
    (None: the stage is not exported)."""

    name: str
    number: int | None
    task: Task
    evaluators: tuple[Evaluator, ...] = ()
    serving: type[ServingModule] | None = None
    export_name: str | None = None

    @property
    def classifies(self) -> bool:
        """Whether the stage's model is a classifier (--mode=explain, --tta=tencrop)."""
        return any(evaluator.classifies for evaluator in self.evaluators)


class Stages(Mapping):
    """Stage records by name; the paper's numbers (1, "1", ...) are aliases: STAGES[1] is STAGES["baseline"].
    Iterating gives the names."""

    def __init__(self, *records: Stage):
        self.records = {stage.name: stage for stage in records}

    def register(self, stage: Stage) -> Stage:
        """Adds (or replaces) a stage: a new stage is one record."""
        self.records[stage.name] = stage
        return stage

    def __getitem__(self, key: str | int) -> Stage:
        for stage in self.records.values():
            if str(key) in (stage.name, str(stage.number)):
                return stage
        aliases = ", ".join(f"{s.name} ({s.number})" if s.number else s.name for s in self.records.values())
        raise KeyError(f"--stage={key}: no such stage; one of {aliases}")

    def __iter__(self):
        return iter(self.records)

    def __len__(self):
        return len(self.records)


BASELINE = Stage("baseline", 1, tasks.BASELINE, (CLASSIFICATION,), ClassifierModule, "tfcxr_d121")
AUTOENCODER = Stage("autoencoder", 2, tasks.AUTOENCODER, (RECONSTRUCTION,), CodecModule, "tfcxr_autoencoder")
AECNN = Stage("aecnn", 3, tasks.AECNN, (CLASSIFICATION, RECONSTRUCTION), AECNNServingModule, "tfcxr_aecnn")
STAGES = Stages(BASELINE, AUTOENCODER, AECNN)
