"""Does stage 3 keep the codec? A joint AECNN run from a stage-2 codec, its codec scored before and after.

    .venv/bin/python benchmarks/bench_stage3_codec.py --codec=workspace/runs/residual_codec/best.keras
        [--steps=200] [--batch_size=4] [--classification_weight=0.9]

Stage 3 is tfcxr.train.tasks.AECNN run by the training loop (tfcxr.train.loop.train) on the real
radiographs of benchmarks/real_cxr14.py: random 896 crops of the 1024 originals, 5-degree rotations,
flips, L = w * BCE + (1 - w) * MSE (the paper's w = 0.9), Adam 1e-4, from the stage-2 codec. The
classifier is a stand-in for DenseNet121, which is too slow to train at 896 on this CPU: two strided
convolutions, pooling and 14 logits, untrained (a classifier that learns from scratch pulls on the
latent at least as hard as a trained one). Before and after, the codec alone is scored on the 17
held-out radiographs, whole 1024 images through the 8-bit latent (tfcxr.evaluate.reconstruction.measure).
Writes workspace/runs/stage3_codec/<name>.json and prints it.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import keras
from absl import app, flags
from keras import layers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import real_cxr14  # noqa: E402

from tfcxr import models  # noqa: E402
from tfcxr.config import CodecConfig, RunConfig  # noqa: E402
from tfcxr.constants import NUM_LABELS  # noqa: E402
from tfcxr.evaluate import reconstruction  # noqa: E402
from tfcxr.models import DECODER, ENCODER, load_model  # noqa: E402
from tfcxr.storage import write_json, write_text  # noqa: E402
from tfcxr.train import loop, strategy, tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "workspace" / "runs" / "stage3_codec"

flags.DEFINE_string("codec", None, "the stage-2 .keras the run starts from")
flags.DEFINE_bool("report", False, "write benchmarks/results/codec_stage3.md from the runs so far instead")
flags.DEFINE_string("name", "stage3", "the run's folder under workspace/runs/stage3_codec")
flags.DEFINE_integer("steps", 200, "optimizer steps")
flags.DEFINE_integer("batch_size", 4, "896 crops per step")
flags.DEFINE_float("classification_weight", 0.9, "--classification_weight: w in w * BCE + (1 - w) * MSE (the paper's 0.9)")
FLAGS = flags.FLAGS


def stand_in_classifier():
    """DenseNet121's stand-in: [B,h,w,3] -> 14 logits, untrained, seeded."""
    keras.utils.set_random_seed(0)
    image = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(image)  # [B,h/2,w/2,16]
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)  # [B,h/4,w/4,32]
    x = layers.GlobalAveragePooling2D(name="pool")(x)  # [B,32]
    return keras.Model(image, layers.Dense(NUM_LABELS, dtype="float32", name="logits")(x), name="classifier")


def score(model):
    methods, count, _ = reconstruction.measure(model.get_layer(ENCODER), model.get_layer(DECODER),
                                               real_cxr14.held_out_dataset(real_cxr14.RECORDS_DIR, 1))
    return {"images": count, "psnr_8bit": methods["autoencoder_8bit"]["psnr"],
            "bicubic_8bit": methods["bicubic_8bit"]["psnr"], "ssim_8bit": methods["autoencoder_8bit"]["ssim"]}


def report():
    """benchmarks/results/codec_stage3.md from workspace/runs/stage3_codec/*.json (runs of 50 steps or more)."""
    runs = [json.loads(path.read_text()) for path in sorted(RUNS_DIR.glob("*.json"))]
    runs = sorted((run for run in runs if run["steps"] >= 50), key=lambda run: (run["codec"], -run["classification_weight"]))
    cpu = machine.cpu_model()
    lines = ["# Stage 3 and the codec's PSNR", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {cpu} ({os.cpu_count()} cores, shared with other work: load "
             "averages per row). `.venv/bin/python benchmarks/bench_stage3_codec.py --codec=CODEC "
             "--classification_weight=W --steps=200 --batch_size=4` (this file: `--report`).", "",
             "Stage 3's task (random 896 crops of the 1024 originals, 5-degree rotations, flips, Adam 1e-4) on "
             "the 43 training radiographs of benchmarks/real_cxr14.py, from a stage-2 residual codec and a stand-in "
             "classifier (two strided convolutions, pooling, 14 logits, untrained: DenseNet121 at 896 is too slow to "
             "train on this CPU). The codec alone is scored before and after on the 17 held-out radiographs, whole "
             "1024 images through the 8-bit latent. Loss: w * BCE + (1 - w) * MSE (--classification_weight; the "
             "paper's w = 0.9).", "",
             "| stage-2 codec | w | steps x batch | train wall min | load (start -> end) | PSNR before (dB) "
             "| PSNR after (dB) | change | train BCE, first -> last epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        log = (RUNS_DIR / Path(run["name"]) / "log.csv") if "name" in run else None
        bce = "-"
        if log and log.is_file():
            rows = log.read_text().strip().splitlines()
            column = rows[0].split(",").index("bce")
            bce = f"{float(rows[1].split(',')[column]):.3f} -> {float(rows[-1].split(',')[column]):.3f}"
        lines.append(f"| {run['codec']} | {run['classification_weight']:g} | {run['steps']} x {run['batch_size']} | "
                     f"{run['train_wall_s'] / 60:.1f} | {run['loadavg_start'][0]:.1f} -> {run['loadavg_end'][0]:.1f} | "
                     f"{run['stage2']['psnr_8bit']:.2f} | {run['stage3_last']['psnr_8bit']:.2f} | "
                     f"{run['change_db']:+.2f} dB | {bce} |")
    write_text(ROOT / "benchmarks" / "results" / "codec_stage3.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv):
    del argv
    if FLAGS.report:
        return report()
    before = score(load_model(FLAGS.codec))
    codec = CodecConfig.from_dict(models.read_spec(FLAGS.codec)["codec"])
    task = dataclasses.replace(
        tasks.AECNN, requires=("init.codec",),
        build_model=lambda config, labels: models.build_aecnn(*models.build_codec(config.model.codec),
                                                             stand_in_classifier(), label_names=labels))
    model_dir = RUNS_DIR / FLAGS.name
    config = RunConfig.from_flags(
        "aecnn", records_dir=str(real_cxr14.RECORDS_DIR), model_dir=str(model_dir), init_codec=FLAGS.codec,
        batch_size=FLAGS.batch_size, classification_weight=FLAGS.classification_weight, epochs=4, steps_per_epoch=FLAGS.steps // 4, log_every=25,
        strategy="one_device").replace(**{"model.codec": codec})
    start, load = time.time(), os.getloadavg()
    model = loop.train(task, config, strategy.make_strategy("one_device"))
    results = {"name": FLAGS.name, "codec": FLAGS.codec, "steps": FLAGS.steps, "batch_size": FLAGS.batch_size,
               "classification_weight": FLAGS.classification_weight, "train_wall_s": time.time() - start,
               "loadavg_start": load, "loadavg_end": os.getloadavg(), "stage2": before, "stage3_last": score(model),
               "command": " ".join(["benchmarks/bench_stage3_codec.py", *sys.argv[1:]])}
    results["change_db"] = results["stage3_last"]["psnr_8bit"] - before["psnr_8bit"]
    write_json(RUNS_DIR / f"{FLAGS.name}.json", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
