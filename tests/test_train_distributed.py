"""The training loop across replicas, workers and restarts, each run in its own process.

Logical CPU devices and TF_CONFIG must be set before TensorFlow initialises, and kill -9 needs a
process to kill, so every run is this file executed as a script (`run`); it trains stage 1's
pipeline with a tiny classifier and exits with os._exit (MirroredStrategy can hang at exit).
"""

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcxr.constants import PLATEAU_FACTOR, PLATEAU_PATIENCE
from tfcxr.config import RunConfig
from tfcxr.train import loop, strategy
from tiny_models import SIZES, tiny_task

TIMEOUT = 300


def overflow_step(spec):
    """One mixed_float16 step on 2 CPU replicas of loss x * w (one weight w = 1), x[i] on replica i.

    Writes [w after the step, loss scale before, loss scale after] to spec["weights_out"].
    """
    distribution = strategy.make_strategy("mirrored", cpu_replicas=2)
    config = RunConfig.from_flags("baseline", records_dir="records", model_dir="run", batch_size=2,
                                  mixed_precision="float16", learning_rate=0.1)
    keras.mixed_precision.set_global_policy(loop.POLICIES[config.runtime.mixed_precision])
    with distribution.scope():
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
        optimizer = loop.make_optimizer(config)
        optimizer.build(model.trainable_variables)
    stage = types.SimpleNamespace(loss=lambda batch, outputs: {"loss": batch["x"] * tf.cast(outputs[:, 0], tf.float32)})
    step = loop.make_train_step(stage, model, optimizer, None, distribution)
    batch = {"image": tf.ones([2, 1]), "x": tf.constant(spec["x"], tf.float32)}  # row i -> replica i
    dataset = distribution.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    scale_before = float(optimizer.dynamic_scale.numpy())
    step(next(iter(dataset)), tf.constant(0.0))  # no preemption signal
    np.savez(spec["weights_out"], np.array([float(model.get_weights()[0][0, 0]), scale_before,
                                            float(optimizer.dynamic_scale.numpy())]))


def run(spec):
    """The script side: trains as `spec` says, writes the final weights to spec["weights_out"]."""
    try:
        if spec.get("overflow_step"):
            overflow_step(spec)
        else:
            train(spec)
    except loop.Preempted as stop:  # its line is printed; out with its code, without the exit hang
        sys.stdout.flush()
        os._exit(stop.code)
    except Exception as error:  # noqa: BLE001 - one line to the parent, then out without MirroredStrategy's exit hang
        print(f"error: {type(error).__name__}: {error}", flush=True)
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def train(spec):

    class AtStep(keras.callbacks.Callback):
        """Calls act() after batch `step` of `epoch` (step None: at the end of `epoch`, its log row written)."""

        def __init__(self, epoch, step):
            super().__init__()
            self.epoch, self.step, self.current = epoch, step, None

        def on_epoch_begin(self, epoch, logs=None):
            self.current = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.step is not None and (self.current, batch) == (self.epoch, self.step):
                self.act()

        def on_epoch_end(self, epoch, logs=None):
            if self.step is None and epoch == self.epoch:
                self.act()

    class KillAt(AtStep):
        """kill -9 there (at an epoch's end: its checkpoint not yet written)."""

        def act(self):
            os.kill(os.getpid(), signal.SIGKILL)

    class SignalAt(AtStep):
        """Prints "signal me" there and waits for the parent's signal."""

        def act(self):
            print("signal me", flush=True)
            time.sleep(5)  # the signal lands here, during this step's callbacks

    class SaveInitial(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            np.savez(spec["initial_out"], *self.model.get_weights())

    distribution = strategy.make_strategy(spec["strategy"], spec.get("cpu_replicas", 1))
    config = RunConfig.from_flags("baseline", **spec["config"], **SIZES, weights=None)
    callbacks = [KillAt(*spec["kill_at"])] if spec.get("kill_at") else []
    callbacks += [SaveInitial()] if spec.get("initial_out") else []
    callbacks += [SignalAt(*spec["signal_at"])] if spec.get("signal_at") else []
    stage = tiny_task(spec.get("fixed_input", False), spec.get("batchnorm", False))
    if spec.get("nan_on_replica_1_from_step") is not None:
        stage = nan_on_replica_1(stage, spec["nan_on_replica_1_from_step"])
    model = loop.train(stage, config, distribution, callbacks=callbacks)
    np.savez(spec["weights_out"], *model.get_weights())


def nan_on_replica_1(stage, first_step):
    """`stage` whose loss is NaN on replica 1's examples from optimizer step `first_step` on."""
    built = {}

    def build_model(config, label_names):
        built["model"] = stage.build_model(config, label_names)
        return built["model"]

    def loss(batch, outputs):
        terms = stage.loss(batch, outputs)
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        late = built["model"].optimizer.iterations >= first_step
        poison = tf.where(tf.logical_and(late, tf.equal(replica, 1)), float("nan"), 0.0)
        return {**terms, "loss": terms["loss"] + poison}

    return dataclasses.replace(stage, build_model=build_model, loss=loss)


def start(spec, env=None):
    """Starts this file as a training process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.Popen([sys.executable, __file__, json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, expect=0):
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == expect, output[-3000:]
    return output


def weights(path):
    with np.load(path) as saved:
        return [saved[key] for key in sorted(saved.files, key=lambda name: int(name.split("_")[1]))]


def config(records_dir, model_dir, **overrides):
    return {"records_dir": str(records_dir), "model_dir": str(model_dir), "batch_size": 8, "epochs": 1,
            "steps_per_epoch": 1, "val_steps": 1, **overrides}


@pytest.mark.slow
def test_two_replicas_step_equals_one_replica(records_dir, tmp_path):
    """One step of global batch 8 on 2 CPU replicas (4 each) == on 1 replica; the update is not zero."""
    processes = {
        replicas: start({"strategy": "mirrored", "cpu_replicas": replicas, "fixed_input": True,
                         "config": config(records_dir, tmp_path / f"run{replicas}", learning_rate=1e-2),
                         "weights_out": str(tmp_path / f"weights{replicas}.npz"),
                         "initial_out": str(tmp_path / f"initial{replicas}.npz")})
        for replicas in (1, 2)
    }
    for process in processes.values():
        finish(process)
    one, two = weights(tmp_path / "weights1.npz"), weights(tmp_path / "weights2.npz")
    assert len(one) == len(two) == 4  # conv and dense kernels and biases
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for initial in weights(tmp_path / "initial1.npz"), weights(tmp_path / "initial2.npz"):
        assert min(np.abs(a - b).max() for a, b in zip(one, initial)) > 1e-3  # every weight moved


@pytest.mark.slow
def test_float16_overflow_on_any_replica_skips_the_step_on_every_replica(tmp_path):
    """x = 1e36 overflows the float16 step on one replica: w stays 1 (not NaN) and the scale halves."""
    runs = {"replica1": [1.0, 1e36], "replica0": [1e36, 1.0], "none": [1.0, 1.0]}
    processes = {name: start({"overflow_step": True, "x": x, "weights_out": str(tmp_path / f"{name}.npz")})
                 for name, x in runs.items()}
    for process in processes.values():
        finish(process)
    for name in ("replica1", "replica0"):
        weight, scale_before, scale_after = weights(tmp_path / f"{name}.npz")[0]
        assert weight == 1.0, name
        assert scale_after == scale_before / 2, name
    weight, scale_before, scale_after = weights(tmp_path / "none.npz")[0]
    assert np.isfinite(weight) and weight < 1.0 and scale_after == scale_before  # a normal step


@pytest.mark.slow
def test_synchronized_batchnorm_sees_the_global_batch(records_dir, tmp_path):
    """One step of global batch 8: the moving statistics on 2 replicas equal 1 replica's with
    --sync_batchnorm (the default with 2 replicas), and differ without it."""
    runs = {"one": (1, None), "synced": (2, None), "unsynced": (2, False)}
    processes = {
        name: start({"strategy": "mirrored", "cpu_replicas": replicas, "fixed_input": True, "batchnorm": True,
                     "config": config(records_dir, tmp_path / name, sync_batchnorm=sync),
                     "weights_out": str(tmp_path / f"{name}.npz")})
        for name, (replicas, sync) in runs.items()
    }
    for process in processes.values():
        finish(process)
    one, synced, unsynced = (weights(tmp_path / f"{name}.npz") for name in runs)
    moving_mean, moving_variance = one[-4], one[-3]  # [conv k, b, gamma, beta, moving mean, var, dense k, b]
    assert len(one) == 8 and moving_mean.shape == moving_variance.shape == (4,)
    for a, b in zip(one, synced):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(unsynced[-3] - moving_variance).max() > 1e-4  # per-replica statistics: not the global batch's


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_trains_in_step_and_only_the_chief_writes(records_dir, tmp_path):
    """Two MultiWorkerMirroredStrategy processes on localhost: identical weights, one set of files."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    model_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        worker_tmp = tmp_path / f"tmp{index}"
        worker_tmp.mkdir()
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        spec = {"strategy": "multi_worker", "weights_out": str(tmp_path / f"weights{index}.npz"),
                "config": config(records_dir, model_dir, epochs=2, steps_per_epoch=2, val_steps=None)}
        processes.append(start(spec, {"TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(worker_tmp)}))
    for process in processes:
        finish(process)

    for a, b in zip(weights(tmp_path / "weights0.npz"), weights(tmp_path / "weights1.npz")):
        np.testing.assert_array_equal(a, b)
    assert sorted(path.name for path in model_dir.iterdir()) == ["best.keras", "checkpoints", "log.csv", "tensorboard"]
    assert len((model_dir / "log.csv").read_text().splitlines()) == 1 + 2  # header + one row per epoch
    assert not list((tmp_path / "tmp1").glob("tfcxr-worker-*"))  # the worker's checkpoint copies were deleted


def start_workers(tmp_path, model_dirs, spec):
    """Two MultiWorkerMirroredStrategy processes on localhost, worker i training into model_dirs[i]."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        worker_tmp = tmp_path / f"tmp{index}"
        worker_tmp.mkdir(exist_ok=True)
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        worker_spec = {**spec, "strategy": "multi_worker", "weights_out": str(tmp_path / f"weights{index}.npz"),
                       "config": {**spec["config"], "model_dir": str(model_dirs[index])}}
        processes.append(start(worker_spec, {"TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(worker_tmp)}))
    return processes


@pytest.mark.slow
def test_multi_worker_killed_and_restarted_resumes_every_worker_at_the_same_point(records_dir, tmp_path):
    """Both workers killed mid-epoch after a checkpoint and restarted: both resume at the same epoch
    and step and end with the same weights. With model_dirs that are not shared, both stop at once."""
    settings = dict(epochs=2, steps_per_epoch=4, checkpoint_every=2, val_steps=1)
    spec = {"config": config(records_dir, tmp_path / "run", **settings)}
    shared = [tmp_path / "run"] * 2
    for process in start_workers(tmp_path, shared, {**spec, "kill_at": (1, 2)}):
        finish(process, expect=-signal.SIGKILL)
    outputs = [finish(process) for process in start_workers(tmp_path, shared, spec)]
    resumed = [line.split(": ", 1)[1] for output in outputs for line in output.splitlines() if line.startswith("resuming from")]
    assert resumed == ["epoch 2, step 2"] * 2, outputs
    for a, b in zip(weights(tmp_path / "weights0.npz"), weights(tmp_path / "weights1.npz")):
        np.testing.assert_array_equal(a, b)

    # The worker's own folder holds no checkpoint: it would start from scratch while the chief resumes.
    separate = [tmp_path / "chief", tmp_path / "worker1"]
    for process in start_workers(tmp_path, separate, {**spec, "kill_at": (1, 2)}):
        finish(process, expect=-signal.SIGKILL)
    for output in (finish(process, expect=1) for process in start_workers(tmp_path, separate, spec)):
        assert "the workers would start from different states" in output and "storage all workers share" in output
    assert "epoch 2 step 2" in output and "epoch 1 step 0" in output


def checkpoint_tensors(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    names = [name for name in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in name]
    return {name: reader.get_tensor(name) for name in names}


@pytest.mark.slow
def test_kill_9_and_rerun_ends_where_an_uninterrupted_run_ends(records_dir, tmp_path):
    """Killed at an epoch end (log row written, checkpoint not) and mid-epoch (after a mid-epoch
    checkpoint), rerun each time: the same weights, optimizer state and log.csv as no kill.

    The learning rate is so small that val_loss never improves by the plateau's relative threshold,
    so the learning rate drops after epoch PLATEAU_PATIENCE + 2 (PyTorch's count): only if the
    plateau's count survives both restarts does it drop at the same epoch.
    """
    epochs = PLATEAU_PATIENCE + 3
    settings = dict(epochs=epochs, steps_per_epoch=4, checkpoint_every=2, learning_rate=1e-6,
                    deterministic=True, val_steps=None)

    def spec(name, kill_at=None):
        return {"strategy": "one_device", "kill_at": kill_at, "weights_out": str(tmp_path / f"{name}.npz"),
                "config": config(records_dir, tmp_path / name, **settings)}

    uninterrupted = start(spec("uninterrupted"))
    finish(start(spec("killed", kill_at=(2, None))), expect=-signal.SIGKILL)
    rows = (tmp_path / "killed" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2"]  # epoch 2 logged, not checkpointed
    finish(start(spec("killed", kill_at=(4, 2))), expect=-signal.SIGKILL)  # after the step-2 checkpoint
    finish(start(spec("killed")))
    finish(uninterrupted)

    expected, resumed = checkpoint_tensors(tmp_path / "uninterrupted"), checkpoint_tensors(tmp_path / "killed")
    assert sorted(expected) == sorted(resumed)
    assert any("optimizer" in name for name in expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    log = (tmp_path / "uninterrupted" / "log.csv").read_text()
    assert (tmp_path / "killed" / "log.csv").read_text() == log
    learning_rates = [float(row.split(",")[1]) for row in log.splitlines()[1:]]  # the column after epoch
    assert len(learning_rates) == epochs
    np.testing.assert_allclose(learning_rates[: PLATEAU_PATIENCE + 2], 1e-6, rtol=1e-6)
    np.testing.assert_allclose(learning_rates[PLATEAU_PATIENCE + 2:], 1e-6 * PLATEAU_FACTOR, rtol=1e-6)


def said(output, start):
    """The lines of `output` that say `start`..., from there on (progress bars share the lines)."""
    return [line[line.index(start):] for line in output.splitlines() if start in line]


def signal_when_ready(process, number):
    """Waits for the child's "signal me", sends it `number`; -> the child's output so far."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "signal me" in line:  # after a progress bar's carriage return
            process.send_signal(number)
            return "".join(lines)
    raise AssertionError("the run ended before it asked for a signal:\n" + "".join(lines)[-3000:])


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_and_the_same_command_ends_as_an_uninterrupted_run(records_dir, tmp_path):
    """SIGTERM at a random step (no mid-epoch checkpoints): the run finishes that step and the next (which
    carries the flag), checkpoints there, says so in one line and exits 143 within 60 s; rerun, it ends with
    the same weights, optimizer state and log.csv as a run never stopped."""
    epochs, steps = 2, 6
    epoch, step = random.Random().choice([(e, s) for e in range(epochs) for s in range(steps - 1)])
    settings = dict(epochs=epochs, steps_per_epoch=steps, checkpoint_every=0, deterministic=True, val_steps=1,
                    learning_rate=1e-2)

    def spec(name, **extra):
        return {"strategy": "one_device", "weights_out": str(tmp_path / f"{name}.npz"),
                "config": config(records_dir, tmp_path / name, **settings), **extra}

    uninterrupted = start(spec("uninterrupted"))
    stopped = start(spec("stopped", signal_at=(epoch, step)))
    before = signal_when_ready(stopped, signal.SIGTERM)
    output = before + stopped.communicate(timeout=60)[0]
    assert stopped.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert said(output, "preempted") == [f"preempted (SIGTERM): checkpoint {tmp_path / 'stopped' / 'checkpoints' / 'ckpt-'}"
                    f"{epoch + 1} at epoch {epoch + 1}, step {step + 2}; run the same command to resume"], output
    resumed = finish(start(spec("stopped")))
    assert f"resuming from {tmp_path / 'stopped' / 'checkpoints'}" in resumed
    assert f"epoch {epoch + 1}, step {step + 2}" in resumed
    finish(uninterrupted)
    expected, result = checkpoint_tensors(tmp_path / "uninterrupted"), checkpoint_tensors(tmp_path / "stopped")
    assert sorted(expected) == sorted(result)
    for name, value in expected.items():
        if not name.startswith("save_counter"):  # the preemption's checkpoint is one more
            np.testing.assert_array_equal(result[name], value, err_msg=name)
    assert (tmp_path / "stopped" / "log.csv").read_text() == (tmp_path / "uninterrupted" / "log.csv").read_text()


@pytest.mark.slow
def test_sigterm_on_one_worker_stops_both_at_the_same_step_and_both_resume_there(records_dir, tmp_path):
    """Two workers on localhost; only the second gets SIGTERM. Both checkpoint the same step (the chief
    writes it), both exit 143, and both resume from it with the same weights."""
    spec = {"config": config(records_dir, tmp_path / "run", epochs=2, steps_per_epoch=4, val_steps=1)}
    chief, worker = start_workers(tmp_path, [tmp_path / "run"] * 2, {**spec, "signal_at": (0, 1)})
    signal_when_ready(worker, signal.SIGTERM)
    outputs = [process.communicate(timeout=60)[0] for process in (chief, worker)]
    assert [chief.returncode, worker.returncode] == [128 + signal.SIGTERM] * 2, outputs
    stops = [line.split(" at ", 1)[1] for output in outputs for line in said(output, "preempted")]
    assert stops == ["epoch 1, step 3; run the same command to resume"] * 2, outputs
    outputs = [finish(process) for process in start_workers(tmp_path, [tmp_path / "run"] * 2, spec)]
    resumed = [line.split(": ", 1)[1] for output in outputs for line in output.splitlines()
               if line.startswith("resuming from")]
    assert resumed == ["epoch 1, step 3"] * 2, outputs
    for a, b in zip(weights(tmp_path / "weights0.npz"), weights(tmp_path / "weights1.npz")):
        np.testing.assert_array_equal(a, b)
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
def test_nan_loss_on_one_replica_stops_both_and_keeps_the_last_good_checkpoint(records_dir, tmp_path):
    """2 CPU replicas, the loss NaN on replica 1's examples from the third step (epoch 2): one line, exit 1,
    the epoch-1 checkpoint kept as it was (finite, epoch 2 step 0) and nothing of epoch 2 saved."""
    spec = {"strategy": "mirrored", "cpu_replicas": 2, "fixed_input": True, "nan_on_replica_1_from_step": 2,
            "weights_out": str(tmp_path / "weights.npz"),
            "config": config(records_dir, tmp_path / "run", epochs=3, steps_per_epoch=2)}
    output = finish(start(spec), expect=1)
    errors = said(output, "error: TrainingStopped")  # (TensorFlow's "CUDA error:" lines say error: too)
    assert len(errors) == 1 and "epoch 2, step 1: loss is nan; training stopped" in errors[0], output
    assert errors[0].endswith(str(tmp_path / "run" / "checkpoints" / "ckpt-1"))
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-1")
    tensors = checkpoint_tensors(tmp_path / "run")
    progress = json.loads(next(value for name, value in tensors.items() if name.startswith("progress")))
    assert (progress["epoch"], progress["step"]) == (1, 0)
    assert all(np.isfinite(value).all() for value in map(np.asarray, tensors.values()) if value.dtype.kind == "f")
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 1 + 1  # epoch 1's row only


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
