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

    .venv/bin/python benchmarks/bench_training.py --pytorch [--stages=1,2] [--levers]

measures instead, in the same run, the same train steps in PyTorch (torch from the optional `bench`
extra: pip install -e '.[bench]'; without it the run says so and skips): DenseNet121 (torchvision's
definition with its names, from tests/torch_reference.py: the modules the parity tests hold tfcxr's
stages equal to) with BCE on 14 logits at stage 1's size, the reproduction's autoencoder with MSE at
stage 2's, its AECNN with 0.9 BCE + 0.1 MSE at stage 3's, Adam, channels_last, float32 (bfloat16 autocast only where the CPU has native
bfloat16: avx512_bf16 or amx_bf16), and reports tfcxr / PyTorch. --levers adds the stage-1 step
under each setting that could close the gap (threads, oneDNN, the device augmentation, XLA, Keras's
unfused BatchNormalization instead of ours), each
in a process of its own. Writes benchmarks/results/training_pytorch.md.
"""

import importlib.util
import json
import os
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
from tfcxr.storage import write_text
from tfcxr.config import RunConfig
from tfcxr.stages import STAGES
from tfcxr.train import loop, strategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

flags.DEFINE_integer("steps", None, "timed steps per case, after one untimed step (default: per stage, SIZES)")
flags.DEFINE_list("stages", ["1", "2", "3"], "stages to measure")
flags.DEFINE_integer("repeats", 2, "runs of each case, alternating; the fastest counts (the machine is shared)")
flags.DEFINE_string("case", None, "internal: measure one case (stage,implementation,precision) in this process")
flags.DEFINE_string("out", None, "Markdown results (default: results/training.md, with --pytorch results/training_pytorch.md)")
flags.DEFINE_bool("pytorch", False, "compare the tfcxr loop with the PyTorch reference instead (stages 1, 2, 3)")
flags.DEFINE_bool("sync_batchnorm", False, "measure instead stage 1's loop on 2 CPU replicas with BatchNorm "
                  "synchronized across them (--sync_batchnorm, the default there) and without")
flags.DEFINE_bool("levers", False, "with --pytorch: the stage-1 step under each lever (threads, oneDNN, augmentation, XLA)")
FLAGS = flags.FLAGS

# (input side, global batch, timed steps) per stage: the paper's sizes, batches small enough for a CPU.
SIZES = {1: (STAGE1_CROP, 8, 3), 2: (STAGE2_PATCH, 32, 30), 3: (STAGE3_CROP, 2, 3)}
PRECISIONS = ("none", "bfloat16")
IMPLEMENTATIONS = ("loop", "loop_mirrored", "fit", "fit_mirrored")
NOTES = "\n## Notes\n"
# --sync_batchnorm: the loop on 2 CPU replicas -> whether BatchNorm is synchronized across them.
SYNC_CASES = {"loop_2replicas_synced": True, "loop_2replicas_unsynced": False}
# Stage-1 levers: name -> (environment of the case's process, what it changes). The loop's code levers
# ("no_augmentation", "xla") are applied in loop_steps.
LEVERS = {
    "default": ({}, "the loop as python -m tfcxr.main runs it (TensorFlow's default threads, oneDNN on)"),
    "no_augmentation": ({}, "without the rotation + contrast jitter of augment.device_augmentation(1) in the step"),
    "onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)"),
    "inter_op_1": ({"TF_NUM_INTEROP_THREADS": "1"}, "inter-op threads 1 (intra-op: all cores)"),
    "xla": ({}, "--jit_compile: each replica's forward and backward compiled with XLA"),
    "keras_batchnorm": ({}, "Keras 3's BatchNormalization (moments + normalization as separate ops) instead of the "
                        "classifier's fused TorchBatchNormalization"),
}


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


def loop_steps(stage_number, batch, distribution, lever="default", sync_batchnorm=False):
    """A function (n) -> None running n train steps of the tfcxr loop (under a code `lever`)."""
    stage = STAGES[stage_number].task
    if lever == "keras_batchnorm":  # this case's process only
        models.classifier.torch_batchnorm = lambda backbone: backbone
    with distribution.scope():
        model = build_model(stage_number)
        for layer in loop.batchnorm_layers(model):  # as loop.build does
            layer.synchronized = sync_batchnorm
        config = RunConfig.from_flags(STAGES[stage_number].name, batch_size=SIZES[stage_number][1])
        optimizer = loop.make_optimizer(config)  # TorchAdam, as training builds it
        optimizer.build(model.trainable_variables)
        augmentation = stage.augmentation(config)
    if lever == "no_augmentation":
        augmentation = None
    train_step = loop.make_train_step(stage, model, optimizer, augmentation, distribution, jit_compile=lever == "xla")
    batches = iter(distribution.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors(batch).repeat()))

    def run(steps):
        for _ in range(steps):
            train_step(next(batches), tf.constant(0.0))["loss"].numpy()  # the loop reads the loss every step, too

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


# -- the PyTorch reference (torch imported only in its own case processes) --

def torch_reference():
    """tests/torch_reference.py: the PyTorch modules the parity tests hold tfcxr's stages equal to
    (torchvision's DenseNet121 with its names, the reproduction's autoencoder and AECNN)."""
    folder = str(Path(__file__).resolve().parents[1] / "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import torch_reference as reference

    return reference


def torch_densenet121(num_classes):
    """torchvision.models.densenet121(num_classes=...): growth 32, blocks (6, 12, 24, 16), bottleneck 4 x 32,
    64 initial features, compression 0.5, then ReLU, global average pooling and a linear head."""
    return torch_reference().DenseNet121(num_classes)


def torch_autoencoder():
    """The reproduction's autoencoder: [B,1,H,W] -> (latent [B,1,H/4,W/4], reconstruction [B,1,H,W])."""
    return torch_reference().Autoencoder()


def torch_steps(stage, precision, channels_last=True):
    """A function (n) -> the n losses of n PyTorch train steps: the stage's model, loss and Adam, as the
    paper's code trains (images are 3 channels for DenseNet121: the paper's loader converts to RGB)."""
    import torch

    reference = torch_reference()
    torch.manual_seed(0)
    size, batch_size, _ = SIZES[stage]
    labels = (torch.rand(batch_size, NUM_LABELS) < 0.2).float()
    images = torch.rand(batch_size, 3 if stage == 1 else 1, size, size)
    model = {1: lambda: reference.DenseNet121(NUM_LABELS), 2: reference.Autoencoder,
             3: lambda: reference.AECNN(NUM_LABELS)}[stage]()

    def loss_of(outputs):
        if stage == 1:
            return reference.bce(outputs.float(), labels)
        if stage == 2:
            return reference.mse(outputs[1].float(), images)
        latent, reconstruction, logits = outputs
        return reference.joint_loss(logits.float(), labels, reconstruction.float(), images)[0]

    if channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()

    def run(steps):
        losses = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                outputs = model(images)
            loss = loss_of(outputs)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    return run


def measure(stage, implementation, precision, steps=None, lever="default"):
    """images/s over `steps` steps after one untimed step, and this process's peak RSS."""
    steps = steps or SIZES[stage][2]
    if implementation.startswith("torch"):
        run = torch_steps(stage, precision, channels_last=implementation == "torch")
        return time_steps(run, stage, steps)
    keras.mixed_precision.set_global_policy(loop.POLICIES[precision])
    if implementation in SYNC_CASES:  # the CPU split into 2 devices before anything initialises them
        distribution = strategy.make_strategy("mirrored", cpu_replicas=2)
        run = loop_steps(stage, synthetic_batch(stage), distribution, lever, SYNC_CASES[implementation])
        return time_steps(run, stage, steps)
    batch = synthetic_batch(stage)
    distribution = {
        "loop": strategy.make_strategy("mirrored"), "fit": tf.distribute.get_strategy(),
    }.get(implementation) or tf.distribute.MirroredStrategy()
    if implementation.startswith("loop"):
        run = loop_steps(stage, batch, distribution, lever)
    else:
        run = fit_steps(stage, batch, distribution)
    return time_steps(run, stage, steps)


def cpu_seconds():
    """CPU time (user + system) of this process's threads so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_steps(run, stage, steps):
    """run(1) untimed (tracing), then run(steps) timed -> images/s, images per CPU-second (steadier than
    wall time on a shared machine, though threads spinning for work count too), first-step s, peak RSS."""
    start = time.perf_counter()
    run(1)  # traces
    first = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), cpu_seconds()
    run(steps)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    images = steps * SIZES[stage][1]
    return {"images_per_s": images / seconds, "images_per_cpu_s": images / cpu, "first_step_s": first,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_case(stage, implementation, precision, steps, lever="default"):
    """measure() in a fresh process; its JSON is the last line it prints."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **LEVERS[lever][0]}
    command = [sys.executable, __file__, f"--case={stage},{implementation},{precision},{lever}"]
    command += [f"--steps={steps}"] if steps else []
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode and lever != "default":  # a lever that does not run (e.g. an op XLA cannot compile)
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"images_per_s": float("nan"), "first_step_s": float("nan"), "peak_rss_mb": float("nan"), "error": error[:200]}
    if result.returncode:
        raise SystemExit(f"case {stage},{implementation},{precision} failed:\n{result.stderr[-2000:]}")
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


def best_of(runs):
    """The fastest run (a failed run, NaN, only when all failed)."""
    return max(runs, key=lambda case: -1.0 if case["images_per_s"] != case["images_per_s"] else case["images_per_s"])


def compare_pytorch(out, stages, steps=None, repeats=2, levers=False):
    """tfcxr's loop against the PyTorch reference per stage (1, 2) and precision, and the stage-1 levers
    when `levers` (right after stage 1 float32, which they compare with); rewrites `out` after each
    part, so a run cut short keeps what it measured. Without torch: says so, writes nothing."""
    if importlib.util.find_spec("torch") is None:
        print("torch is not installed (pip install -e '.[bench]'): the PyTorch reference is skipped")
        return 0
    import torch

    bfloat16 = machine.has_bfloat16()
    precisions = ["none", "bfloat16"] if bfloat16 else ["none"]
    implementations = {stage: ("loop", "torch", "torch_channels_first") for stage in (1, 2, 3)}
    load_start = os.getloadavg()[0]
    results, lever_lines = {}, []
    for stage, precision in [(stage, precision) for stage in map(int, stages) if stage in implementations
                             for precision in precisions]:
        runs = [{name: run_case(stage, name, precision, steps) for name in implementations[stage]}
                for _ in range(repeats)]
        results[stage, precision] = {name: best_of([run[name] for run in runs]) for name in implementations[stage]}
        case = results[stage, precision]
        print(f"stage {stage} {precision}: " + ", ".join(f"{name} {case[name]['images_per_s']:.2f}" for name in case), flush=True)
        write_comparison(out, results, lever_lines, torch, bfloat16, steps, repeats, load_start)
        if levers and (stage, precision) == (1, "none"):
            lever_lines = levers_table(case, steps, repeats)
            write_comparison(out, results, lever_lines, torch, bfloat16, steps, repeats, load_start)
    print(out.read_text() + f"\nwrote {out}")
    return 0


def write_comparison(out, results, lever_lines, torch, bfloat16, steps, repeats, load_start):
    """benchmarks/results/training_pytorch.md from what is measured so far (a "## Notes" part is kept)."""
    lines = [
        "# Training throughput: tfcxr against the PyTorch reference", "",
        f"`{' '.join(['python', 'benchmarks/bench_training.py', *sys.argv[1:]])}`", "",
        f"{machine.describe()}; TensorFlow {tf.__version__}, PyTorch {torch.__version__} ({torch.get_num_threads()} "
        f"intra-op threads); the fastest of {repeats} alternating runs per case, each in a process of its own; "
        f"timed steps after one untimed step (stage 1: {steps or SIZES[1][2]}, stage 2: {steps or SIZES[2][2]}, "
        f"stage 3: {steps or SIZES[3][2]}); "
        f"synthetic in-memory batches, random weights. Load average (1 min) at the start: {load_start:.1f}.",
        "bfloat16: " + ("measured (the CPU has native bfloat16)." if bfloat16 else
                        "not measured: this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16 in /proc/cpuinfo)."), "",
        "| stage | input | batch | precision | tfcxr loop img/s | PyTorch img/s channels_last / channels_first "
        "| tfcxr / PyTorch channels_last | tfcxr / faster PyTorch | img per CPU-s tfcxr / PyTorch channels_last / channels_first "
        "| tfcxr / faster PyTorch, per CPU-s | peak RSS MB tfcxr / PyTorch channels_last |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (stage, precision), case in results.items():
        size, batch, _ = SIZES[stage]
        tfcxr, last, first = (case[name]["images_per_s"] for name in ("loop", "torch", "torch_channels_first"))
        cpu = [case[name]["images_per_cpu_s"] for name in ("loop", "torch", "torch_channels_first")]
        lines.append(f"| {stage} | {size}x{size} | {batch} | {precision} | {tfcxr:.2f} | {last:.2f} / {first:.2f} "
                     f"| {tfcxr / last:.2f} | {tfcxr / max(last, first):.2f} | {' / '.join(f'{c:.2f}' for c in cpu)} "
                     f"| {cpu[0] / max(cpu[1:]):.2f} | {case['loop']['peak_rss_mb']:.0f} / {case['torch']['peak_rss_mb']:.0f} |")
    lines += lever_lines
    lines.append(f"\nLoad average (1 min) when written: {os.getloadavg()[0]:.1f} (the machine is shared with other work).")
    notes = out.read_text().partition(NOTES)[2] if out.exists() else ""  # hand-written, kept across runs
    write_text(out, "\n".join(lines) + "\n" + (NOTES + notes if notes else ""))


def levers_table(reference, steps, repeats):
    """The stage-1 float32 step under each lever against the default loop (`reference["loop"]`, measured
    just before) and the faster PyTorch float32, by wall time and by CPU time -> Markdown lines."""
    levers = [lever for lever in LEVERS if lever != "default"]
    runs = [{lever: run_case(1, "loop", "none", steps, lever) for lever in levers} for _ in range(repeats)]
    best = {"default": reference["loop"], **{lever: best_of([run[lever] for run in runs]) for lever in levers}}
    torch_names = ("torch", "torch_channels_first")
    torch_rate = {key: max(reference[name][key] for name in torch_names) for key in ("images_per_s", "images_per_cpu_s")}
    lines = ["", "Stage 1 (DenseNet121, 224, batch 8, float32): the tfcxr step under each lever, each in a process of its "
             "own after the table above, against the default step (its loop row) and the faster PyTorch float32:", "",
             "| lever | what changes | img/s | x default loop | x PyTorch | img per CPU-s | x default, per CPU-s | x PyTorch, per CPU-s |",
             "|---|---|---|---|---|---|---|---|"]
    for lever, (_, what) in LEVERS.items():
        case = best[lever]
        if "error" in case:
            lines.append(f"| {lever} | {what} | fails: {case['error']} | - | - | - | - | - |")
            continue
        cells = [f"{case[key]:.2f} | {case[key] / best['default'][key]:.2f} | {case[key] / torch_rate[key]:.2f}"
                 for key in ("images_per_s", "images_per_cpu_s")]
        lines.append(f"| {lever} | {what} | {cells[0]} | {cells[1]} |")
    return lines


def compare_sync_batchnorm(out, steps=None, repeats=2):
    """Stage 1's step on 2 CPU replicas with and without synchronized BatchNorm, alternating runs."""
    load_start = os.getloadavg()[0]
    runs = [{name: run_case(1, name, "none", steps) for name in SYNC_CASES} for _ in range(repeats)]
    best = {name: best_of([run[name] for run in runs]) for name in SYNC_CASES}
    synced, unsynced = (best[name]["images_per_s"] for name in SYNC_CASES)
    command = " ".join(["python", "benchmarks/bench_training.py", *sys.argv[1:]])
    rows = "\n".join(f"| {name} | {case['images_per_s']:.2f} | {case['images_per_cpu_s']:.2f} | {case['peak_rss_mb']:.0f} |"
                     for name, case in best.items())
    write_text(out, f"# Synchronized BatchNorm: its cost on 2 CPU replicas\n\n`{command}`\n\n{machine.describe()}; "
               f"stage 1 (DenseNet121, {SIZES[1][0]} px, global batch {SIZES[1][1]}, 4 per replica), float32, the "
               f"tfcxr loop under MirroredStrategy over 2 logical CPU devices; fastest of {repeats} alternating runs. "
               f"Load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}.\n\n"
               f"| case | images/s | images per CPU-s | peak RSS MB |\n|---|---|---|---|\n{rows}\n\n"
               f"synchronized / per-replica throughput: {synced / unsynced:.2f}\n")
    print(f"synchronized {synced:.2f} img/s, per replica {unsynced:.2f} img/s ({synced / unsynced:.2f}x); wrote {out}")


def main(argv):
    del argv
    if FLAGS.case:
        stage, implementation, precision, lever = FLAGS.case.split(",")
        print(json.dumps(measure(int(stage), implementation, precision, FLAGS.steps, lever)))
        sys.stdout.flush()
        os._exit(0)  # MirroredStrategy processes can hang at exit
    if FLAGS.sync_batchnorm:
        return compare_sync_batchnorm(Path(FLAGS.out or Path(__file__).parent / "results" / "training_sync_batchnorm.md"),
                                      FLAGS.steps, FLAGS.repeats)
    if FLAGS.pytorch:
        out = Path(FLAGS.out or Path(__file__).parent / "results" / "training_pytorch.md")
        return compare_pytorch(out, FLAGS.stages, FLAGS.steps, FLAGS.repeats, FLAGS.levers)

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

    out = Path(FLAGS.out or Path(__file__).parent / "results" / "training.md")
    command = " ".join(["python", "benchmarks/bench_training.py", *sys.argv[1:]])
    steps = FLAGS.steps or ", ".join(f"stage {stage}: {SIZES[stage][2]}" for stage in SIZES)
    steps = f"{steps}; the fastest of {FLAGS.repeats} alternating runs"
    notes = out.read_text().partition(NOTES)[2] if out.exists() else ""  # hand-written, kept across runs
    write_text(out, f"# Training throughput\n\n`{command}`\n\n"
               f"{machine.describe()}; "
               f"TensorFlow {tf.__version__}, Keras {keras.__version__}; timed steps per case ({steps}) "
               f"after one untimed (tracing) step; synthetic in-memory batches; DenseNet121 weights=None. "
               f"Load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}.\n\n"
               f"{table(results)}\n" + (NOTES + notes if notes else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
