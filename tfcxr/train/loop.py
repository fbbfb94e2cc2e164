"""One custom training loop for every task, under any tf.distribute strategy.

train() reads top to bottom like orbit's controller: build, restore, then per epoch run_epoch
(`steps` train steps on a freshly seeded input pipeline), validate (one pass over val, or
`val_steps`: the loss terms and the task's metric objects), the CallbackList
(ReduceLROnPlateau, TerminateOnNaN and, on the chief, BestModel, CSVLogger, Summaries), save.

Fault tolerance: a tf.train.Checkpoint holds the model, the optimizer (its learning rate
included), the device augmentation's seed state and a JSON `progress` string (epoch, step,
running train-loss sums, the callbacks' RESUMABLE state), so a run killed at any moment and
started again with the same command ends where an uninterrupted run would. Why not
keras.callbacks.BackupAndRestore: it restores through model.fit (fit reads the initial epoch
it sets) and only knows the model and the compiled optimizer; this loop must restore its own
epoch, step, input position and callback state anyway, and one Checkpoint, committed by
CheckpointManager's atomic rename of its state file, carries all of them at once.

Preemption: SIGTERM or SIGINT (a spot VM's notice, Ctrl-C) sets a flag. The step in flight
finishes; the next one all-reduces the flag with its loss, so every worker of a cluster learns it
at that same step; after it the run checkpoints, prints one line and raises Preempted, a
SystemExit with code 128 + the signal's number (143 for SIGTERM, 130 for SIGINT); the same command
resumes there. A second signal stops at once. A resumed epoch skips its done batches as serialized
records, before any decode (pipeline.make_dataset's skip_batches).

Paths: model_dir and the --init_* files may be URLs (gs://...): everything here goes through
tfcxr.storage and tf.io.gfile (checkpoints, best.keras, log.csv, TensorBoard).
"""

import collections
import contextlib
import itertools
import json
import shutil
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfcxr.constants import ADAM_EPSILON, LR_SCHEDULES
from tfcxr import storage
from tfcxr.data import schema
from tfcxr.data.pipeline import naming_bad_shards
from tfcxr.train import callbacks as callbacks_lib
from tfcxr.train import optimizers
from tfcxr.config import RunConfig, describe
from tfcxr.data.records import Records
from tfcxr.train.tasks import Task
from tfcxr.train.strategy import is_chief, write_dir

POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


class TrainingStopped(RuntimeError):
    """A callback (TerminateOnNaN) stopped training; nothing of the failing epoch is saved."""


class Preempted(SystemExit):
    """SIGTERM / SIGINT: the run checkpointed the step it reached; exit code 128 + the signal's number."""


class PreemptionFlag:
    """Set by SIGTERM or SIGINT while training (the handlers are this object's only while it is entered).

    The first signal asks the loop to stop after the step in flight; a second one restores the
    previous handlers and re-sends itself, so it stops the process at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers install in the main thread only
            self.previous = {number: signal.signal(number, self.handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number, frame):
        if self.signal is not None:
            self.__exit__()
            signal.raise_signal(number)
            return
        self.signal = number

    @property
    def value(self):
        """1.0 once a signal came, else 0.0: what each train step all-reduces."""
        return 0.0 if self.signal is None else 1.0


class WorkersDisagree(RuntimeError):
    """The workers of a cluster would start from different states (epoch, step or weights)."""


def check_init_files(task: Task, config: RunConfig) -> None:
    """Stops at once, naming the flag and path, when a file the run starts from is missing."""
    paths = ("init.codec", "init.classifier")
    for path in paths:
        if config.get(path) and not storage.isfile(config.get(path)):
            raise FileNotFoundError(f"{describe(path)}={config.get(path)}: file not found (train the earlier stage first)")
    for path in task.requires:
        if not config.get(path):
            raise FileNotFoundError(f"stage {config.stage} needs {describe(path)} (a best.keras of an earlier stage)")


def epoch_seed(seed, epoch):
    """A distinct input seed per epoch, the same again when the epoch is re-run after a restart."""
    return seed * 10_007 + epoch


def learning_rate(config, total_steps=None):
    """optimizer.learning_rate, a constant the plateau scheduler cuts, or under optimizer.schedule "cosine" a
    half cosine from it to 0 over `total_steps` (the run's epochs x steps per epoch), read at the optimizer's
    step count: a resumed run continues on the same curve."""
    schedule = config.optimizer.schedule
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule={schedule}: one of {', '.join(LR_SCHEDULES)}")
    if schedule == "plateau":
        return config.optimizer.learning_rate
    if not total_steps:
        raise ValueError("--lr_schedule=cosine needs the run's length in steps")
    return keras.optimizers.schedules.CosineDecay(config.optimizer.learning_rate, total_steps)


def make_optimizer(config, total_steps=None):
    """Adam (default betas, PyTorch's epsilon) at learning_rate(config, total_steps); under float16 wrapped in
    a LossScaleOptimizer."""
    optimizer = optimizers.TorchAdam(learning_rate(config, total_steps), epsilon=ADAM_EPSILON)  # torch.optim.Adam
    if config.runtime.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def finite_on_every_replica(optimizer, gradients):
    """`gradients`, poisoned with NaN on every replica when any replica's are not finite.

    LossScaleOptimizer checks the gradients it is given for inf / NaN before it all-reduces them,
    and under MirroredStrategy it reads only the first replica's verdict: an overflow on another
    replica was applied (every weight NaN) while the loss scale stayed. Here the verdict is
    all-reduced first, so a step is skipped on every replica, and the scale halved once, when any
    replica overflows: one step of the reference's single-GPU float16 training.
    """
    finite = optimizer.check_finite(gradients)  # this replica's verdict, as LossScaleOptimizer reads it
    overflows = tf.distribute.get_replica_context().all_reduce("SUM", 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflows > 0, float("nan"), 0.0)
    return [g if g is None else g + tf.cast(poison, g.dtype) for g in gradients]


def make_train_step(task, model, optimizer, augmentation, strategy, jit_compile=False):
    """A tf.function: (distributed batch, this worker's preemption flag) -> {term: global batch mean,
    "preempted": the flags' sum over every replica of every worker} after one optimizer step.

    jit_compile: XLA-compile each replica's forward and backward pass (for GPUs; measured slower on
    CPUs). The augmentation and the optimizer update, which all-reduces, stay outside XLA.
    """

    def loss_and_gradients(batch):
        with tf.GradientTape() as tape:
            outputs = model(batch["image"], training=True)
            terms = {name: tf.nn.compute_average_loss(value) for name, value in task.loss(batch, outputs).items()}
            loss = terms["loss"]
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled_loss = optimizer.scale_loss(loss)  # identity unless LossScaleOptimizer
        return terms, tape.gradient(scaled_loss, model.trainable_variables)

    if jit_compile:  # a nested tf.function: only when asked, since it cannot hold a cross-replica sync
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def replica_step(batch, preempted):
        if augmentation is not None:
            batch = {**batch, "image": augmentation(batch["image"], training=True)}
        terms, gradients = loss_and_gradients(batch)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            gradients = finite_on_every_replica(optimizer, gradients)
        optimizer.apply(gradients, model.trainable_variables)  # all-reduces over replicas, unscales
        preempted = tf.identity(preempted)  # on this replica's device (MultiWorkerMirrored all-reduces from there)
        return {**terms, "preempted": tf.distribute.get_replica_context().all_reduce("SUM", preempted)}

    @tf.function
    def train_step(batch, preempted):
        terms = strategy.run(replica_step, args=(batch, preempted))
        preempted = strategy.experimental_local_results(terms.pop("preempted"))[0]  # the same on every replica
        return {**{name: strategy.reduce("SUM", value, axis=None) for name, value in terms.items()},
                "preempted": preempted}

    return train_step


def make_eval_step(task, model, metrics, strategy):
    """A tf.function: sums of the per-example loss terms and "count", and each metric's per-example
    values gathered from all replicas and workers (one {name: [B, ...]} per metric, in order)."""

    def replica_step(batch):
        outputs = model(batch["image"], training=False)
        sums = {name: tf.reduce_sum(value) for name, value in task.loss(batch, outputs).items()}
        sums["count"] = tf.cast(tf.shape(batch["image"])[0], tf.float32)
        return sums, tuple(metric.per_example(model, batch, outputs) for metric in metrics)

    @tf.function
    def eval_step(batch):
        sums, values = strategy.run(replica_step, args=(batch,))
        sums = {name: strategy.reduce("SUM", value, axis=None) for name, value in sums.items()}
        return sums, tf.nest.map_structure(lambda value: strategy.gather(value, axis=0), values)

    return eval_step


def validate(eval_step, metrics, dataset, steps, show):
    """val_<term> means over the examples and val_<name> of every metric's result."""
    sums = collections.defaultdict(float)
    values = [collections.defaultdict(list) for _ in metrics]  # per metric: {name: [per-batch arrays]}
    for batch in tqdm(itertools.islice(dataset, steps), desc="val", total=steps, leave=False, disable=not show):
        batch_sums, batch_values = eval_step(batch)
        for name, value in batch_sums.items():
            sums[name] += float(value)
        for parts, named in zip(values, batch_values):
            for name, value in named.items():
                parts[name].append(value.numpy())
    count = sums.pop("count")
    logs = {f"val_{name}": total / count for name, total in sums.items()}
    for metric, parts in zip(metrics, values):
        gathered = {name: np.concatenate(arrays) for name, arrays in parts.items()}
        logs.update({f"val_{name}": value for name, value in metric.result(gathered).items()})
    return logs


def batchnorm_layers(model):
    """Every BatchNormalization layer of `model`, its sub-models' included."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer
        elif hasattr(layer, "layers"):
            yield from batchnorm_layers(layer)


def sync_batchnorm(config, strategy):
    """config.runtime.sync_batchnorm, or (None) whether there is more than one replica."""
    synchronized = strategy.num_replicas_in_sync > 1 if config.runtime.sync_batchnorm is None else config.runtime.sync_batchnorm
    if synchronized and config.runtime.jit_compile and strategy.num_replicas_in_sync > 1:
        raise ValueError(f"--jit_compile cannot compile BatchNorm synchronized over {strategy.num_replicas_in_sync} "
                         "replicas (a cross-replica sync inside XLA); pass --nosync_batchnorm or --nojit_compile")
    return synchronized


def build(task, config, strategy, label_names, steps_per_epoch=None):
    """The task's model, its optimizer and the device augmentation, created in the strategy's scope.

    With sync_batchnorm, BatchNormalization computes its batch statistics over the global batch
    (all replicas), as the reference's single-GPU batch does, not over each replica's share.
    """
    keras.mixed_precision.set_global_policy(POLICIES[config.runtime.mixed_precision])
    with strategy.scope():
        model = task.build_model(config, label_names)
        synchronized = sync_batchnorm(config, strategy)
        for layer in batchnorm_layers(model):
            layer.synchronized = synchronized
        optimizer = make_optimizer(config, steps_per_epoch and steps_per_epoch * config.schedule.epochs)
        optimizer.build(model.trainable_variables)  # Adam's slots, mirrored, before the first step
        augmentation = task.augmentation(config)
    model.optimizer = optimizer  # ReduceLROnPlateau reads and sets model.optimizer.learning_rate
    model.stop_training = False  # TerminateOnNaN sets it
    return model, optimizer, augmentation


def check_same_start(strategy, model, epoch, step, checkpoint_dir):
    """Stops every worker at once unless all start from the same epoch, step and weights.

    Every worker restores from model_dir/checkpoints as it sees it; only the chief writes there.
    When that folder is not shared, a worker finds no checkpoint (or a stale one) and would train
    from other weights than the chief's, then hang when the chief exits. One gather of
    (epoch, step, sum of the weights) per replica tells.
    """

    @tf.function
    def gather_starts():
        def start():
            weight_sum = tf.add_n([tf.reduce_sum(tf.cast(w, tf.float64)) for w in model.weights])
            return tf.stack([tf.constant(epoch, tf.float64), tf.constant(step, tf.float64), weight_sum])[None]

        return strategy.gather(strategy.run(start), axis=0)  # [replicas, 3]

    starts = gather_starts().numpy()
    same_position = (starts[:, :2] == starts[0, :2]).all()
    if not (same_position and np.allclose(starts[:, 2], starts[0, 2], rtol=1e-6, atol=0)):
        found = ", ".join(f"replica {i}: epoch {int(e) + 1} step {int(s)}" for i, (e, s, _) in enumerate(starts))
        raise WorkersDisagree(
            f"{checkpoint_dir}: the workers would start from different states ({found}, or different weights): "
            "the chief's checkpoints are not visible to every worker; use a --model_dir on storage all workers share")


def make_any_worker(strategy):
    """A tf.function: this worker's flag (float) -> its sum over every replica of every worker."""

    @tf.function
    def any_worker(flag):
        return strategy.reduce("SUM", strategy.run(lambda: tf.identity(flag)), axis=None)

    return any_worker


def make_callbacks(task, config, chief, resumed_epoch, records=None):
    """The plateau scheduler and TerminateOnNaN everywhere; the writers on the chief only."""
    model_dir = config.runtime.model_dir
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if config.optimizer.schedule == "plateau":
        callbacks.insert(0, callbacks_lib.ReduceLROnPlateau(monitor="val_loss"))
    if not chief:
        return callbacks
    preview = None
    if task.image_outputs:
        preview = next(iter(task.dataset(config, "val", training=False, records=records)))["image"][: config.runtime.preview_images]
    if resumed_epoch is not None:
        callbacks_lib.truncate_log(storage.join(model_dir, "log.csv"), resumed_epoch)  # rows of re-run epochs go
    return callbacks + [
        callbacks_lib.BestModel(storage.join(model_dir, "best.keras")),
        callbacks_lib.CSVLogger(storage.join(model_dir, "log.csv"), append=resumed_epoch is not None),
        callbacks_lib.Summaries(storage.join(model_dir, "tensorboard"), preview, task.image_outputs,
                                config.runtime.log_every),
    ]


class Checkpointer:
    """The run's tf.train.Checkpoint: model, optimizer, augmentation seeds and a JSON `progress`
    (epoch, step, running train-loss sums, the callbacks' resumable state), in model_dir/checkpoints."""

    def __init__(self, model, optimizer, augmentation, model_dir, strategy):
        self.progress = tf.Variable(json.dumps({"epoch": 0, "step": 0, "train_sums": {}, "callbacks": {}}))
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, progress=self.progress,
            augmentation=augmentation.variables if augmentation is not None else [])
        self.directory = storage.join(model_dir, "checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir(self.directory, strategy),
                                                  max_to_keep=2)
        self.chief = is_chief(strategy)

    def restore(self):
        """The saved progress (epoch 0, step 0 when there is no checkpoint) and the checkpoint's path."""
        latest = tf.train.latest_checkpoint(self.directory)  # the chief's, read by every worker
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return json.loads(self.progress.numpy()), latest

    def save(self, epoch, step, train_sums, callbacks):
        self.progress.assign(json.dumps({
            "epoch": epoch, "step": step, "train_sums": train_sums,
            "callbacks": callbacks_lib.callback_state(callbacks),
        }, default=float))  # numpy scalars -> float
        path = self.manager.save()
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        return path if self.chief else tf.train.latest_checkpoint(self.directory)


def preempted(path, epoch, step, flag):
    """One line saying where the run checkpointed; -> Preempted (SystemExit, 128 + the signal's number)."""
    number = flag.signal or signal.SIGTERM  # another worker's signal: this one stops as that one does
    print(f"preempted ({signal.Signals(number).name}): checkpoint {path} at epoch {epoch + 1}, step {step}; "
          f"run the same command to resume", flush=True)
    return Preempted(128 + number)


def run_epoch(task, config, strategy, train_step, model, callback_list, checkpointer, epoch, first_step,
              train_sums, steps, flag, records=None):
    """Train steps first_step .. steps - 1 of `epoch`; the train-loss means over the epoch's steps.

    Raises Preempted after the checkpoint of the step at which any worker's `flag` was seen.
    """
    chief = is_chief(strategy)

    def train_input(context):
        # Each step takes one batch per local replica from this pipeline: the done steps' batches are skipped.
        return task.dataset(config, "train", training=True, input_context=context,
                             seed=epoch_seed(config.runtime.seed, epoch), repeat=True, records=records,
                             skip_batches=first_step * context.num_replicas_in_sync // context.num_input_pipelines)

    batches = iter(strategy.distribute_datasets_from_function(train_input))
    bar = tqdm(range(first_step, steps), desc=f"epoch {epoch + 1}/{config.schedule.epochs}", initial=first_step,
               total=steps, disable=not chief)
    for step in bar:
        callback_list.on_train_batch_begin(step)
        terms = {name: float(value) for name, value in train_step(next(batches), tf.constant(flag.value)).items()}
        stop = terms.pop("preempted") > 0
        train_sums.update(terms)
        callback_list.on_train_batch_end(step, terms)
        if model.stop_training:
            raise TrainingStopped(f"epoch {epoch + 1}, step {step + 1}: loss is {terms['loss']}; training stopped, "
                                  f"the last checkpoint kept: {tf.train.latest_checkpoint(checkpointer.directory)}")
        if step == first_step:  # the rate leaves out the first step: it traces and fills buffers
            start = time.perf_counter()
        elif step % config.runtime.log_every == 0 or step == steps - 1:
            rate = (step - first_step) * config.data.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{train_sums['loss'] / (step + 1):.4f}", images_per_s=f"{rate:.1f}")
        if stop:
            path = checkpointer.save(epoch, step + 1, dict(train_sums), callback_list.callbacks)
            raise preempted(path, epoch, step + 1, flag)
        if config.runtime.checkpoint_every and (step + 1) % config.runtime.checkpoint_every == 0 and step + 1 < steps:
            checkpointer.save(epoch, step + 1, dict(train_sums), callback_list.callbacks)
    return {name: total / steps for name, total in train_sums.items()}


def train(task: Task, config: RunConfig, strategy: tf.distribute.Strategy, records: Records | None = None,
          callbacks: tuple[keras.callbacks.Callback, ...] = ()) -> keras.Model:
    """Trains `task` under `strategy` and returns the model.

    records: data.records_dir opened (its manifest), or None to open it here. A fresh run starts
    from task.initialize (e.g. the init files); a resumed one from its checkpoint alone.
    Writes (chief only) config.runtime.model_dir/{checkpoints/, best.keras, log.csv, tensorboard/};
    resumes from the latest checkpoint there. Extra Keras `callbacks` run after the loop's own.
    SIGTERM / SIGINT: checkpoints the step reached and raises Preempted (see the module docstring);
    a corrupt shard raises pipeline.CorruptShard naming it; the last checkpoint stays in both.
    """
    with PreemptionFlag() as flag:
        return train_until_done(task, config, strategy, records, callbacks, flag)


def train_until_done(task, config, strategy, records, callbacks, flag):
    task = task.configured(config)  # its loss at the run's weights
    check_init_files(task, config)
    records = records or Records.open(config.data.records_dir)
    steps = config.schedule.steps_per_epoch or records.split_size("train") // config.data.batch_size
    if steps < 1:  # an epoch counted in images, of fewer images than a batch
        raise ValueError(f"{config.data.records_dir}: the train split's {records.split_size('train')} images make no "
                         f"step of --batch_size={config.data.batch_size}; set --steps_per_epoch (the train split repeats) "
                         f"or a smaller --batch_size")
    chief = is_chief(strategy)
    storage.makedirs(config.runtime.model_dir)
    keras.utils.set_random_seed(config.runtime.seed)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    model, optimizer, augmentation = build(task, config, strategy, records.label_names, steps)

    checkpointer = Checkpointer(model, optimizer, augmentation, config.runtime.model_dir, strategy)
    state, latest = checkpointer.restore()
    if not latest:
        task.initialize(model, config)
    check_same_start(strategy, model, state["epoch"], state["step"], checkpointer.directory)
    if latest:
        print(f"resuming from {latest}: epoch {state['epoch'] + 1}, step {state['step']}", flush=True)

    note = task.budget_note(config, steps)
    if note and chief and not latest:
        print(note, flush=True)
    callback_list = keras.callbacks.CallbackList(
        make_callbacks(task, config, chief, state["epoch"] if latest else None, records) + list(callbacks),
        model=model, epochs=config.schedule.epochs, steps=steps)
    train_step = make_train_step(task, model, optimizer, augmentation, strategy, config.runtime.jit_compile)
    metrics = task.metrics(records.label_names)
    eval_step = make_eval_step(task, model, metrics, strategy)
    val_dataset = strategy.distribute_datasets_from_function(
        lambda context: task.dataset(config, "val", training=False, input_context=context, records=records))

    any_worker = make_any_worker(strategy)
    small = task.input_spec(config).feature == schema.SMALL  # which shards the pipeline reads
    callback_list.on_train_begin()  # resets ReduceLROnPlateau: restore its state after this
    callbacks_lib.restore_callback_state(callback_list.callbacks, state["callbacks"])
    for epoch in range(state["epoch"], config.schedule.epochs):
        first_step = state["step"] if epoch == state["epoch"] else 0
        train_sums = collections.Counter(state["train_sums"] if first_step else {})
        callback_list.on_epoch_begin(epoch)
        with naming_bad_shards(records, "train", small=small):
            logs = run_epoch(task, config, strategy, train_step, model, callback_list, checkpointer, epoch,
                             first_step, train_sums, steps, flag, records)
        with naming_bad_shards(records, "val", small=small):
            logs.update(validate(eval_step, metrics, val_dataset, config.schedule.val_steps, chief))
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        callback_list.on_epoch_end(epoch, logs)
        path = checkpointer.save(epoch + 1, 0, {}, callback_list.callbacks)
        if float(any_worker(tf.constant(flag.value))) > 0 and epoch + 1 < config.schedule.epochs:  # came during validation
            raise preempted(path, epoch + 1, 0, flag)
    callback_list.on_train_end()
    return model
