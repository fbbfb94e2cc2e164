"""--mode=evaluate for autoencoders (stage 2, stage 3): PSNR / SSIM against plain resizing.

Every image of the split is compressed to the latent (COMPRESSION times smaller per side)
and decoded, once with the float latent and once with the latent quantised to 8 bits (what
a latent PNG stores). Beside them: bicubic and bilinear resizing to the same small size
and back (antialiased downsizing), with the small image kept as float and as 8 bits.

Evaluation size (a choice): a model with a classifier (the AECNN) at its inputs' evaluation
size (the pipeline's whole-image resize, STAGE3_CROP); a codec alone (the autoencoder) on
originals at the records' full resolution (it is fully convolutional, so it is measured on
what it will actually compress, not on the 128-pixel validation resize). Writes model_dir/eval/<split>/reconstruction.json and .md.
"""

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
    """(height, width) of the split's first record: the full resolution stage 2 is measured at."""
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
    """Mean PSNR (dB) and SSIM (max_val 1) per method over `dataset`, plus the image count."""
    @tf.function(reduce_retracing=True)
    def scores(images):
        images = tf.cast(images, tf.float32)
        outputs = reconstructions(encoder, decoder, images)
        ssim = ssim_per_method(outputs, images)
        return {name: (tf.image.psnr(output, images, 1.0), ssim[name]) for name, output in outputs.items()}

    totals = {name: np.zeros(2) for name in METHODS}
    count, shape = 0, None
    for batch in tqdm(dataset, desc="reconstruct", unit="batch"):
        shape = batch["image"].shape[1:3]
        for name, (psnr, ssim) in scores(batch["image"]).items():
            totals[name] += [tf.reduce_sum(psnr).numpy(), tf.reduce_sum(ssim).numpy()]
        count += batch["image"].shape[0]
    if not count:
        raise ValueError("the split holds no images")
    return {name: {"psnr": total[0] / count, "ssim": total[1] / count} for name, total in totals.items()}, count, shape


def codec_alone_on_originals(model, inputs: pipeline.InputSpec) -> bool:
    """Whether `model` is a codec without a classifier reading originals: it is then measured (and
    served) at the records' full resolution, not at its inputs' evaluation size."""
    return inputs.feature == schema.ENCODED and not classifies(model)


def measured_inputs(model, inputs: pipeline.InputSpec, records_dir, split: str) -> pipeline.InputSpec:
    """The inputs `model` is evaluated and exported at: `inputs`, or for a codec alone on originals
    the same at the split's full resolution (fully convolutional, it compresses whole radiographs)."""
    if codec_alone_on_originals(model, inputs):
        return inputs.with_sizes(image_size=original_size(records_dir, split)[0])
    return inputs


def evaluate_reconstruction(model, records: Records | str, model_dir, *, inputs: pipeline.InputSpec, stage: str = "aecnn",
                            split: str = "test", batch_size: int = 8, checkpoint=None) -> dict:
    """Measures an autoencoder or AECNN (anything with encoder and decoder sub-models) on the images
    `inputs` reads (see measured_inputs); `stage` names it in the report."""
    records = Records.of(records)
    full_resolution = codec_alone_on_originals(model, inputs)
    inputs = measured_inputs(model, inputs, records.path, split)
    dataset = pipeline.make_dataset(records.path, split, inputs, batch_size, training=False)
    methods, count, (height, width) = measure(model.get_layer(ENCODER), model.get_layer(DECODER), dataset)
    protocol = (f"{stage}: whole images resized to {height}x{width}"
                + (" (the records' full resolution)" if full_resolution else " (the evaluation size)")
                + f", latent {height // COMPRESSION}x{width // COMPRESSION}")
    summary = {
        "split": split, "stage": stage, "checkpoint": str(checkpoint) if checkpoint else None,
        "codec": codec_of(model).to_dict(),  # its kind and parameters, from the model's spec
        "protocol": protocol, **records.label_source, "images": count,
        "metrics": "mean over images of tf.image.psnr / tf.image.ssim, max_val 1",
        "methods": {name: {**values, "description": METHODS[name]} for name, values in methods.items()},
    }
    lines = [f"# Reconstruction quality: `{split}`, {count} images", "",
             f"Codec: {summary['codec']['kind']} (--codec; {summary['codec']}). Protocol: {protocol}.", "",
             "| method | PSNR (dB) | SSIM | what |", "|---|---|---|---|"]
    lines += [f"| {name} | {v['psnr']:.2f} | {v['ssim']:.4f} | {METHODS[name]} |" for name, v in methods.items()]
    out = outputs.eval_dir(model_dir, split)
    write_json(storage.join(out, "reconstruction.json"), summary)
    write_text(storage.join(out, "reconstruction.md"), "\n".join(lines) + "\n")
    return summary
