"""Rates users can compare: bytes per held-out radiograph for the 8-bit latent and the 8-bit bicubic
thumbnail under each lossless coder we have, beside JPEG and WebP of the whole 1024 image.

    .venv/bin/python benchmarks/bench_codec_rate.py --model=workspace/runs/residual_codec/best.keras[,OTHER.keras]

Lossless coders (the same bytes back, so the same PSNR): tf.io.encode_png (what tools/cxr_codec.py
writes; zlib level 6), Pillow's PNG at its best (optimize=True: zlib level 9, adaptive row filters),
and Pillow's lossless WebP (method 6, quality 100) where Pillow has WebP. Lossy: JPEG and WebP of the
whole 1024 image at several qualities (Pillow). PSNR of the decoded 8-bit image against the original,
mean over the 17 held-out radiographs of benchmarks/real_cxr14.py. Writes benchmarks/results/codec_rate.md.
"""

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import real_cxr14  # noqa: E402

from tfcxr.export import codec  # noqa: E402
from tfcxr.models import DECODER, ENCODER, load_model  # noqa: E402
from tfcxr.models.compression import resize_round_trip, thumbnail, to_uint8  # noqa: E402
from tfcxr.storage import write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "codec_rate.md"
JPEG_QUALITIES = (10, 30, 50, 70, 90)
WEBP_QUALITIES = (10, 30, 50, 70, 90)

flags.DEFINE_list("model", None, "stage-2 (or stage-3) .keras files holding a codec (several: one row set each, "
                  "named by the run's folder)", required=True)
FLAGS = flags.FLAGS


def psnr(reference, image):
    """uint8 pair -> PSNR (dB), max_val 255."""
    mse = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def pillow_bytes(pixels, fmt, **options):
    """uint8 [H, W] -> (bytes Pillow writes, the decoded uint8 [H, W])."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    data = buffer.getvalue()
    return len(data), np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def lossless_coders():
    """{name: uint8 [H, W] -> bytes}: every lossless coder available here."""
    coders = {"PNG (tf.io.encode_png)": lambda pixels: len(codec.encode_png(pixels[..., None])),
              "PNG (Pillow, optimize)": lambda pixels: pillow_bytes(pixels, "PNG", optimize=True)[0]}
    if features.check("webp"):
        coders["WebP lossless (Pillow, method 6)"] = lambda pixels: pillow_bytes(
            pixels, "WEBP", lossless=True, quality=100, method=6)[0]
    return coders


def small_images(models, original):
    """uint8 [H, W] -> {"codec latent ...": (uint8 [h, w], 8-bit reconstruction) per model, "bicubic thumbnail": (...)}."""
    smalls = {}
    for name, model in models.items():
        latent = codec.compress(model.get_layer(ENCODER), original[..., None])  # uint8 [h, w, 1]
        back = codec.reconstruct(model.get_layer(DECODER), latent).numpy()[..., 0]
        smalls[name] = (np.asarray(latent)[..., 0], back)
    image = tf.constant(original[None, ..., None], tf.float32) / 255.0
    stored = to_uint8(thumbnail(image, "bicubic", quantized=True)).numpy()[0, ..., 0]  # [h, w]
    upsized = to_uint8(resize_round_trip(image, "bicubic", quantized=True)).numpy()[0, ..., 0]
    return {**smalls, "bicubic thumbnail": (stored, upsized)}


def main(argv):
    del argv
    models = {"codec latent" if len(FLAGS.model) == 1 else f"codec latent ({Path(path).parent.name})": load_model(path)
              for path in FLAGS.model}
    images, _ = real_cxr14.held_out_images(real_cxr14.RECORDS_DIR)
    originals = [to_uint8(image[..., 0]).numpy() for image in images]
    coders = lossless_coders()
    rows = {}  # name: ([bytes], [psnr])
    for original in originals:
        for small_name, (small, back) in small_images(models, original).items():
            quality = psnr(original, back)
            for coder_name, coder in coders.items():
                sizes, psnrs = rows.setdefault(f"{small_name} 256, {coder_name}", ([], []))
                sizes.append(coder(small))
                psnrs.append(quality)
        for quality in JPEG_QUALITIES:
            size, back = pillow_bytes(original, "JPEG", quality=quality)
            rows.setdefault(f"JPEG q{quality} of the 1024 image", ([], []))[0].append(size)
            rows[f"JPEG q{quality} of the 1024 image"][1].append(psnr(original, back))
        for quality in WEBP_QUALITIES:
            size, back = pillow_bytes(original, "WEBP", quality=quality)
            rows.setdefault(f"WebP q{quality} of the 1024 image", ([], []))[0].append(size)
            rows[f"WebP q{quality} of the 1024 image"][1].append(psnr(original, back))
        rows.setdefault("original 1024, PNG (Pillow, optimize)", ([], [None]))[0].append(
            pillow_bytes(original, "PNG", optimize=True)[0])
    cpu = machine.cpu_model()
    lines = ["# Rate: bytes per held-out radiograph", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, load average {os.getloadavg()[0]:.1f}.", "",
             "```", f".venv/bin/python benchmarks/bench_codec_rate.py --model={','.join(FLAGS.model)}", "```", "",
             f"{len(originals)} held-out radiographs (1024x1024, benchmarks/real_cxr14.py), mean bytes and mean PSNR of "
             "the decoded 8-bit image against the original. Lossless coders store the same pixels, so a small "
             "image's rows share one PSNR.", "",
             "| stored as | bytes per image | bits per original pixel | PSNR (dB) |", "|---|---|---|---|"]
    for name, (sizes, psnrs) in sorted(rows.items(), key=lambda item: np.mean(item[1][0])):
        quality = "lossless" if psnrs[0] is None else f"{np.mean(psnrs):.2f}"
        lines.append(f"| {name} | {np.mean(sizes):,.0f} | {np.mean(sizes) * 8 / 1024**2:.3f} | {quality} |")
    write_text(RESULTS, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
