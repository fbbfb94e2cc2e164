"""The loop's own callbacks, beside Keras's ReduceLROnPlateau, CSVLogger and TerminateOnNaN."""

import math
import os
from pathlib import Path

import keras
import tensorflow as tf

from tfcxr.evaluate.runs import write_text

# Attributes that carry a callback's progress across epochs: checkpointed, restored on resume.
RESUMABLE = {
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
    "BestModel": ("best",),
}


def callback_state(callbacks):
    """The RESUMABLE attributes of `callbacks`, e.g. {"ReduceLROnPlateau": {"wait": 2, ...}}."""
    return {
        type(callback).__name__: {name: getattr(callback, name) for name in RESUMABLE[type(callback).__name__]}
        for callback in callbacks
        if type(callback).__name__ in RESUMABLE
    }


def restore_callback_state(callbacks, state):
    """Sets the attributes saved by callback_state on the same kinds of callbacks."""
    for callback in callbacks:
        for name, value in state.get(type(callback).__name__, {}).items():
            setattr(callback, name, value)


def save_model_atomic(model, path):
    """model.save(path) without the optimizer (checkpoints hold it), never half-written under `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial.keras")  # Keras insists on the .keras suffix
    optimizer, model.optimizer = getattr(model, "optimizer", None), None  # else saved too: 3x the file
    try:
        model.save(partial)
    finally:
        model.optimizer = optimizer
    os.replace(partial, path)


def truncate_log(path, epochs):
    """Keeps the rows of CSVLogger's file for the first `epochs` epochs (before a resume re-runs the rest).

    Rows are kept as written; a row cut short by a kill (no newline) goes.
    """
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    complete = [line for line in lines if line.endswith("\n")]
    if not complete:
        return
    header, *rows = complete
    write_text(path, header + "".join(row for row in rows if int(row.split(",", 1)[0]) < epochs))


class BestModel(keras.callbacks.Callback):
    """Saves the model to `path` whenever `monitor` reaches a new minimum (chief only)."""

    def __init__(self, path, monitor="val_loss"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = math.inf

    def on_epoch_end(self, epoch, logs=None):
        if logs[self.monitor] < self.best:
            self.best = logs[self.monitor]
            save_model_atomic(self.model, self.path)


class Summaries(keras.callbacks.Callback):
    """TensorBoard: epoch scalars, the batch loss every `log_every` steps, and preview images.

    Laid out as keras.callbacks.TensorBoard does (runs `train/` and `validation/`, tags
    `epoch_<name>`), so train and val curves share a chart. `preview` is a fixed batch of
    validation images; each epoch they are written beside the model's `image_outputs`.
    """

    def __init__(self, log_dir, preview=None, image_outputs=(), log_every=0):
        super().__init__()
        self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self.val_writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))
        self.preview = preview
        self.image_outputs = image_outputs
        self.log_every = log_every
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.log_every and batch % self.log_every == 0:
            with self.train_writer.as_default(step=self.epoch * self.params["steps"] + batch):
                tf.summary.scalar("batch_loss", logs["loss"])

    def on_epoch_end(self, epoch, logs=None):
        for name, value in logs.items():
            writer = self.val_writer if name.startswith("val_") else self.train_writer
            with writer.as_default(step=epoch):
                tf.summary.scalar(f"epoch_{name.removeprefix('val_')}", value)
        if self.preview is not None:
            outputs = self.model(self.preview, training=False)
            with self.val_writer.as_default(step=epoch):
                tf.summary.image("input", self.preview, max_outputs=len(self.preview))
                for name in self.image_outputs:
                    tf.summary.image(name, tf.cast(outputs[name], tf.float32), max_outputs=len(self.preview))
        self.train_writer.flush()
        self.val_writer.flush()

    def on_train_end(self, logs=None):
        self.train_writer.close()
        self.val_writer.close()
