"""--mode=evaluate for autoencoders (stage 2, stage 3): PSNR / SSIM against plain resizing.

Every image of the split is compressed to the latent (COMPRESSION times smaller per side)
and decoded, once with the codec's own latent and once with the latent quantised to 8 bits
(what a latent PNG stores). A codec that rounds its latent itself (the residual codec: its
latent is the stored one) gives the same numbers in both rows; the paper's codec has a float
latent. Beside them: bicubic and bilinear resizing to the same small size and back
(antialiased downsizing), with the small image clipped to [0, 1] as a stored thumbnail is,
kept as float and rounded to 8 bits.

Evaluation size (a choice): a model with a classifier (the AECNN) at its inputs' evaluation
size (the pipeline's whole-image resize, STAGE3_CROP); a codec alone (the autoencoder) on
originals at their full resolution, each at its own size cropped to multiples of COMPRESSION
(the top-left part; fully convolutional, it is measured on what it will actually
compress, not on the 128-pixel validation resize), as the export's compress signature and
tools/cxr_codec.py compress it (pipeline.InputSpec.eval_geometry="full": batched by size).
Writes model_dir/eval/<split>/reconstruction.json and .md.
"""

import dataclasses

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import image_ops_impl
from tqdm import tqdm

from tfcxr.constants import COMPRESSION
from tfcxr.data import pipeline, schema
from tfcxr import storage
from tfcxr.storage import write_json, write_text
from tfcxr.data.records import Records
from tfcxr.evaluate import outputs
from tfcxr.models import classifies, codec_of
from tfcxr.models.names import DECODER, ENCODER
from tfcxr.models.compression import quantize, resize_round_trip
from tfcxr.models.metrics import rounds_latent

METHODS = {
    "autoencoder": "learned encoder -> decoder, float latent",
    "autoencoder_8bit": "learned encoder -> decoder, latent rounded to 8 bits",
    "bicubic": "bicubic resize down (antialiased) and back, float",
    "bicubic_8bit": "bicubic resize down (antialiased) and back, small image rounded to 8 bits",
    "bilinear": "bilinear resize down (antialiased) and back, float",
    "bilinear_8bit": "bilinear resize down (antialiased) and back, small image rounded to 8 bits",
}


def reconstructions(encoder, decoder, images):
    """{method: reconstruction [B,H,W,1]} for every entry of METHODS."""
    latent = encoder(images, training=False)  # [B,H/4,W/4,1]
    return {
        "autoencoder": decoder(latent, training=False),
        "autoencoder_8bit": decoder(quantize(latent), training=False),
        **{f"{method}{suffix}": resize_round_trip(images, method, quantized=bool(suffix))
           for method in ("bicubic", "bilinear") for suffix in ("", "_8bit")},
    }


def original_size(records_dir, split):
    """(height, width) of the split's first record (a split of one size, as ChestX-ray14's 1024x1024).
    Evaluation itself reads each original at its own size (InputSpec.eval_geometry="full")."""
    files = pipeline.shard_files(records_dir, split)
    record = next(iter(tf.data.TFRecordDataset(files[:1]).take(1)))
    example = schema.parse(record, keys=[schema.HEIGHT, schema.WIDTH])
    return int(example[schema.HEIGHT]), int(example[schema.WIDTH])


def ssim_per_method(outputs, images):
    """{method: [B,H,W,1]}, [B,H,W,1] -> {method: SSIM [B]}, each exactly tf.image.ssim(output, images, 1).

    tf.image.ssim averages its per-channel SSIMs; its depthwise Gaussian filters cost on a CPU about
    the same for 6 channels as for 1, so the methods go through it once as channels, and the
    per-channel values it averages (image_ops_impl._ssim_per_channel) are kept apart.
    """
    stacked = tf.concat([tf.cast(output, tf.float32) for output in outputs.values()], axis=-1)  # [B,H,W,M]
    reference = tf.repeat(images, len(outputs), axis=-1)  # [B,H,W,M]
    per_channel, _ = image_ops_impl._ssim_per_channel(stacked, reference, tf.constant(1.0))  # [B,M]
    return dict(zip(outputs, tf.unstack(per_channel, axis=-1)))


def measure(encoder, decoder, dataset):
    """Mean PSNR (dB) and SSIM (max_val 1) per method over `dataset` (batches of one size each), the
    image count, and {(height, width): images} of the sizes measured."""
    @tf.function(reduce_retracing=True)
    def scores(images):
        images = tf.cast(images, tf.float32)
        outputs = reconstructions(encoder, decoder, images)
        ssim = ssim_per_method(outputs, images)
        return {name: (tf.image.psnr(output, images, 1.0), ssim[name]) for name, output in outputs.items()}

    totals = {name: np.zeros(2) for name in METHODS}
    sizes = {}
    for batch in tqdm(dataset, desc="reconstruct", unit="batch"):
        for name, (psnr, ssim) in scores(batch["image"]).items():
            totals[name] += [tf.reduce_sum(psnr).numpy(), tf.reduce_sum(ssim).numpy()]
        size = tuple(batch["image"].shape[1:3])
        sizes[size] = sizes.get(size, 0) + batch["image"].shape[0]
    count = sum(sizes.values())
    if not count:
        raise ValueError("the split holds no images")
    return {name: {"psnr": total[0] / count, "ssim": total[1] / count} for name, total in totals.items()}, count, sizes


def codec_alone_on_originals(model, inputs: pipeline.InputSpec) -> bool:
    """Whether `model` is a codec without a classifier reading originals: it is then measured (and
    served) on originals at their own size, not at its inputs' evaluation size."""
    return inputs.feature == schema.ENCODED and not classifies(model)


def describe_sizes(sizes) -> str:
    """{(height, width): images} -> "128x96, latent 32x24", or "3 sizes from 28x48 to 52x36" (width x height)."""
    if len(sizes) == 1:
        ((height, width),) = sizes
        return f"{width}x{height}, latent {width // COMPRESSION}x{height // COMPRESSION}"
    (h0, w0), *_, (h1, w1) = sorted(sizes, key=lambda size: (size[0] * size[1], size))  # by area
    return f"{len(sizes)} sizes from {w0}x{h0} to {w1}x{h1}"


def evaluate_reconstruction(model, records: Records | str, model_dir, *, inputs: pipeline.InputSpec, stage: str = "aecnn",
                            split: str = "test", batch_size: int = 8, checkpoint=None) -> dict:
    """Measures an autoencoder or AECNN (anything with encoder and decoder sub-models): a codec alone
    on the split's originals at their own size (cut to multiples of COMPRESSION), a model with a
    classifier on the images `inputs` reads at their evaluation size; `stage` names it in the report."""
    records = Records.of(records)
    full_resolution = codec_alone_on_originals(model, inputs)
    if full_resolution:  # each original at its own size, cut to multiples of COMPRESSION, batched by size
        inputs = dataclasses.replace(inputs, eval_geometry="full")
    dataset = pipeline.make_dataset(records, split, inputs, batch_size, training=False)
    methods, count, sizes = measure(model.get_layer(ENCODER), model.get_layer(DECODER), dataset)
    if full_resolution:
        protocol = (f"{stage}: whole originals at their own size (the records' full resolution), cropped to "
                    f"multiples of {COMPRESSION}: {describe_sizes(sizes)}")
    else:
        protocol = f"{stage}: whole images resized to {describe_sizes(sizes)} (the evaluation size)"
    latent = ("8-bit (the codec rounds it: autoencoder and autoencoder_8bit coincide)" if rounds_latent(model)
              else "float (autoencoder_8bit rounds it to 8 bits)")
    summary = {
        "split": split, "stage": stage, "checkpoint": str(checkpoint) if checkpoint else None,
        "codec": codec_of(model).to_dict(),  # its kind and parameters, from the model's spec
        "protocol": protocol, "latent": latent, **records.label_source, "images": count,
        "metrics": "mean over images of tf.image.psnr / tf.image.ssim, max_val 1",
        "methods": {name: {**values, "description": METHODS[name]} for name, values in methods.items()},
    }
    lines = [f"# Reconstruction quality: `{split}`, {count} images", "",
             f"Codec: {summary['codec']['kind']} (--codec; {summary['codec']}); its latent: {latent}. "
             f"Protocol: {protocol}.", "",
             "| method | PSNR (dB) | SSIM | what |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['psnr']:.2f} | {v['ssim']:.4f} | {METHODS[name]} |" for name, v in methods.items()]
    out = outputs.eval_dir(model_dir, split)
    write_json(storage.join(out, "reconstruction.json"), summary)
    write_text(storage.join(out, "reconstruction.md"), "\n".join(lines) + "\n")
    return summary
