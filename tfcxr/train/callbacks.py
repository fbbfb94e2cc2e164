"""The loop's own callbacks (the reference's plateau scheduler among them), beside Keras's CSVLogger and TerminateOnNaN."""

import math
import os

import keras
import tensorflow as tf

from tfcxr import storage
from tfcxr.constants import PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_THRESHOLD

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


class ReduceLROnPlateau(keras.callbacks.Callback):
    """keras.callbacks.ReduceLROnPlateau's job with torch.optim.lr_scheduler.ReduceLROnPlateau's rules.

    The reference (PyTorch, mode "min", threshold_mode "rel") differs from Keras's defaults in two
    ways, both followed here:
      - improvement is RELATIVE: current < best * (1 - threshold); Keras: current < best - min_delta,
        an absolute 1e-4 that is several percent of a stage-2 MSE of order 1e-3;
      - the rate drops when the bad epochs EXCEED patience (PyTorch) rather than reach it (Keras):
        on a flat loss with patience 5, the cut comes after epoch 7 (counting from 1), not 6.
    Cooldown is counted as PyTorch does, and a cut smaller than `eps` is skipped. `wait`, `best` and
    `cooldown_counter` keep Keras's names (PyTorch: num_bad_epochs, best, cooldown_counter), so the
    loop's checkpoints carry them as before. Mode "min" only: the loop monitors val_loss.
    """

    def __init__(self, monitor="val_loss", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
                 threshold=PLATEAU_THRESHOLD, cooldown=0, min_lr=0.0, eps=1e-8, verbose=0):
        super().__init__()
        self.monitor, self.factor, self.patience, self.threshold = monitor, factor, patience, threshold
        self.cooldown, self.min_lr, self.eps, self.verbose = cooldown, min_lr, eps, verbose
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = math.inf, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = learning_rate
        current = logs.get(self.monitor)
        if current is None:
            raise KeyError(f"ReduceLROnPlateau monitors {self.monitor!r}, not in the logs: {sorted(logs)}")
        if current < self.best * (1.0 - self.threshold):
            self.best, self.wait = float(current), 0
        else:
            self.wait += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.wait > self.patience:
            new_rate = max(learning_rate * self.factor, self.min_lr)
            if learning_rate - new_rate > self.eps:
                self.model.optimizer.learning_rate = new_rate
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_rate}.")
            self.cooldown_counter = self.cooldown
            self.wait = 0


def save_model_atomic(model, path):
    """model.save(path) without the optimizer (checkpoints hold it), never half-written under `path`.

    `path` may be a URL: Keras 3 zips a .keras file in memory and writes it through tf.io.gfile.
    """
    with storage.atomic_path(path, suffix=".partial.keras") as partial:  # Keras insists on the .keras suffix
        optimizer, model.optimizer = getattr(model, "optimizer", None), None  # else saved too: 3x the file
        try:
            model.save(partial)
        finally:
            model.optimizer = optimizer


def truncate_log(path, epochs):
    """Keeps the rows of CSVLogger's file for the first `epochs` epochs (before a resume re-runs the rest).

    Rows are kept as written; a row cut short by a kill (no newline) goes.
    """
    lines = storage.read_text(path).splitlines(keepends=True) if storage.exists(path) else []
    complete = [line for line in lines if line.endswith("\n")]
    if not complete:
        return
    header, *rows = complete
    storage.write_text(path, header + "".join(row for row in rows if int(row.split(",", 1)[0]) < epochs))


class CSVLogger(keras.callbacks.CSVLogger):
    """keras.callbacks.CSVLogger, whose file may be a URL: Keras 3.15 opens it through tf.io.gfile
    there but at the end reads `.closed`, which a GFile lacks; this one closes it either way."""

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = None
        self.writer = None


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
