"""Chest X-rays <-> 8-bit latent PNGs (16x fewer pixels), and classification from the latent.

    python tools/cxr_codec.py compress    --model=runs/aecnn/best.keras --out_dir=codec/ a.png b.png
    python tools/cxr_codec.py reconstruct --model=runs/aecnn/best.keras --out_dir=codec/ codec/a.latent.png
    python tools/cxr_codec.py classify    --model=runs/aecnn/best.keras --out_dir=codec/ codec/a.latent.png

--model: a stage-3 best.keras (AECNN), or a stage-2 best.keras (autoencoder) for compress and
reconstruct. compress reads any PNG / JPEG (converted to 8-bit gray) at its own size rounded
down to a multiple of 4, or at --size x --size (e.g. 896, the stage-3 evaluation size), and
writes <name>.latent.png; reconstruct writes <name>.png from <name>.latent.png; classify
prints the 14 probabilities per latent PNG and writes classify.csv. Each reports bytes in and
out. See tfcxr/export/codec.py for the geometry.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from tfcxr.constants import LABELS
from tfcxr.evaluate import runs
from tfcxr.export import codec
from tfcxr.models import load_model

NEEDS = {"compress": ["encoder"], "reconstruct": ["decoder"], "classify": ["imagenet_normalization", "classifier"]}


def write_png(source, target, pixels, shape_in):
    """Writes `pixels` as PNG (atomically) and prints bytes and pixels in and out; returns the sizes."""
    data = codec.encode_png(pixels)
    runs.write_bytes(target, data)
    bytes_in, bytes_out = source.stat().st_size, len(data)
    print(f"{source.name} -> {target.name}: {shape_in[1]}x{shape_in[0]} -> {pixels.shape[1]}x{pixels.shape[0]} pixels, "
          f"{bytes_in:,} -> {bytes_out:,} bytes ({bytes_in / bytes_out:.1f}x)")
    return bytes_in, bytes_out


def compress_files(model, args):
    (encoder,) = codec.parts(model, NEEDS["compress"], args.model)
    for source in args.inputs:
        image = codec.read_gray(source)
        latent = codec.compress(encoder, codec.fit(image, args.size))
        yield write_png(source, args.out_dir / f"{source.stem}.latent.png", latent, image.shape)


def reconstruct_files(model, args):
    (decoder,) = codec.parts(model, NEEDS["reconstruct"], args.model)
    for source in args.inputs:
        latent = codec.read_gray(source)
        target = args.out_dir / f"{source.stem.removesuffix('.latent')}.png"
        yield write_png(source, target, codec.reconstruct(decoder, latent), latent.shape)


def classify_files(model, args):
    codec.parts(model, NEEDS["classify"], args.model)
    rows = {source.name: codec.classify(model, codec.read_gray(source)) for source in args.inputs}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(LABELS)).rename_axis("file")
    runs.write_text(args.out_dir / "classify.csv", table.to_csv(float_format="%.6f"))
    print(table.T.to_string(float_format=lambda p: f"{p:.4f}"))
    return []


COMMANDS = {"compress": compress_files, "reconstruct": reconstruct_files, "classify": classify_files}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("inputs", nargs="+", type=Path, help="images (compress) or latent PNGs")
    parser.add_argument("--model", required=True, type=Path, help="stage-3 (or, for the codec, stage-2) best.keras")
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--size", type=int, help="compress at size x size (a multiple of 4) instead of the own size")
    args = parser.parse_args()
    try:
        sizes = list(COMMANDS[args.command](load_model(args.model), args))
    except (codec.CodecError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    if len(sizes) > 1:
        bytes_in, bytes_out = map(sum, zip(*sizes))
        print(f"total: {bytes_in:,} -> {bytes_out:,} bytes ({bytes_in / bytes_out:.1f}x)")


if __name__ == "__main__":
    main()
