"""Seconds from a resumed epoch's start to its first batch: skipping decoded batches against skipping
serialized records (make_dataset's skip_batches), stage 3's inputs on 1024 x 1024 records.

    .venv/bin/python benchmarks/bench_resume.py [--patients=40] [--batch_size=2] [--step=500] [--encodings=raw,png]

Generates a synthetic ChestX-ray14 tree at 1024 px, shards it in each of --encodings, then builds the
stage-3 training pipeline (random 896 crop and flip, rotation on the device) seeded as an epoch,
resumed at --step: "decoded" reads --step batches and drops them (dataset.skip after the map, what a
resumed epoch did before), "records" passes skip_batches=--step (skipped before parse and decode).
Each is timed --rounds times from building the pipeline to its first batch, alternately; both first
batches are checked equal. Writes benchmarks/results/resume.md.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from tfcxr.constants import STAGE3_CROP
from tfcxr.data import pipeline, schema, sharding, synthetic
from tfcxr.storage import write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

flags.DEFINE_integer("patients", 40, "synthetic patients (about 2.5 images each)")
flags.DEFINE_integer("batch_size", 2, "global batch size")
flags.DEFINE_integer("step", 500, "the step the resumed epoch starts at")
flags.DEFINE_list("encodings", ["raw", "png"], "record encodings measured")
flags.DEFINE_integer("rounds", 3, "timings per variant (the table shows each and the median)")
flags.DEFINE_string("out", str(ROOT / "benchmarks" / "results" / "resume.md"), "the Markdown results")
FLAGS = flags.FLAGS


def first_batch(records_dir, skip_in_pipeline):
    """(seconds from building the resumed pipeline to its first batch, that batch's images)."""
    inputs = pipeline.InputSpec(schema.ENCODED, STAGE3_CROP, rotation="device")
    start = time.perf_counter()
    dataset = pipeline.make_dataset(records_dir, "train", inputs, FLAGS.batch_size, True, seed=3, repeat=True,
                                    skip_batches=FLAGS.step if skip_in_pipeline else 0)
    if not skip_in_pipeline:
        dataset = dataset.skip(FLAGS.step)
    batch = next(iter(dataset))
    return time.perf_counter() - start, batch["image"].numpy()


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        tree = synthetic.generate(Path(scratch) / "cxr14", num_patients=FLAGS.patients, image_size=1024, seed=0)
        rows = []
        for encoding in FLAGS.encodings:
            records_dir = str(Path(scratch) / f"records_{encoding}")
            manifest = sharding.shard(tree, records_dir, val_images=10, shard_mb=32, workers=2, encoding=encoding)
            seconds = {"decoded": [], "records": []}
            images = {}
            for _ in range(FLAGS.rounds):
                for name in seconds:
                    elapsed, images[name] = first_batch(records_dir, name == "records")
                    seconds[name].append(elapsed)
            np.testing.assert_array_equal(images["records"], images["decoded"])
            speedup = np.median(seconds["decoded"]) / np.median(seconds["records"])
            rows += [f"| {encoding} | {name} | {' / '.join(f'{s:.2f}' for s in values)} | {np.median(values):.2f} | "
                     f"{speedup:.1f}x |" for name, values in seconds.items()]
    train = manifest["splits"]["train"]["written"]
    lines = [
        "# Resume cost: seconds until a resumed epoch's first batch",
        "",
        f"Date: {time.strftime('%Y-%m-%d')}. Machine: {machine.describe(cores=len(os.sched_getaffinity(0)))} "
        "(the cores usable), shared with other work.",
        f"Command: `.venv/bin/python benchmarks/bench_resume.py --patients={FLAGS.patients} "
        f"--batch_size={FLAGS.batch_size} --step={FLAGS.step} --rounds={FLAGS.rounds} "
        f"--encodings={','.join(FLAGS.encodings)}`",
        "",
        f"Stage 3 training inputs (random {STAGE3_CROP} crop + flip of 1024 x 1024 records, rotation on the "
        f"device), {train} train records repeated, batch {FLAGS.batch_size}, resumed at step {FLAGS.step}: "
        f"{FLAGS.step * FLAGS.batch_size} records to pass over before the first batch.",
        "",
        "| encoding | skip | seconds per round | median | decoded / records |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "The first batches of both skips are identical (checked). What skipping records leaves is reading the "
        "skipped records' bytes through the record shuffle buffer (512 records of ~1 MB for originals); a raw "
        "record's decode is a reshape, so raw gains little, a PNG record's decode is most of the cost.",
    ]
    write_text(FLAGS.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
