"""Ranks residual-codec variants on real radiographs: capacity, receptive field, patch size, learning rate, length.

    .venv/bin/python benchmarks/bench_codec_ablation.py --variants=base,dec8,... [--steps=1500]
    .venv/bin/python benchmarks/bench_codec_ablation.py --report

Each variant trains through `python -m tfcxr.main --flagfile=configs/stage2_residual.cfg` plus its
flags on benchmarks/real_cxr14.py's 43 training radiographs (validation: its 4, whole 1024 originals),
for the same number of optimizer steps, and its last weights are scored on the 17 held-out
radiographs (official test list, patient-disjoint): PSNR of whole 1024 images through the 8-bit
latent against the 8-bit bicubic thumbnail (tfcxr.evaluate.reconstruction.measure). Short runs only
rank the variants (the winner then trains long). The decode time per 1024 image on this CPU is
measured for each (tfcxr.export.codec.reconstruct, median of 5 after a warm-up). Results go to
workspace/runs/codec_ablation/<variant>.json; --report writes benchmarks/results/codec_ablation.md.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import real_cxr14  # noqa: E402

from tfcxr import models  # noqa: E402
from tfcxr.evaluate import reconstruction  # noqa: E402
from tfcxr.export import codec  # noqa: E402
from tfcxr.models import DECODER, ENCODER, load_model  # noqa: E402
from tfcxr.storage import write_json, write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "workspace" / "runs" / "codec_ablation"
RESULTS = ROOT / "benchmarks" / "results" / "codec_ablation.md"
SHIPPED_RUN = "workspace/runs/codec_final/enc4_45k_cosine"  # the 128-patch flagfile at 45,000 steps, on the same data
EARLIER_RUN = "workspace/runs/codec_final/enc4_30k_cosine"  # the same at 30,000 steps (20 x 1,500)


# The flagfile's training before it moved to 64 patches (benchmarks/results/codec_ablation.md's cos_ rows chose them):
# what every variant but the shipped one trains with (their own flags after it override it).
PATCH128 = ["--image_size=128", "--batch_size=32", "--patches_per_image=16", "--learning_rate=1e-3"]


def fine_tune(run, *flags):
    """A variant's flags that fine-tune `run`'s best.keras (with its own one decode, which the flagfile's
    --codec_decode_flips=4 would contradict)."""
    return [*PATCH128, f"--init_codec={run}/best.keras", "--codec_decode_flips=1", *flags]


# name: flags after the flagfile (its budget, --epochs x --steps_per_epoch, replaced by --steps).
VARIANTS = {  # every capacity flag the variant differs in from configs/stage2_residual.cfg (width 32, encoder 4, decoder 4)
    "base": [*PATCH128, "--codec_encoder_depth=2"],  # the codec's defaults: width 32, encoder depth 2, decoder depth 4
    "lr3e-3": [*PATCH128, "--codec_encoder_depth=2", "--learning_rate=3e-3"],
    "dec8": [*PATCH128, "--codec_encoder_depth=2", "--codec_decoder_depth=8"],
    "dec8_skips": [*PATCH128, "--codec_encoder_depth=2", "--codec_decoder_depth=8", "--codec_skips=1"],
    "enc4": PATCH128,  # configs/stage2_residual.cfg's capacity
    "enc6": [*PATCH128, "--codec_encoder_depth=6"],
    "enc6_skips": [*PATCH128, "--codec_encoder_depth=6", "--codec_skips=1"],
    "w48_enc4_dec6": [*PATCH128, "--codec_width=48", "--codec_decoder_depth=6"],
    "patch256_b8": [*PATCH128, "--codec_encoder_depth=2", "--image_size=256", "--batch_size=8"],
    "enc4_patch256_b8": [*PATCH128, "--image_size=256", "--batch_size=8"],
    "w48_enc6_dec6": [*PATCH128, "--codec_width=48", "--codec_encoder_depth=6", "--codec_decoder_depth=6"],
    "w64_enc6_dec6": [*PATCH128, "--codec_width=64", "--codec_encoder_depth=6", "--codec_decoder_depth=6"],
    # 2,000-step probes under the flagfile's cosine schedule and 4-flip decode (--steps=2000): the 128-patch training,
    # and one change each; the last, both changes, is what the flagfile now trains.
    "cos_p128": PATCH128,
    "cos_p256_b8": [*PATCH128, "--image_size=256", "--batch_size=8"],  # the same pixels a step in larger patches
    "cos_lr2e-3": [*PATCH128, "--learning_rate=2e-3"],
    "cos_lr4e-3": [*PATCH128, "--learning_rate=4e-3"],
    "cos_p64_b128": [*PATCH128, "--image_size=64", "--batch_size=128"],  # the same pixels a step in smaller patches
    "cos_p64_b128_k64_lr2e-3": [],  # configs/stage2_residual.cfg: 64 patches, batch 128, 64 a decode, Adam 2e-3
    # Fine-tunes of the 30,000-step run at Adam 1e-4 with the latent's rate in the loss (--latent_rate_weight): what its
    # bytes cost in dB (their rates: benchmarks/bench_codec_rate.py).
    "ft30k_rate1e-5": fine_tune(EARLIER_RUN, "--learning_rate=1e-4", "--latent_rate_weight=1e-5"),
    "ft30k_rate3e-5": fine_tune(EARLIER_RUN, "--learning_rate=1e-4", "--latent_rate_weight=3e-5"),
    # Fine-tunes of the 30,000-step run at Adam 1e-4: the same pixels a step as 128 patches or as larger views.
    "ft30k_p128": fine_tune(EARLIER_RUN, "--learning_rate=1e-4"),
    "ft30k_p512_b2": fine_tune(EARLIER_RUN, "--learning_rate=1e-4", "--image_size=512", "--batch_size=2"),
    # A second cosine cycle from the 128-patch 45,000-step run (--steps=15000 --epochs=5): does it still gain from steps?
    "ft45k_restart3e-4": fine_tune(SHIPPED_RUN, "--learning_rate=3e-4"),
    # The rate cap on the 128-patch 45,000-step run: 0.97 of the thumbnail's rate (--steps=4500 --epochs=3).
    "ft45k_rate_budget": fine_tune(SHIPPED_RUN, "--learning_rate=1e-4", "--latent_rate_weight=1e-4",
                                   "--latent_rate_budget=0.97"),
}

flags.DEFINE_list("variants", [], f"of {', '.join(VARIANTS)}")
flags.DEFINE_integer("steps", 1500, "optimizer steps of each variant")
flags.DEFINE_integer("epochs", 5, "epochs the steps are cut into (validation, plateau scheduler)")
flags.DEFINE_bool("report", False, "write benchmarks/results/codec_ablation.md from the variants run")
flags.DEFINE_list("stopped", [], "variants stopped early: score their last checkpoint at the steps they reached")
flags.DEFINE_list("rescore_flips", [], "scored variants (or runs linked into workspace/runs/codec_ablation) to score "
                  "again with their weights decoded over --decode_flips flips (<name>_flips<N>.json)")
flags.DEFINE_integer("decode_flips", 4, "--rescore_flips: the decoder's flips (--codec_decode_flips: 1, 2 or 4)")
FLAGS = flags.FLAGS


def last_of_each(flag_list):
    """flag_list with each --name kept once, at its last value (what absl reads), in first-seen order."""
    values = {}
    for flag in flag_list:
        values[flag.split("=", 1)[0]] = flag
    return list(values.values())


def command_of(name, steps, epochs):
    return [sys.executable, "-m", "tfcxr.main", "--flagfile=configs/stage2_residual.cfg", *last_of_each(VARIANTS[name]),
            f"--records_dir={real_cxr14.RECORDS_DIR.relative_to(ROOT)}",
            f"--model_dir={(RUNS_DIR / name).relative_to(ROOT)}", f"--epochs={epochs}",
            f"--steps_per_epoch={steps // epochs}", "--log_every=100"]


def last_weights(model_dir):
    """The run's latest weights (its last checkpoint), as a model."""
    from tfcxr.config import RunConfig
    from tfcxr.stages import STAGES

    config = RunConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    model = STAGES["autoencoder"].task.build_model(config, ())
    tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(model_dir / "checkpoints")).expect_partial()
    return model


def decode_seconds(model, repeats=5):
    """Median seconds of tfcxr.export.codec.reconstruct for one 1024 latent on this CPU."""
    latent = codec.compress(model.get_layer(ENCODER), tf.zeros([1024, 1024, 1], tf.uint8) + 128)
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        codec.reconstruct(model.get_layer(DECODER), latent).numpy()
        if index:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(name, steps, epochs):
    model_dir = RUNS_DIR / name
    command = command_of(name, steps, epochs)
    start, load = time.time(), os.getloadavg()
    with open(RUNS_DIR / f"{name}.log", "w") as log:
        subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    results = {"variant": name, "command": " ".join(["python -m tfcxr.main", *command[3:]]), "steps": steps,
               "train_wall_s": time.time() - start, "loadavg_start": load, "loadavg_end": os.getloadavg()}
    score(name, results)


def stopped(name, steps, epochs):
    """A variant stopped by hand after some epochs: scored at the steps its last checkpoint holds."""
    command = command_of(name, steps, epochs)
    epochs_done = len((RUNS_DIR / name / "log.csv").read_text().strip().splitlines()) - 1
    results = {"variant": name, "command": " ".join(["python -m tfcxr.main", *command[3:]]),
               "steps": epochs_done * (steps // epochs), "stopped_of": steps, "train_wall_s": None,
               "loadavg_start": None, "loadavg_end": None}
    score(name, results)


def with_decode_flips(model, flips):
    """An autoencoder of `model`'s codec with decode_flips=flips, holding `model`'s weights (the flips add none)."""
    codec = models.codec_of(model)
    flipped = models.build_autoencoder(*models.build_codec(dataclasses.replace(
        codec, params={**codec.params, "decode_flips": flips})))
    flipped.set_weights(model.get_weights())
    return flipped


def rescore_flips(name, flips):
    """<name>.json's run scored again, its weights decoded over `flips` flips -> <name>_flips<flips>.json."""
    results = json.loads((RUNS_DIR / f"{name}.json").read_text())
    results.update(variant=f"{name}_flips{flips}", command=f"the weights of {name}, decoded with "
                   f"--codec_decode_flips={flips} (training is the same: the flips act at inference only)")
    score(name, results, transform=lambda model: with_decode_flips(model, flips), out=f"{name}_flips{flips}")


def score(name, results, transform=lambda model: model, out=None):
    """Held-out scores of the run's last weights and best.keras, parameters and decode time -> <out or name>.json."""
    model_dir = RUNS_DIR / name
    for weights, model in (("last", last_weights(model_dir)), ("best.keras", load_model(model_dir / "best.keras"))):
        model = transform(model)
        methods, count, _ = reconstruction.measure(model.get_layer(ENCODER), model.get_layer(DECODER),
                                                   real_cxr14.held_out_dataset(real_cxr14.RECORDS_DIR, 1))
        results[weights] = {"psnr_8bit": methods["autoencoder_8bit"]["psnr"], "ssim_8bit": methods["autoencoder_8bit"]["ssim"],
                            "gain_db": methods["autoencoder_8bit"]["psnr"] - methods["bicubic_8bit"]["psnr"]}
        results["images"], results["bicubic_8bit_psnr"] = count, methods["bicubic_8bit"]["psnr"]
    results["params"] = int(model.get_layer(ENCODER).count_params() + model.get_layer(DECODER).count_params())
    results["decode_s"] = decode_seconds(model)
    write_json(RUNS_DIR / f"{out or name}.json", results)
    print(json.dumps(results), flush=True)


def report():
    rows = [json.loads(path.read_text()) for path in sorted(RUNS_DIR.glob("*.json"))]
    cpu = machine.cpu_model()
    lines = ["# Residual codec: ablation on real radiographs", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {cpu} ({os.cpu_count()} cores, shared with other work: "
             "load averages per row). `.venv/bin/python benchmarks/bench_codec_ablation.py --variants=NAME "
             "--steps=N`; each row's own command below.", "",
             f"Data: 43 training radiographs (random patches, flips), 4 validation originals (whole 1024), "
             f"{rows[0]['images'] if rows else 17} held-out radiographs (official test list, patient-disjoint) scored "
             "whole at 1024 through the 8-bit latent; gain = PSNR minus the 8-bit bicubic 256 thumbnail's "
             f"({rows[0]['bicubic_8bit_psnr']:.2f} dB). Short runs rank variants; they are not converged.", "",
             "| variant | parameters | steps | train wall min | load (start -> end) | gain last (dB) | gain best.keras (dB) "
             "| SSIM 8-bit | decode s / 1024 image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["steps"], -r["last"]["gain_db"])):
        steps = f"{r['steps']:,}" + (f" (stopped, of {r['stopped_of']:,})" if "stopped_of" in r else "")
        wall = "-" if r["train_wall_s"] is None else f"{r['train_wall_s'] / 60:.1f}"
        load = "-" if r["loadavg_start"] is None else f"{r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}"
        lines.append(f"| {r['variant']} | {r['params']:,} | {steps} | {wall} | {load} | {r['last']['gain_db']:+.2f} | "
                     f"{r['best.keras']['gain_db']:+.2f} | {r['last']['ssim_8bit']:.4f} | {r['decode_s']:.3f} |")
    lines += ["", "Notes: the decode time is one 1024 latent through the decoder under the load of the moment "
              "(rows of one architecture share their decoder's cost: their spread is load); a row marked stopped was "
              "ended by hand and scored at its last checkpoint; variants in VARIANTS without a row were not run. "
              "Rows of 2,000 steps ran on a quieter machine than rows of 1,500 (load column). The p64_45k row is "
              "configs/stage2_residual.cfg as shipped (64 patches, batch 128, 64 per decoded original, Adam 2e-3 cosine, "
              "4-flip decode; p64_45k_flips1: its weights decoded once); the cos_ rows are 2,000-step probes of it from "
              "the flagfile of 128 patches, batch 32, Adam 1e-3 (cos_p128) with one change each, which chose it. "
              "enc4_45k_cosine is that earlier flagfile at 45,000 steps (enc4_30k_cosine: at 20 x 1,500 steps; "
              "enc4_30k: that with the plateau scheduler); ft30k rows fine-tune enc4_30k_cosine, ft45k rows "
              "enc4_45k_cosine; a _flips4 row scores its run's weights decoded over 4 flips (--codec_decode_flips=4: "
              "inference only). Rows other than p64_45k ran with the flagfile of their day (128 patches, batch 32, "
              "Adam 1e-3; one decode and 1,500 steps an epoch where their command names none; the cos_ rows' flagfile "
              "decoded over 4 flips).",
              "", "Commands:", ""] + [f"- {r['variant']}: `{r['command']}`" for r in rows]
    write_text(RESULTS, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv):
    del argv
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    real_cxr14.ensure_records(real_cxr14.RECORDS_DIR)
    for name in FLAGS.variants:
        run(name, FLAGS.steps, FLAGS.epochs)
    for name in FLAGS.stopped:
        stopped(name, FLAGS.steps, FLAGS.epochs)
    for name in FLAGS.rescore_flips:
        rescore_flips(name, FLAGS.decode_flips)
    if FLAGS.report:
        report()


if __name__ == "__main__":
    app.run(main)
