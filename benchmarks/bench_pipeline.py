"""Images/s of each stage's training input pipeline on real-size 1024x1024 chest radiographs.

    .venv/bin/python benchmarks/bench_pipeline.py [--images=256] [--min_seconds=5]

Builds a ChestX-ray14 tree of --images copies (new names, new patients) of the 64 real PNGs in
../shared/cxr14-real/images (synthetic 1024 px images when that folder is absent), shards it with
tfcxr.data.sharding.shard in both encodings (png, raw), and measures, in the same run:
  - the bare PNG decode rate of the same PNGs (PIL, 2 processes): stage 2's and 3's upper bound
    for PNG records;
  - a reference loader per stage doing what the paper's PyTorch code does per sample: PIL
    decode of the 1024 PNG, then the stage's transforms with PIL / numpy (torchvision's
    transforms on PIL images), in a pool of 2 worker processes. Its workers return only the
    array's shape, so the reference pays no inter-process copy (in its favour);
  - tfcxr.data.pipeline.make_dataset(training=True, repeat=True) per stage and encoding; stage 2
    also with --patches_per_image K random patches per decoded original, its rate against the
    one-patch-per-decode pipeline (K=1) of the same round, and how many originals a batch holds.
Each run times a fixed number of images, grown after a warm-up until it lasts --min_seconds; each
pipeline run is paired with runs of its baselines just before and after it, as the machine may be
shared. Writes benchmarks/results/pipeline.md (--stages / --encodings pick rows; --out elsewhere).
"""

import functools
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from absl import app, flags
from PIL import Image, ImageEnhance

from tfcxr.storage import write_text

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT.parent / "shared" / "cxr14-real"

flags.DEFINE_integer("images", 256, "training images in the tree")
flags.DEFINE_float("min_seconds", 5.0, "least time per measurement")
flags.DEFINE_integer("rounds", 3, "rounds over all pipelines; the table shows medians")
flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "pipeline.md"), "the Markdown results")
flags.DEFINE_list("stages", ["1", "2", "3"], "stages measured")
flags.DEFINE_list("encodings", ["png", "raw"], "record encodings measured")
flags.DEFINE_list("patches_per_image", ["4", "8", "16", "32"], "stage 2: K values measured beside K=1")
FLAGS = flags.FLAGS

WORKERS = 2
# batch size per stage: stage 1 and 2 train small inputs in big batches, stage 3 896 px in small ones
BATCH = {1: 32, 2: 64, 3: 8}  # stage 2: configs/stage2.cfg
# (name, stage, make_dataset kwargs)
PIPELINES = [
    ("stage 1 BL5, rotation + contrast in pipeline", 1, {"rotation": "pipeline"}),
    ("stage 1 BL5, rotation=device", 1, {"rotation": "device"}),
    ("stage 1 FMix", 1, {"augment": "fmix"}),
    ("stage 2", 2, {}),  # one patch per decoded original (K=1); the --patches_per_image rows follow it
    ("stage 3, rotation in pipeline", 3, {"rotation": "pipeline"}),
    ("stage 3, rotation=device", 3, {"rotation": "device"}),
]


# -- the reference: per sample, PIL decode + torchvision-style PIL transforms (spawned workers) --

def _seed_worker():
    global RNG
    RNG = np.random.default_rng()


def _random_crop(image, size):
    x, y = RNG.integers(0, image.width - size + 1), RNG.integers(0, image.height - size + 1)
    return image.crop((x, y, x + size, y + size))


def _flip(image, method):
    return image.transpose(method) if RNG.random() < 0.5 else image


def _to_tensor(image):
    return np.asarray(image, np.float32) / 255.0  # ToTensor


def decode(path):
    with Image.open(path) as image:
        image.load()
    return image.size


def reference_stage1(path):
    image = Image.open(path).convert("RGB")  # the paper's loader
    image = _random_crop(image.resize((256, 256), Image.BILINEAR), 224)  # Resize(256), RandomCrop(224)
    image = _flip(image, Image.FLIP_LEFT_RIGHT)  # RandomHorizontalFlip
    image = image.rotate(RNG.uniform(-5, 5), resample=Image.NEAREST)  # RandomRotation(5)
    image = ImageEnhance.Contrast(image).enhance(RNG.uniform(0.75, 1.25))  # ColorJitter(contrast=0.25)
    return _to_tensor(image).shape


def reference_stage2(path):
    image = _random_crop(Image.open(path).convert("L"), 128)  # RandomCrop(128)
    image = _flip(_flip(image, Image.FLIP_LEFT_RIGHT), Image.FLIP_TOP_BOTTOM)
    return _to_tensor(image).shape


def reference_stage3(path):
    image = _random_crop(Image.open(path).convert("L"), 896)  # RandomCrop(896)
    image = image.rotate(RNG.uniform(-5, 5), resample=Image.NEAREST)  # RandomRotation(5)
    image = _flip(image, Image.FLIP_LEFT_RIGHT)  # RandomHorizontalFlip
    return _to_tensor(image).shape


# -- timing --

def timed_rate(run, min_seconds):
    """run(n) processes n images. Times a fixed count, grown until one run lasts min_seconds
    (the shorter runs before it are the warm-up). -> (images/s, images, seconds)."""
    images = 16
    run(images)
    while True:
        start = time.perf_counter()
        run(images)
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            return images / seconds, images, seconds
        images = int(images * min(10.0, 1.2 * min_seconds / max(seconds, 1e-3))) + 1


def pool_rate(pool, function, paths, min_seconds):
    def run(count):
        for _ in pool.imap_unordered(function, [paths[i % len(paths)] for i in range(count)], chunksize=4):
            pass

    return timed_rate(run, min_seconds)


def dataset_rate(dataset, batch_size, min_seconds):
    iterator = iter(dataset)
    next(iterator)  # fills the shuffle buffer

    def run(count):
        for _ in range(-(-count // batch_size)):
            next(iterator)

    _, images, seconds = timed_rate(run, min_seconds)
    images = -(-images // batch_size) * batch_size  # whole batches were timed
    return images / seconds, images, seconds


def tf_decode_dataset(records_dir):
    """TensorFlow's bare decode of the records' originals (read, parse, decode_png): the bound
    of the stage 2 and 3 pipelines on PNG records, as PIL's decode is the reference's."""
    import tensorflow as tf

    from tfcxr.data import pipeline, schema

    def decode(serialized):
        features = schema.parse(serialized, [schema.ENCODED, schema.FORMAT, schema.HEIGHT, schema.WIDTH])
        height, width = tf.cast(features[schema.HEIGHT], tf.int32), tf.cast(features[schema.WIDTH], tf.int32)
        return tf.shape(schema.decode_original(features[schema.ENCODED], features[schema.FORMAT], height, width))

    files = tf.data.Dataset.from_tensor_slices(pipeline.shard_files(records_dir, "train")).repeat()
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=pipeline.INTERLEAVE_FILES, num_parallel_calls=tf.data.AUTOTUNE)
    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH[2]).prefetch(tf.data.AUTOTUNE)


def stage_inputs(stage, kwargs):
    """(InputSpec of stage number `stage` with kwargs' "rotation" applied, the other make_dataset kwargs)."""
    import dataclasses

    from tfcxr.stages import STAGES

    options = dict(kwargs)
    inputs = STAGES[stage].task.inputs
    if "rotation" in options:
        inputs = dataclasses.replace(inputs, rotation=options.pop("rotation"))
    return inputs, options


def rotation_costs(path, min_seconds=2.0):
    """ms per 896 x 896 image of the 5-degree nearest rotation: TF (augment.random_rotation on a
    uint8 batch of BATCH[3], the op the pipeline runs) and PIL's rotate (one thread)."""
    import tensorflow as tf

    from tfcxr.data import augment

    crop = Image.open(path).convert("L").crop((0, 0, 896, 896))
    batch = tf.constant(np.repeat(np.asarray(crop)[None, ..., None], BATCH[3], axis=0))
    rotate = tf.function(lambda images, seed: augment.random_rotation(images, seed))
    tf_rate = timed_rate(lambda n: [rotate(batch, tf.constant([0, i])).numpy() for i in range(-(-n // BATCH[3]))], min_seconds)
    pil_rate = timed_rate(lambda n: [crop.rotate(RNG.uniform(-5, 5), resample=Image.NEAREST) for _ in range(n)], min_seconds)
    return 1000 / tf_rate[0], 1000 / pil_rate[0]


# -- the data --

def build_tree(tree, count):
    """`count` copies of the real PNGs (+16 for val/test), new names and patients, NIH layout."""
    images = sorted((REAL_DIR / "images").glob("*.png"))
    table = pd.read_csv(REAL_DIR / "metadata" / "Data_Entry_2017_v2020.csv", index_col=False)
    table = table.set_index("Image Index").loc[[p.name for p in images]].reset_index()
    (tree / "images").mkdir(parents=True)
    rows = []
    for i in range(count + 16):
        name = f"{i + 1:08d}_000.png"
        shutil.copyfile(images[i % len(images)], tree / "images" / name)
        rows.append({**table.iloc[i % len(images)].to_dict(), "Image Index": name, "Patient ID": i + 1, "Follow-up #": 0})
    pd.DataFrame(rows).to_csv(tree / "Data_Entry_2017_v2020.csv", index=False)
    names = [row["Image Index"] for row in rows]
    (tree / "train_val_list.txt").write_text("\n".join(names[: count + 8]) + "\n")
    (tree / "test_list.txt").write_text("\n".join(names[count + 8:]) + "\n")


def build_synthetic_tree(tree, count):
    from tfcxr.data import synthetic

    synthetic.generate(tree, num_patients=count, image_size=1024, layout="nih", seed=0)


def originals_per_batch(dataset, batches=30):
    """Mean number of distinct records (file names) in a batch."""
    return float(np.mean([len(set(batch["filename"].numpy())) for batch in dataset.take(batches)]))


def median_run(runs):
    """The median (rate, images, seconds) of a list of runs."""
    return sorted(runs)[len(runs) // 2]


def main(argv):
    del argv
    stages = [int(stage) for stage in FLAGS.stages]
    encodings = FLAGS.encodings
    pipelines = [row for row in PIPELINES if row[1] in stages]
    if 2 in stages:
        pipelines += [(f"stage 2, patches_per_image={k}", 2, {"patches_per_image": k})
                      for k in map(int, FLAGS.patches_per_image)]

    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        real = (REAL_DIR / "images").is_dir()
        (build_tree if real else build_synthetic_tree)(work / "raw", FLAGS.images)
        paths = sorted(str(p) for p in (work / "raw").rglob("*.png"))
        source = f"{len(paths)} copies of the 64 real PNGs in ../shared/cxr14-real/images" if real else f"{len(paths)} synthetic PNGs"

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from tfcxr.data import sharding
        from tfcxr.data.pipeline import PATCH_SHUFFLE, make_dataset

        shards = {}
        for encoding in encodings:
            manifest = sharding.shard(work / "raw", work / encoding, seed=0, val_images=8, shard_mb=16, workers=WORKERS, encoding=encoding)
            shards[encoding] = len(manifest["splits"]["train"]["shards"])

        # Spawned workers import this module only: PIL and numpy, no TensorFlow (as DataLoader workers).
        with multiprocessing.get_context("spawn").Pool(WORKERS, initializer=_seed_worker) as pool:
            baselines = {"decode": functools.partial(pool_rate, pool, decode, paths, FLAGS.min_seconds)}
            for stage, function in ((1, reference_stage1), (2, reference_stage2), (3, reference_stage3)):
                baselines[stage] = functools.partial(pool_rate, pool, function, paths, FLAGS.min_seconds)
            rows = [("TF decode only (tf.data: read, parse, decode_png)", 0, "png", shards["png"],
                     lambda: dataset_rate(tf_decode_dataset(work / "png"), BATCH[2], FLAGS.min_seconds))] if "png" in encodings else []
            mixing = {}  # (name, encoding) -> originals per batch
            for encoding in encodings:
                for name, stage, kwargs in pipelines:
                    def measure(stage=stage, encoding=encoding, kwargs=kwargs):
                        inputs, options = stage_inputs(stage, kwargs)
                        dataset = make_dataset(work / encoding, "train", inputs, BATCH[stage], True, seed=0, repeat=True,
                                               **options)
                        return dataset_rate(dataset, BATCH[stage], FLAGS.min_seconds)
                    rows.append((name, stage, encoding, shards[encoding], measure))
                    if stage == 2:
                        inputs, options = stage_inputs(2, kwargs)
                        mixing[name, encoding] = originals_per_batch(make_dataset(
                            work / encoding, "train", inputs, BATCH[2], True, seed=0, repeat=True, include_metadata=True,
                            **options))

            # The load of other work on this machine moves every rate, so each pipeline run sits between
            # its stage's reference and the decode bound, and its ratios compare runs minutes apart at most.
            baseline_runs = {key: [] for key in baselines}
            runs = {row[:3]: [] for row in rows}  # [(run, x reference, x decode)]
            for round_index in range(FLAGS.rounds):
                for name, stage, encoding, _, measure in rows:
                    reference = baselines[stage]() if stage else None
                    run = measure()
                    bound = baselines["decode"]()
                    baseline_runs["decode"].append(bound)
                    if stage:
                        baseline_runs[stage].append(reference)
                    one_patch = runs.get(("stage 2", 2, encoding))  # K=1 of this round, measured just before
                    versus_one = run[0] / one_patch[-1][0][0] if stage == 2 and one_patch else None
                    runs[name, stage, encoding].append((run, run[0] / reference[0] if stage else None, run[0] / bound[0], versus_one))
                    print(f"round {round_index + 1}: {name} ({encoding}): {run[0]:.1f} images/s, "
                          f"reference {reference[0] if stage else float('nan'):.1f}, decode {bound[0]:.1f}", flush=True)
        _seed_worker()
        tf_rotation_ms, pil_rotation_ms = rotation_costs(paths[0]) if 3 in stages else (None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    target = {1: ("reference", 10.0), 2: ("decode", 0.8), 3: ("reference", 1.5)}
    lines = [
        "# Input pipeline throughput (training, images/s)",
        "",
        f"Data: {source}, 1024x1024; sharded by `tfcxr.data.sharding.shard` (shard_mb=16) as PNG and as raw records.",
        f"Machine: {os.cpu_count()} CPU cores shared with other work (load average {os.getloadavg()[0]:.1f} at the end), no GPU.",
        f"Batch sizes: stage 1: {BATCH[1]}, stage 2: {BATCH[2]}, stage 3: {BATCH[3]}. Pipelines: `make_dataset(training=True, seed=0, repeat=True)`.",
        f"Each run times a fixed number of images (>= {FLAGS.min_seconds:g} s) after a warm-up. {FLAGS.rounds} rounds; in each, every "
        "pipeline run is preceded by a run of its stage's reference and followed by a run of the PNG decode bound, and its "
        "ratios are to those neighbours. Shown: median run, range of rates, median ratios.",
        "",
        "```bash",
        " ".join([".venv/bin/python benchmarks/bench_pipeline.py", *sys.argv[1:]]),
        "```",
        "",
        "| loader | encoding | train shards | images/s (median) | range | images timed / s (median run) | x reference (same stage) "
        "| x PNG decode bound | x stage 2 K=1 (same round) | originals per batch | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"decode": f"PNG decode only (PIL, {WORKERS} processes)", **{s: f"reference stage {s} (PIL + numpy, {WORKERS} processes)" for s in (1, 2, 3)}}
    for key, measured in baseline_runs.items():
        if not measured:
            continue  # a stage not selected
        rate, images, seconds = median_run(measured)
        rates = [m[0] for m in measured]
        lines.append(f"| {names[key]} | png files | - | {rate:.1f} | {min(rates):.1f}-{max(rates):.1f} | {images} / {seconds:.1f} | - | - | - | - | - | - |")
    for name, stage, encoding, shard_count, _ in rows:
        measured = runs[name, stage, encoding]
        rate, images, seconds = median_run([m[0] for m in measured])
        rates = [m[0][0] for m in measured]
        versus_reference = sorted(m[1] for m in measured)[len(measured) // 2] if stage else None
        versus_decode = sorted(m[2] for m in measured)[len(measured) // 2]
        versus_one = sorted(m[3] for m in measured)[len(measured) // 2] if measured[0][3] is not None else None
        cells = [name, encoding, shard_count, f"{rate:.1f}", f"{min(rates):.1f}-{max(rates):.1f}", f"{images} / {seconds:.1f}",
                 f"{versus_reference:.2f}" if stage else "-", f"{versus_decode:.2f}",
                 f"{versus_one:.2f}" if versus_one is not None else "-",
                 f"{mixing[name, encoding]:.1f} of {BATCH[2]}" if (name, encoding) in mixing else "-", "-", "-"]
        if versus_one is not None and name != "stage 2":
            cells[-2:] = [">= 5x stage 2 K=1", "yes" if versus_one >= 5 else "no"]
        elif stage:
            kind, factor = target[stage]
            ratio = versus_reference if kind == "reference" else versus_decode
            cells[-2:] = [f">= {factor:g}x {kind}", "yes" if ratio >= factor else "no"]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines += [
        "",
        "Notes:",
        "",
        "- The reference is the paper's per-sample work (torchvision transforms on PIL images, ToTensor) in "
        f"{WORKERS} worker processes; its workers return only the array shape, so it pays no copy to the parent.",
        "- Stage 1 reads `small/` shards (the 256 px PNG, ~5% of a record) whatever the encoding of the originals, "
        "so its png and raw rows measure the same pipeline twice.",
    ]
    if tf_rotation_ms is not None:
        lines.append(
            f"- Rotation of one 896 x 896 uint8 image by up to 5 degrees, nearest: {tf_rotation_ms:.1f} ms in TensorFlow "
            f"(ImageProjectiveTransformV3, batched), {pil_rotation_ms:.1f} ms in PIL (one thread), measured in this run. "
            "This is why training (tfcxr.train.tasks) rotates on the accelerator, in the training step: stage 3, and "
            "stage 1 BL5 with its contrast jitter (`rotation=\"device\"`, `augment.device_augmentation(stage)`).")
    if 2 in stages:
        lines.append(
            "- Stage 2 `patches_per_image=K` cuts K random flipped patches from each decoded original and mixes them "
            f"through a shuffle buffer of {PATCH_SHUFFLE} patches; `originals per batch` is the mean number of distinct "
            "records in 30 batches. Its rate is compared with the K=1 row measured just before it in the same round.")
    lines += [
        "- Raw records skip PNG decoding but hold 1 MiB per 1024 x 1024 image: ~110 GB for ChestX-ray14 against "
        "~42 GB as PNG.",
        "- The machine is shared: the range column shows how much the load of other work moved each rate.",
    ]
    write_text(Path(FLAGS.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
