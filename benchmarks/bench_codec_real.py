"""The residual codec on real radiographs, beside bicubic and the paper's autoencoder.

    .venv/bin/python benchmarks/bench_codec_real.py [--variants=residual,paper,...] [--steps_per_epoch=250]
        [--phases=train,score,rate,cost,report]

Quality: each variant trains through our own stage-2 path (python -m tfcxr.main --stage=2, the
flagfiles configs/stage2_residual.cfg / configs/stage2.cfg) on the 43 training radiographs of
benchmarks/real_cxr14.py (random 128 patches of the 1024 originals, batch 32), in chunks of
epochs: after each chunk its best.keras is kept as a snapshot, so one run gives PSNR against
steps. Every snapshot is scored on the 17 held-out radiographs (whole 1024 images, patient-
disjoint from training and validation) by real_cxr14.score_autoencoder (tfcxr.evaluate.
reconstruction: float and 8-bit latent, bicubic / bilinear on the same images).

Rate: bytes per held-out image against PSNR, for the 8-bit latent PNG of both codecs
(tools/cxr_codec.py's encoding; the reconstruction rounded to 8 bits), the bicubic 256 thumbnail
as PNG, and the whole 1024 image as JPEG and WebP (Pillow) at several qualities.

Cost: seconds per 1024 image for compress and reconstruct on this CPU (tfcxr.export.codec, what
the codec tool runs), median of repeats. Writes benchmarks/results/codec.md, codec.json,
codec_rate.png and codec_steps.png. Training and scoring resume: a finished chunk is not trained
again and a scored snapshot not scored again (workspace/runs/codec_real/).
"""

import csv
import dataclasses
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine as host  # noqa: E402  (benchmarks/machine.py: the CPU recorded with every result)
import real_cxr14  # noqa: E402  (benchmarks/real_cxr14.py: the shared real-data module)

from tfcxr.evaluate import reconstruction  # noqa: E402
from tfcxr.export import codec  # noqa: E402
from tfcxr.storage import write_bytes, write_json, write_text  # noqa: E402
from tfcxr.models import DECODER, ENCODER, load_model  # noqa: E402
from tfcxr.models.compression import to_uint8  # noqa: E402
from tfcxr.config import RunConfig  # noqa: E402
from tfcxr.stages import STAGES  # noqa: E402
from tfcxr.train import callbacks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "workspace" / "runs" / "codec_real"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32
# name: (flags after --stage=2, epoch chunks: a snapshot after each). The paper's autoencoder
# trains at 2e-3 (its paper rate 1e-4 is far too slow for this budget of steps).
VARIANTS = {
    "residual": (["--flagfile=configs/stage2_residual.cfg"], [4, 10, 20]),
    "paper": (["--flagfile=configs/stage2.cfg", "--learning_rate=2e-3"], [4, 20]),
    "residual_w16_d3": (["--flagfile=configs/stage2_residual.cfg", "--residual_width=16",
                         "--residual_decoder_depth=3"], [4, 20]),
    "residual_w64_d4": (["--flagfile=configs/stage2_residual.cfg", "--residual_width=64"], [4]),
}
JPEG_QUALITIES = (10, 30, 50, 70, 90, 95)
WEBP_QUALITIES = (10, 30, 50, 70, 90)

flags.DEFINE_list("variants", list(VARIANTS), f"of {', '.join(VARIANTS)}")
flags.DEFINE_integer("steps_per_epoch", 250, "train steps (batch 32) per epoch")
flags.DEFINE_list("phases", ["train", "score", "rate", "cost", "report"], "of train, last, score, rate, cost, report")
FLAGS = flags.FLAGS


def machine():
    """CPU model, AVX-512 or not, cores, load average: recorded with every result."""
    return {"cpu": host.cpu_model(), "avx512f": host.has_avx512(), "cores": os.cpu_count(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def snapshot_path(variant, epochs):
    return RUNS_DIR / f"{variant}_snapshots" / f"epoch_{epochs:04d}.keras"


def timings_path(variant):
    return RUNS_DIR / f"{variant}.timings.json"


def train(variant, records_dir, steps_per_epoch):
    """Runs each chunk of `variant` (a resumed run continues to --epochs) and snapshots best.keras.
    Each chunk's wall and CPU seconds and load average go to <variant>.timings.json (one file per
    variant: variants may train in parallel processes)."""
    variant_flags, chunks = VARIANTS[variant]
    model_dir = RUNS_DIR / variant
    path = timings_path(variant)
    timings = json.loads(path.read_text()) if path.is_file() else {}
    for epochs in chunks:
        target = snapshot_path(variant, epochs)
        if target.is_file():
            continue
        command = [sys.executable, "-m", "tfcxr.main", "--stage=2", *variant_flags, f"--records_dir={records_dir}",
                   f"--model_dir={model_dir}", f"--epochs={epochs}", f"--steps_per_epoch={steps_per_epoch}",
                   f"--batch_size={BATCH}", "--val_steps=1", "--log_every=50"]
        print("$", " ".join(command), flush=True)
        start, cpu, load = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN), machine()["loadavg"]
        with open(RUNS_DIR / f"{variant}.log", "a") as log:
            subprocess.run(command, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        timings[str(epochs)] = {"wall_s": time.time() - start, "loadavg_start": load, "loadavg_end": machine()["loadavg"],
                                "cpu_s": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime}
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, (model_dir / "best.keras").read_bytes())
        write_json(path, timings)
        print(f"{variant}: {epochs} epochs in {timings[str(epochs)]['wall_s']:.0f} s", flush=True)


def save_last(variant):
    """The variant's latest training weights (its last checkpoint, not best.keras) as <variant>_snapshots/
    last.keras. best.keras is picked on 4 validation images resized to 128: a poor judge of whole 1024
    images, so the quality table shows both. -> the epochs trained (read from the checkpoint)."""
    model_dir = RUNS_DIR / variant
    config = RunConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
    model = STAGES[2].task.build_model(config, ())
    progress = tf.Variable("")
    tf.train.Checkpoint(model=model, progress=progress).restore(
        tf.train.latest_checkpoint(model_dir / "checkpoints")).expect_partial()
    epochs = json.loads(progress.numpy())["epoch"]
    target = RUNS_DIR / f"{variant}_snapshots" / "last.keras"
    callbacks.save_model_atomic(model, target)
    write_json(target.with_suffix(".json"), {"epochs": epochs})
    return epochs


def parameters(variant):
    """Encoder + decoder parameters of the variant's last snapshot."""
    model = load_model(next(path for epochs in VARIANTS[variant][1] if (path := snapshot_path(variant, epochs)).is_file()))
    return int(model.get_layer(ENCODER).count_params() + model.get_layer(DECODER).count_params())


def score_file(path, records_dir):
    """Held-out scores of one .keras file, cached next to it."""
    cache = path.with_suffix(".scores.json")
    if not cache.is_file():
        write_json(cache, real_cxr14.score_autoencoder(path, records_dir))
    return json.loads(cache.read_text())


def score(variant, records_dir):
    """{epochs: held-out scores} of every best.keras snapshot of `variant`, and "last": the latest weights."""
    scores = {epochs: score_file(snapshot_path(variant, epochs), records_dir)
              for epochs in VARIANTS[variant][1] if snapshot_path(variant, epochs).is_file()}
    last = RUNS_DIR / f"{variant}_snapshots" / "last.keras"
    if last.is_file():
        scores["last"] = {**score_file(last, records_dir), **json.loads(last.with_suffix(".json").read_text())}
    return scores


def psnr(reference, image):
    """uint8 [H,W] pair -> PSNR (dB), max_val 255 (the same as tf.image.psnr on [0, 1] images)."""
    mse = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def pillow_round_trip(pixels, fmt, quality):
    """uint8 [H,W] -> (bytes written by Pillow, decoded uint8 [H,W])."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=quality)
    data = buffer.getvalue()
    return len(data), np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def codec_round_trip(model, pixels):
    """A stage-2 best.keras, uint8 [H,W] -> (latent PNG bytes, 8-bit reconstruction [H,W]): tools/cxr_codec.py's path."""
    latent = codec.compress(model.get_layer(ENCODER), pixels[..., None])
    return len(codec.encode_png(latent)), codec.reconstruct(model.get_layer(DECODER), latent).numpy()[..., 0]


def bicubic_round_trip(pixels):
    """uint8 [H,W] -> (256 thumbnail PNG bytes, 8-bit bicubic upsizing [H,W]), as the evaluation's bicubic_8bit."""
    image = tf.constant(pixels[None, ..., None], tf.float32) / 255.0
    size = tf.shape(image)[1:3]
    small = to_uint8(tf.image.resize(image, size // 4, "bicubic", antialias=True))  # [1,h,w,1]
    back = tf.image.resize(tf.cast(small, tf.float32) / 255.0, size, "bicubic")
    return len(codec.encode_png(small[0])), to_uint8(back).numpy()[0, ..., 0]


def black_subpixels(images):
    """How many of the 16 positions (i, j) of the 4x4 blocks are 0 in > 99% of the blocks of all images:
    a decoder channel stuck below its ClippedReLU (a dead PixelShuffle sub-pixel) shows here."""
    blocks = np.concatenate([image.reshape(image.shape[0] // 4, 4, image.shape[1] // 4, 4) for image in images])
    return int(((blocks == 0).mean(axis=(0, 2)) > 0.99).sum())


def rate(records_dir, codecs):
    """{method: {"bytes", "psnr"}} means over the held-out images; codecs: {name: best.keras path}."""
    images, _ = real_cxr14.held_out_images(records_dir)  # float [N,1024,1024,1]
    originals = [to_uint8(image[..., 0]).numpy() for image in images]
    methods = {f"{name} latent PNG": (lambda p, m=load_model(path): codec_round_trip(m, p))
               for name, path in codecs.items()}
    methods["bicubic 256 PNG"] = bicubic_round_trip
    methods.update({f"JPEG q{q}": (lambda p, q=q: pillow_round_trip(p, "JPEG", q)) for q in JPEG_QUALITIES})
    methods.update({f"WebP q{q}": (lambda p, q=q: pillow_round_trip(p, "WEBP", q)) for q in WEBP_QUALITIES})
    results = {}
    for name, round_trip in methods.items():
        outputs = [(original, *round_trip(original)) for original in originals]  # (original, bytes, decoded)
        results[name] = {"bytes": float(np.mean([size for _, size, _ in outputs])),
                         "psnr": float(np.mean([psnr(original, back) for original, _, back in outputs])),
                         "black_subpixels": black_subpixels([back for _, _, back in outputs])}
    png_bytes = [len(codec.encode_png(original[..., None])) for original in originals]
    results["original PNG (lossless)"] = {"bytes": float(np.mean(png_bytes)), "psnr": None}
    return results


def cost(codecs, repeats=5):
    """{name: {"params", "compress_s", "reconstruct_s"}}: median seconds per 1024 image (after a warm-up)."""
    pixels = tf.constant(np.random.default_rng(0).integers(0, 256, (1024, 1024, 1)), tf.uint8)
    results = {}
    for name, path in codecs.items():
        model = load_model(path)
        encoder, decoder = model.get_layer(ENCODER), model.get_layer(DECODER)
        timings = {"compress_s": [], "reconstruct_s": []}
        for index in range(repeats + 1):
            start = time.perf_counter()
            latent = codec.compress(encoder, pixels)
            middle = time.perf_counter()
            codec.reconstruct(decoder, latent).numpy()
            if index:  # the first call traces
                timings["compress_s"].append(middle - start)
                timings["reconstruct_s"].append(time.perf_counter() - middle)
        results[name] = {"params": int(encoder.count_params() + decoder.count_params()),
                         **{key: float(np.median(values)) for key, values in timings.items()}}
    return results


def quality_rows(state):
    """Rows of the quality table: every scored snapshot, with parameters, steps and training time so far."""
    rows = []
    for variant, snapshots in state.get("scores", {}).items():
        timings = state["timings"].get(variant, {})
        params = state.get("params", {}).get(variant)
        spent, wall, cpu = {}, 0.0, 0.0  # epochs -> cumulative (wall s, CPU s) of the chunks up to there
        for epochs, timing in sorted(timings.items(), key=lambda item: int(item[0])):
            wall = None if wall is None or timing.get("wall_s") is None else wall + timing["wall_s"]
            cpu = None if cpu is None or timing.get("cpu_s") is None else cpu + timing["cpu_s"]
            spent[int(epochs)] = (wall, cpu)
        best = sorted(((int(e), v) for e, v in snapshots.items() if e != "last"), key=lambda item: item[0])
        last = [(snapshots["last"]["epochs"], snapshots["last"])] if "last" in snapshots else []
        for epochs, scores in best + last:
            wall, cpu = spent.get(epochs, (None, None))
            methods = scores["methods"]
            rows.append({"variant": variant, "weights": "last" if "epochs" in scores else "best.keras",
                         "params": params, "steps": int(epochs) * state["steps_per_epoch"],
                         "wall_min": wall and wall / 60, "cpu_min": cpu and cpu / 60, "images": scores["images"],
                         "psnr": methods["autoencoder"]["psnr"], "psnr_8bit": methods["autoencoder_8bit"]["psnr"],
                         "ssim_8bit": methods["autoencoder_8bit"]["ssim"],
                         "gain_8bit": methods["autoencoder_8bit"]["psnr"] - methods["bicubic_8bit"]["psnr"]})
    return rows


def plot(state, rows):
    """codec_rate.png (bytes per image against PSNR) and codec_steps.png (PSNR against training steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for family, marker in (("JPEG", "o-"), ("WebP", "s-")):
        points = [(v["bytes"], v["psnr"]) for name, v in state["rate"].items() if name.startswith(family)]
        axis.plot(*zip(*sorted(points)), marker, label=f"{family} of the 1024 image (Pillow)")
    for name, marker in (("bicubic 256 PNG", "kD"), ("residual latent PNG", "r*"), ("paper latent PNG", "bv")):
        if name in state["rate"]:
            axis.plot(state["rate"][name]["bytes"], state["rate"][name]["psnr"], marker, markersize=11, label=name)
    axis.set_xscale("log")
    axis.set_xlabel("bytes per 1024x1024 image (mean over the held-out radiographs)")
    axis.set_ylabel("PSNR (dB)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("Real radiographs (17 held-out): rate against reconstruction quality")
    figure.tight_layout()
    figure.savefig(RESULTS / "codec_rate.png", dpi=120)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(row["variant"] for row in rows):
        points = sorted((row["steps"], row["psnr_8bit"]) for row in rows if row["variant"] == variant and row["weights"] == "last")
        axis.plot(*zip(*points), "k+", markersize=12) if points else None
        points = [(row["steps"], row["psnr_8bit"]) for row in rows if row["variant"] == variant and row["weights"] != "last"]
        params = next(row["params"] for row in rows if row["variant"] == variant)
        axis.plot(*zip(*points), "o-", label=f"{variant} ({params:,} parameters)")
    bicubic = next(iter(state["scores"]["residual"].values()))["methods"]["bicubic_8bit"]["psnr"]
    axis.axhline(bicubic, color="k", linestyle="--", label="bicubic 256 (8-bit)")
    top = max(row["psnr_8bit"] for row in rows)
    axis.set_ylim(bicubic - 1.0, top + 0.5)  # a codec far below bicubic is listed, not drawn to scale
    for row in rows:
        if row["psnr_8bit"] < bicubic - 1.0 and row["weights"] == "last":
            axis.annotate(f"{row['variant']}: {row['psnr_8bit']:.2f} dB at {row['steps']:,} steps (below the axis)",
                          (0.02, 0.03), xycoords="axes fraction", fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel(f"training steps (batch {BATCH} of 128 patches)")
    axis.set_ylabel("PSNR (dB), 8-bit latent, held-out 1024 images")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / "codec_steps.png", dpi=120)


def lr_steps(variant, steps_per_epoch):
    """"1e-3 from step 0, 1e-4 from step 3,500, ..." from the run's log.csv."""
    rows = list(csv.DictReader((RUNS_DIR / variant / "log.csv").open()))  # rows may carry more columns than the header
    rates = [float(row["learning_rate"]) for row in rows]
    changes = [0] + [epoch for epoch in range(1, len(rates)) if not np.isclose(rates[epoch], rates[epoch - 1])]
    return ", ".join(f"{rates[epoch]:.0e} from step {epoch * steps_per_epoch:,}" for epoch in changes)


def report(state):
    """benchmarks/results/codec.md (+ codec.json, codec_rate.png, codec_steps.png) from the bench state."""
    rows = quality_rows(state)
    scores = next(iter(state["scores"]["residual"].values()))["methods"]
    first, last = state["machines"][0]["start"], state["machines"][-1]["end"]
    lines = ["# The compressed domain on real radiographs", "",
             "```", ".venv/bin/python benchmarks/bench_codec_real.py", "```", "",
             f"CPU: {first['cpu']} ({first['cores']} cores, AVX-512 {'yes' if first['avx512f'] else 'no'}); "
             f"load average {' '.join(first['loadavg'])} at the first start, {' '.join(last['loadavg'])} at the end: "
             "the machine was shared with other work, so times are wall-clock under load.", "",
             f"Data: benchmarks/real_cxr14.py's split of ../shared/cxr14-real: 43 training radiographs (random 128 "
             f"patches, flips, batch {BATCH}), 4 for validation (the plateau scheduler and best.keras), and "
             f"{rows[0]['images']} held-out radiographs, patient-disjoint, scored as whole 1024x1024 images "
             "(tf.image.psnr / ssim, max_val 1, mean over images). Every row trains through "
             "`python -m tfcxr.main --stage=2`; steps are optimizer steps; the time is the training's, cumulative.", "",
             "## Quality: PSNR against parameters and steps", "",
             "| codec | weights | parameters | steps | train wall min | train CPU min | PSNR float latent "
             "| PSNR 8-bit latent | SSIM 8-bit latent | 8-bit latent vs bicubic 8-bit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    minutes = lambda value: "-" if value is None else f"{value:.1f}"  # noqa: E731
    lines += [f"| {r['variant']} | {r['weights']} | {r['params']:,} | {r['steps']:,} | {minutes(r['wall_min'])} | {minutes(r['cpu_min'])} "
              f"| {r['psnr']:.2f} | {r['psnr_8bit']:.2f} | {r['ssim_8bit']:.4f} | {r['gain_8bit']:+.2f} dB |" for r in rows]
    for method in ("bicubic", "bicubic_8bit", "bilinear", "bilinear_8bit"):
        lines.append(f"| {method} 1024 -> 256 -> 1024 | - | 0 | - | - | - | {scores[method]['psnr']:.2f} | "
                     f"{scores[method]['psnr']:.2f} | {scores[method]['ssim']:.4f} | - |")
    lines += ["", "weights: best.keras is the run's pick on its 4 validation images (resized to 128, what "
              "`python -m tfcxr.main` keeps); last: the latest weights of the run (its last checkpoint; + in the plot).",
              "", "![PSNR against steps](codec_steps.png)", "",
              "## Rate: bytes per image against PSNR", "",
              "Mean over the held-out radiographs. Latent PNGs as tools/cxr_codec.py writes them (tf.io.encode_png), "
              "reconstructions rounded to 8 bits; JPEG / WebP by Pillow at the quality shown, of the whole 1024 "
              "image; PSNR of the decoded 8-bit image against the original.", "",
              "| stored as | bytes per image | bits per original pixel | PSNR (dB) |", "|---|---|---|---|"]
    for name, values in sorted(state["rate"].items(), key=lambda item: item[1]["bytes"]):
        quality = "lossless" if values["psnr"] is None else f"{values['psnr']:.2f}"
        lines.append(f"| {name} | {values['bytes']:,.0f} | {values['bytes'] * 8 / 1024**2:.3f} | {quality} |")
    finals = ", ".join(f"{name}: {path}" for name, path in state.get("finals", {}).items())
    lines += ["", f"Codec weights (under workspace/runs/codec_real/): {finals}. Sub-pixel positions of the 4x4 "
              "blocks that are black (0) in more than 99% of the blocks of the held-out reconstructions: "
              + ", ".join(f"{name} {values['black_subpixels']}" for name, values in state["rate"].items()
                          if "black_subpixels" in values and "latent" in name) + " (of 16).", "",
              "Learning rates (the plateau scheduler on the 4 validation images; from each run's log.csv): "
              + "; ".join(f"{variant}: {lr_steps(variant, state['steps_per_epoch'])}" for variant in state["scores"]) + ".",
              "", "![rate against PSNR](codec_rate.png)", "",
              "## Cost per 1024 image on this CPU", "",
              "tfcxr.export.codec.compress / reconstruct (what tools/cxr_codec.py runs), one image, median of 5 "
              "after a warm-up call, eager Keras.", "",
              "| codec | parameters | compress s | reconstruct s |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['params']:,} | {v['compress_s']:.3f} | {v['reconstruct_s']:.3f} |"
              for name, v in state["cost"].items()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "codec.md", "\n".join(lines) + "\n")
    write_json(RESULTS / "codec.json", {**state, "rows": rows})
    plot(state, rows)
    print("\n".join(lines))


def main(argv):
    del argv
    variants, phases = FLAGS.variants, FLAGS.phases
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    records_dir = real_cxr14.RECORDS_DIR
    real_cxr14.ensure_records(records_dir)
    state_path = RUNS_DIR / "bench.json"  # timings and machine of every phase run so far
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"machines": []}
    state.setdefault("timings", {})
    state["steps_per_epoch"] = FLAGS.steps_per_epoch
    state["machines"].append({"phases": phases, "start": machine()})
    if "train" in phases:
        for variant in variants:
            train(variant, records_dir, FLAGS.steps_per_epoch)
            save_last(variant)
    if "last" in phases:  # the latest weights of runs trained earlier (or stopped)
        for variant in variants:
            save_last(variant)
    for variant in VARIANTS:
        if timings_path(variant).is_file():
            state["timings"].setdefault(variant, {}).update(json.loads(timings_path(variant).read_text()))
    if "score" in phases:
        for variant in variants:
            scores = score(variant, records_dir)
            if scores:
                state.setdefault("scores", {})[variant] = scores
                state.setdefault("params", {})[variant] = parameters(variant)
    finals = {}  # the rate and cost of each codec's latest weights (or its last best.keras)
    for name in ("residual", "paper"):
        candidates = [RUNS_DIR / f"{name}_snapshots" / "last.keras", snapshot_path(name, VARIANTS[name][1][-1])]
        finals.update({name: path for path in candidates[::-1] if path.is_file()})
    state["finals"] = {name: str(path.relative_to(RUNS_DIR)) for name, path in finals.items()}
    if "rate" in phases:
        state["rate"] = rate(records_dir, finals)
    if "cost" in phases:
        state["cost"] = cost(finals)
    state["machines"][-1]["end"] = machine()
    if phases != ["train"]:  # training alone writes only its own <variant>.timings.json (parallel runs)
        write_json(state_path, state)
    if "report" in phases:
        report(state)


if __name__ == "__main__":
    app.run(main)
