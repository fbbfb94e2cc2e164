"""Training throughput (images/s) and peak memory of each stage's train step, at the paper's sizes.

Every case runs in a process of its own, so its peak memory is that process's ru_maxrss:
- loop: tfcxr.train.loop.make_train_step under make_strategy("mirrored"), as `python -m
  tfcxr.main` runs it (strategy.run, compute_average_loss, Adam built in the scope; stages 1 and 3
  with their device augmentation), fed by strategy.distribute_datasets_from_function. With one device
  that is TensorFlow's default strategy (see tfcxr/train/strategy.py);
- loop_mirrored: the same step under tf.distribute.MirroredStrategy over the one device;
- fit (the reference): the same model and loss in plain Keras `model.compile()` + `model.fit()`;
- fit_mirrored: the same under MirroredStrategy.
fit runs with jit_compile=False like the loop (its default "auto" compiles with XLA, slower on
CPUs). All are fed one synthetic in-memory batch, repeated, so the input pipeline is not
measured; float32 and mixed bfloat16. DenseNet121 has weights=None (speed does not depend on them).

    .venv/bin/python benchmarks/bench_training.py [--steps=N] [--stages=1,2,3]

writes benchmarks/results/training.md (the table and the command; a "## Notes" part is kept).
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import app, flags

from tfcxr import models
from tfcxr.constants import CLASSIFICATION_WEIGHT, LEARNING_RATE, NUM_LABELS, STAGE1_CROP, STAGE2_PATCH, STAGE3_CROP
from tfcxr.evaluate.runs import write_text
from tfcxr.train import loop, stages, strategy

flags.DEFINE_integer("steps", None, "timed steps per case, after one untimed step (default: per stage, SIZES)")
flags.DEFINE_list("stages", ["1", "2", "3"], "stages to measure")
flags.DEFINE_integer("repeats", 2, "runs of each case, alternating; the fastest counts (the machine is shared)")
flags.DEFINE_string("case", None, "internal: measure one case (stage,implementation,precision) in this process")
flags.DEFINE_string("out", str(Path(__file__).parent / "results" / "training.md"), "Markdown results")
FLAGS = flags.FLAGS

# (input side, global batch, timed steps) per stage: the paper's sizes, batches small enough for a CPU.
SIZES = {1: (STAGE1_CROP, 8, 3), 2: (STAGE2_PATCH, 32, 30), 3: (STAGE3_CROP, 2, 3)}
PRECISIONS = ("none", "bfloat16")
IMPLEMENTATIONS = ("loop", "loop_mirrored", "fit", "fit_mirrored")
NOTES = "\n## Notes\n"


def build_model(stage):
    if stage == 1:
        return models.build_baseline(models.build_classifier())
    if stage == 2:
        return models.build_autoencoder()
    return models.build_aecnn(models.build_encoder(), models.build_decoder(), models.build_classifier())


def synthetic_batch(stage):
    """One batch as the pipeline yields it: {"image": [B,S,S,1] in [0, 1], "labels": [B,14]}."""
    size, batch_size, _ = SIZES[stage]
    tf.random.set_seed(0)
    return {"image": tf.random.uniform([batch_size, size, size, 1]),
            "labels": tf.cast(tf.random.uniform([batch_size, NUM_LABELS]) < 0.2, tf.float32)}


def loop_steps(stage_number, batch, distribution):
    """A function (n) -> None running n train steps of the tfcxr loop."""
    stage = stages.STAGES[stage_number]
    with distribution.scope():
        model = build_model(stage_number)
        optimizer = keras.optimizers.Adam(LEARNING_RATE)
        optimizer.build(model.trainable_variables)
        augmentation = stage.augmentation(stages.TrainConfig("", "", SIZES[stage_number][1]))
    train_step = loop.make_train_step(stage, model, optimizer, augmentation, distribution)
    batches = iter(distribution.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors(batch).repeat()))

    def run(steps):
        for _ in range(steps):
            train_step(next(batches))["loss"].numpy()  # the loop reads the loss every step, too

    return run


def fit_steps(stage_number, batch, distribution):
    """A function (n) -> None running n steps of model.fit on the same model and loss."""
    losses = {"logits": keras.losses.BinaryCrossentropy(from_logits=True), "reconstruction": "mse"}
    weights = {1: {"logits": 1.0}, 2: {"reconstruction": 1.0},
               3: {"logits": CLASSIFICATION_WEIGHT, "reconstruction": 1.0 - CLASSIFICATION_WEIGHT}}[stage_number]
    targets = {"logits": batch["labels"], "reconstruction": batch["image"]}
    with distribution.scope():
        model = build_model(stage_number)
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss={name: losses[name] for name in weights},
                      loss_weights=weights, jit_compile=False)
    data = tf.data.Dataset.from_tensors((batch["image"], {name: targets[name] for name in weights})).repeat()
    return lambda steps: model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)


def measure(stage, implementation, precision, steps=None):
    """images/s over `steps` steps after one untimed step, and this process's peak RSS."""
    steps = steps or SIZES[stage][2]
    keras.mixed_precision.set_global_policy(loop.POLICIES[precision])
    batch = synthetic_batch(stage)
    distribution = {
        "loop": strategy.make_strategy("mirrored"), "fit": tf.distribute.get_strategy(),
    }.get(implementation) or tf.distribute.MirroredStrategy()
    run = (loop_steps if implementation.startswith("loop") else fit_steps)(stage, batch, distribution)
    start = time.perf_counter()
    run(1)  # traces
    first = time.perf_counter() - start
    start = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * SIZES[stage][1] / seconds, "first_step_s": first,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_case(stage, implementation, precision, steps):
    """measure() in a fresh process; its JSON is the last line it prints."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, __file__, f"--case={stage},{implementation},{precision}"]
    command += [f"--steps={steps}"] if steps else []
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results):
    names = " / ".join(IMPLEMENTATIONS)
    lines = [f"| stage | input | batch | precision | images/s {names} | loop / fit | peak RSS MB {names} "
             f"| first step s {names} |", "|---|---|---|---|---|---|---|---|"]
    for (stage, precision), case in results.items():
        size, batch, _ = SIZES[stage]
        rates = " / ".join(f"{case[name]['images_per_s']:.2f}" for name in IMPLEMENTATIONS)
        memory = " / ".join(f"{case[name]['peak_rss_mb']:.0f}" for name in IMPLEMENTATIONS)
        first = " / ".join(f"{case[name]['first_step_s']:.0f}" for name in IMPLEMENTATIONS)
        ratio = case["loop"]["images_per_s"] / case["fit"]["images_per_s"]
        lines.append(f"| {stage} | {size}x{size} | {batch} | {precision} | {rates} | {ratio:.2f} "
                     f"| {memory} | {first} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.case:
        stage, implementation, precision = FLAGS.case.split(",")
        print(json.dumps(measure(int(stage), implementation, precision, FLAGS.steps)))
        sys.stdout.flush()
        os._exit(0)  # MirroredStrategy processes can hang at exit

    results = {}
    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    for stage in map(int, FLAGS.stages):
        for precision in PRECISIONS:
            runs = [{name: run_case(stage, name, precision, FLAGS.steps) for name in IMPLEMENTATIONS}
                    for _ in range(FLAGS.repeats)]
            results[stage, precision] = {
                name: max((run[name] for run in runs), key=lambda case: case["images_per_s"])
                for name in IMPLEMENTATIONS
            }
            print(table({(stage, precision): results[stage, precision]}).splitlines()[-1], flush=True)

    out = Path(FLAGS.out)
    command = " ".join(["python", "benchmarks/bench_training.py", *sys.argv[1:]])
    steps = FLAGS.steps or ", ".join(f"stage {stage}: {SIZES[stage][2]}" for stage in SIZES)
    steps = f"{steps}; the fastest of {FLAGS.repeats} alternating runs"
    notes = out.read_text().partition(NOTES)[2] if out.exists() else ""  # hand-written, kept across runs
    write_text(out, f"# Training throughput\n\n`{command}`\n\n"
               f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
               f"TensorFlow {tf.__version__}, Keras {keras.__version__}; timed steps per case ({steps}) "
               f"after one untimed (tracing) step; synthetic in-memory batches; DenseNet121 weights=None. "
               f"Load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}.\n\n"
               f"{table(results)}\n" + (NOTES + notes if notes else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
