"""The 64 real radiographs of ../shared/cxr14-real as our records, and stage-2 scores on the held-out ones.

Shared by the real-data benchmarks (bench_stage2_real.py and others):

    from benchmarks import real_cxr14          # or: sys.path gets benchmarks/, then import real_cxr14
    manifest = real_cxr14.ensure_records(records_dir)             # shards once, reuses afterwards
    scores = real_cxr14.score_autoencoder("runs/x/best.keras", records_dir)
    images, names = real_cxr14.held_out_images(records_dir)       # float32 [N,1024,1024,1], names

The split: the official lists restricted to the PNGs on disk (47 train_val, 17 test: the official
split is patient-disjoint, and these 64 images are 64 patients); VAL_IMAGES of the train_val ones
go to validation (the plateau scheduler and best.keras), patient-wise, by tfcxr's own planner:
43 train, 4 val, 17 test. The held-out radiographs are the 17 test ones: never trained on, never
used to pick a checkpoint.

Scores reuse tfcxr.evaluate.reconstruction (PSNR / SSIM of whole 1024 images, max_val 1): the
autoencoder with its float latent and its 8-bit latent, beside bicubic and bilinear
1024 -> 256 -> 1024 (antialiased down, float and 8-bit small image).
"""

import fcntl
from pathlib import Path

import keras
import numpy as np

from tfcxr.data import metadata, pipeline, schema, sharding
from tfcxr.evaluate import reconstruction
from tfcxr.storage import MANIFEST, read_manifest, write_text
from tfcxr.models import DECODER, ENCODER, load_model


ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT.parent / "shared" / "cxr14-real"
RECORDS_DIR = ROOT / "workspace" / "records" / "cxr14-real-raw"
HELD_OUT = "test"  # the split scored: official test list, patient-disjoint from train and val
VAL_IMAGES = 4  # of the 47 train_val PNGs; the other 43 train
SEED = 0
ENCODING = "raw"  # stage 2 decodes every 1024 original each step: raw skips the PNG inflate


def has_layer(model, name):
    """Whether `model` has a layer (or sub-model) called `name`."""
    return any(layer.name == name for layer in model.layers)


def make_tree(tree_dir, real_dir=REAL_DIR):
    """A ChestX-ray14 tree in `tree_dir` for tools/shard_cxr14.py: the real label CSV and PNGs
    (symlinks), and the official lists cut down to the PNGs on disk. -> tree_dir (a Path)."""
    real_dir, tree_dir = Path(real_dir), Path(tree_dir)
    on_disk = metadata.find_images(real_dir)  # {name: path}, the 64 of images/
    if not on_disk:
        raise sharding.ShardingError(f"{real_dir}: no images/*.png")
    (tree_dir / "images").mkdir(parents=True, exist_ok=True)
    label_path = metadata.find_label_file(real_dir)
    _symlink(tree_dir / label_path.name, label_path)
    for name, path in on_disk.items():
        _symlink(tree_dir / "images" / name, path)
    for list_name in (metadata.TRAIN_VAL_LIST, metadata.TEST_LIST):
        names = [n for n in metadata.read_list(metadata.find_file(real_dir, list_name)) if n in on_disk]
        _write_if_changed(tree_dir / list_name, "\n".join(names) + "\n")
    return tree_dir


def ensure_records(records_dir=RECORDS_DIR, real_dir=REAL_DIR, val_images=VAL_IMAGES,
                   encoding=ENCODING, seed=SEED, workers=2):
    """Shards the real PNGs into `records_dir` unless a manifest with these settings is there.
    -> the manifest (a dict). A file lock keeps two processes from sharding it at once."""
    records_dir = Path(records_dir)
    records_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(records_dir.parent / f".{records_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(records_dir) if (records_dir / MANIFEST).is_file() else None
        wanted = {"val_images": val_images, "encoding": encoding, "seed": seed}
        if manifest and all(manifest.get(key) == value for key, value in wanted.items()):
            return manifest
        tree = make_tree(records_dir.parent / f"{records_dir.name}.tree", real_dir)
        return sharding.shard(tree, records_dir, seed=seed, val_images=val_images,
                              workers=workers, encoding=encoding)


def full_resolution(records_dir, split):
    """The originals of `split` whole, at the records' full resolution (what --mode=evaluate scores for a codec)."""
    return pipeline.InputSpec(schema.ENCODED, reconstruction.original_size(records_dir, split)[0])


def split_names(records_dir, split=HELD_OUT):
    """The image names of a split's records, in record order."""
    inputs = full_resolution(records_dir, split)
    dataset = pipeline.make_dataset(records_dir, split, inputs, 1, training=False, include_metadata=True)
    return [example["filename"][0].numpy().decode() for example in dataset]


def held_out_dataset(records_dir=RECORDS_DIR, batch_size=1, split=HELD_OUT):
    """Whole held-out radiographs at their full resolution: batches {"image": float32 [B,1024,1024,1]}
    in [0, 1], exactly what --mode=evaluate scores for stage 2."""
    return pipeline.make_dataset(records_dir, split, full_resolution(records_dir, split), batch_size, training=False)


def held_out_images(records_dir=RECORDS_DIR, split=HELD_OUT):
    """-> (float32 [N,1024,1024,1] in [0, 1], the N image names), the held-out radiographs."""
    images = np.concatenate([batch["image"].numpy() for batch in held_out_dataset(records_dir, 1, split)])
    return images, split_names(records_dir, split)


def score_autoencoder(model, records_dir=RECORDS_DIR, split=HELD_OUT):
    """Mean PSNR (dB) / SSIM per method on the held-out whole radiographs.

    model: a stage-2 autoencoder (or AECNN) with "encoder" and "decoder" sub-models, or the path
    of its best.keras. -> {"images": N, "methods": {method: {"psnr", "ssim"}}} with the methods of
    tfcxr.evaluate.reconstruction.METHODS (autoencoder, autoencoder_8bit, bicubic[_8bit], bilinear[_8bit]).
    """
    if not isinstance(model, keras.Model):
        model = load_model(model)  # registers our custom layers first
    methods, count, _ = reconstruction.measure(model.get_layer(ENCODER), model.get_layer(DECODER),
                                               held_out_dataset(records_dir, 1, split))
    return {"images": count, "methods": methods}


def dead_decoder_channels(model):
    """Sub-pixel channels of the paper decoder's convolution that no latent in [0, 1] lifts above 0.

    The decoder is Conv2D(16, 3x3) -> PixelShuffle(4) -> ClippedReLU: channel c is output pixel
    (c // 4, c % 4) of every 4x4 block. Its largest pre-activation over latents in [0, 1] is its bias
    plus the sum of its positive kernel weights; if that is <= 0 the clip passes no gradient, so the
    channel stays 0 (black) for good. model: an autoencoder / AECNN with a "decoder", or a decoder;
    None for another decoder (no "decoder_conv": e.g. the residual codec).
    """
    decoder = model.get_layer(DECODER) if has_layer(model, DECODER) else model
    if not has_layer(decoder, "decoder_conv"):
        return None
    kernel, bias = decoder.get_layer("decoder_conv").get_weights()  # [3,3,1,16], [16]
    highest = bias + np.clip(kernel, 0, None).sum(axis=(0, 1, 2))  # [16]
    return [int(channel) for channel in np.flatnonzero(highest <= 0)]


def channels_off_on(model, images):
    """Decoder sub-pixel channels whose output is 0 on every pixel of `images` [N,H,W,1]: no gradient
    reaches them from these images, a looser test than dead_decoder_channels. None without "decoder_conv"."""
    decoder = model.get_layer(DECODER)
    if not has_layer(decoder, "decoder_conv"):
        return None
    latent = model.get_layer(ENCODER)(images, training=False)  # [N,H/4,W/4,1]
    before_shuffle = decoder.get_layer("decoder_conv")(latent).numpy()  # [N,H/4,W/4,16]
    return [int(channel) for channel in np.flatnonzero((before_shuffle > 0).sum(axis=(0, 1, 2)) == 0)]


def _symlink(link, target):
    if link.is_symlink() and link.resolve() == Path(target).resolve():
        return
    link.unlink(missing_ok=True)
    link.symlink_to(Path(target).resolve())


def _write_if_changed(path, text):
    """Leaves an identical file alone, so its mtime (part of sharding's resume key) stays."""
    if not (path.is_file() and path.read_text() == text):
        write_text(path, text)
