"""Chest X-rays <-> 8-bit latent PNGs (16x fewer pixels), and classification from the latent.

    python tools/cxr_codec.py compress    --model=runs/aecnn/best.keras --out_dir=codec/ a.png b.png
    python tools/cxr_codec.py reconstruct --model=runs/aecnn/best.keras --out_dir=codec/ codec/a.latent.png
    python tools/cxr_codec.py classify    --model=runs/aecnn/best.keras --out_dir=codec/ codec/a.latent.png

--model: a stage-3 best.keras (AECNN), or a stage-2 best.keras (autoencoder) for compress and
reconstruct. compress reads any PNG / JPEG (converted to 8-bit gray) at its own size cropped
to multiples of 4 (the top-left part), or resized to --size x --size as evaluation resizes
(e.g. 896, the stage-3 evaluation size: the latent the export's serving_default classifies),
and writes <name>.latent.png; reconstruct writes <name>.png from <name>.latent.png; classify
prints the 14 probabilities per latent PNG and writes classify.csv. Each reports bytes in and
out; compress --report also the PSNR of each image's round trip (latent PNG -> decoder) beside a
bicubic thumbnail of the same size. Either codec (--autoencoder=paper or residual) serves.
See tfcxr/export/codec.py for the geometry. An input whose header declares more than
--max_image_side pixels a side or --max_image_pixels in all is refused before decoding.
"""

import sys
from pathlib import Path

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)

import pandas as pd
import tensorflow as tf
from absl import app, flags

from tfcxr.constants import LABELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.data.image_limits import ImageFileError, checked_bytes, read_gray
from tfcxr.export import codec
from tfcxr import storage
from tfcxr.storage import write_bytes, write_text
from tfcxr.models import CLASSIFIER, DECODER, ENCODER, NORMALIZATION, load_model
from tfcxr.models.compression import resize_round_trip, to_uint8

flags.DEFINE_string("model", None, "stage-3 (or, for the codec, stage-2) best.keras", required=True)
flags.DEFINE_string("out_dir", None, "where the outputs go: a folder or a URL (gs://...)", required=True)
flags.DEFINE_integer("size", None, "compress resized to size x size (a multiple of 4) instead of at the own size")
flags.DEFINE_bool("report", False, "compress: also the PSNR of each round trip (needs the decoder), beside bicubic")
flags.DEFINE_integer("max_image_side", MAX_IMAGE_SIDE, "refuse wider or taller inputs")
flags.DEFINE_integer("max_image_pixels", MAX_IMAGE_PIXELS, "refuse inputs of more pixels")
FLAGS = flags.FLAGS


def read(source):
    """uint8 [H, W, 1] of an input file, within the size limits of the flags."""
    return read_gray(source, FLAGS.max_image_side, FLAGS.max_image_pixels)


NEEDS = {"compress": [ENCODER], "reconstruct": [DECODER], "classify": [NORMALIZATION, CLASSIFIER]}


def write_png(source, target, pixels, shape_in):
    """Writes `pixels` as PNG (atomically) and prints bytes and pixels in and out; returns the sizes."""
    data = codec.encode_png(pixels)
    write_bytes(target, data)
    bytes_in, bytes_out = source.stat().st_size, len(data)
    print(f"{source.name} -> {storage.name(target)}: {shape_in[1]}x{shape_in[0]} -> {pixels.shape[1]}x{pixels.shape[0]} pixels, "
          f"{bytes_in:,} -> {bytes_out:,} bytes ({bytes_in / bytes_out:.1f}x)")
    return bytes_in, bytes_out


def report_round_trip(image, latent, decoder):
    """Prints the PSNR of image -> 8-bit latent -> decoder -> 8 bits, beside a bicubic thumbnail of the latent's size."""
    reconstruction = codec.reconstruct(decoder, latent)
    bicubic = to_uint8(resize_round_trip(tf.cast(image, tf.float32)[None] / 255.0, "bicubic", quantized=True))[0]
    print(f"  round trip: PSNR {codec.psnr(image, reconstruction):.2f} dB (latent PNG decoded, 8-bit), "
          f"bicubic {codec.psnr(image, bicubic):.2f} dB (an 8-bit bicubic thumbnail of the latent's size, resized back)")


def compress_files(model, inputs):
    encoder, *decoder = codec.parts(model, NEEDS["compress"] + (NEEDS["reconstruct"] if FLAGS.report else []), FLAGS.model)
    for source in inputs:
        image = read(source)
        fitted = codec.fit(image, FLAGS.size)
        latent = codec.compress(encoder, fitted)
        yield write_png(source, storage.join(FLAGS.out_dir, f"{source.stem}.latent.png"), latent, image.shape)
        if FLAGS.report:
            report_round_trip(fitted, latent, decoder[0])


def reconstruct_files(model, inputs):
    (decoder,) = codec.parts(model, NEEDS["reconstruct"], FLAGS.model)
    for source in inputs:
        latent = read(source)
        target = storage.join(FLAGS.out_dir, f"{source.stem.removesuffix('.latent')}.png")
        yield write_png(source, target, codec.reconstruct(decoder, latent), latent.shape)


def classify_files(model, inputs):
    codec.parts(model, NEEDS["classify"], FLAGS.model)
    rows = {source.name: codec.classify(model, read(source)) for source in inputs}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(LABELS)).rename_axis("file")
    write_text(storage.join(FLAGS.out_dir, "classify.csv"), table.to_csv(float_format="%.6f"))
    print(table.T.to_string(float_format=lambda p: f"{p:.4f}"))
    return []


COMMANDS = {"compress": compress_files, "reconstruct": reconstruct_files, "classify": classify_files}


def main(argv):
    command, *inputs = argv[1:] or [None]
    if command not in COMMANDS:
        raise app.UsageError(f"the first argument is the command, one of {', '.join(sorted(COMMANDS))}; "
                             f"got {command or 'none'}")
    if not inputs:
        raise app.UsageError(f"{command}: give one or more images (compress) or latent PNGs")
    try:
        for path in inputs:  # every input's header first: a bad file is refused before the model loads
            checked_bytes(path, FLAGS.max_image_side, FLAGS.max_image_pixels)
        sizes = list(COMMANDS[command](load_model(Path(FLAGS.model)), [Path(path) for path in inputs]))
    except (codec.CodecError, ImageFileError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    if len(sizes) > 1:
        bytes_in, bytes_out = map(sum, zip(*sizes))
        print(f"total: {bytes_in:,} -> {bytes_out:,} bytes ({bytes_in / bytes_out:.1f}x)")


if __name__ == "__main__":
    app.run(main)
