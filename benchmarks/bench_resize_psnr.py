"""PSNR / SSIM of plain resizing 1024 -> 256 -> 1024 on real chest X-rays (the README's baseline).

    .venv/bin/python benchmarks/bench_resize_psnr.py [--images=../shared/cxr14-real/images] [--ssim]

SSIM is optional: tf.image.ssim's depthwise convolutions take seconds per 1024 image on a CPU.

Uses the same round trip as --mode=evaluate's reconstruction report
(tfcxr.models.compression.resize_round_trip: antialiased downsizing, clipped to [0, 1]).
"""

from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags

from tfcxr.evaluate.reconstruction import ssim_per_method
from tfcxr.models.compression import resize_round_trip

ROOT = Path(__file__).resolve().parents[1]

flags.DEFINE_string("images", str(ROOT.parent / "shared" / "cxr14-real" / "images"), "folder of the PNGs")
flags.DEFINE_bool("ssim", False, "also SSIM (slow on CPU)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    images = Path(FLAGS.images)
    files = sorted(images.glob("*.png"))
    if not files:
        raise SystemExit(f"{images}: no PNGs")
    scores = {f"{m}{s}": [] for m in ("bicubic", "bilinear") for s in ("", "_8bit")}
    for path in files:
        image = tf.io.decode_png(tf.io.read_file(str(path)), channels=1)  # RGBA -> gray too
        image = tf.image.convert_image_dtype(image, tf.float32)[None]  # [1,H,W,1] in [0, 1]
        outputs = {name: resize_round_trip(image, name.removesuffix("_8bit"), quantized=name.endswith("_8bit"))
                   for name in scores}
        ssim = ssim_per_method(outputs, image) if FLAGS.ssim else {}
        for name, output in outputs.items():
            scores[name].append((float(tf.image.psnr(output, image, 1.0)[0]), float(ssim.get(name, [np.nan])[0])))
    print(f"{len(files)} images from {images}, {image.shape[1]}x{image.shape[2]} -> /4 -> back")
    for name, values in scores.items():
        psnr, ssim = np.mean(values, axis=0)
        print(f"{name:14s} PSNR {psnr:6.2f} dB  SSIM {ssim:.4f}")


if __name__ == "__main__":
    app.run(main)
