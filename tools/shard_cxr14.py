"""Shards a ChestX-ray14 tree (NIH or Kaggle layout) into TFRecords + small/ + manifest.json.

    python tools/shard_cxr14.py --data_dir=workspace/raw/cxr14 --out_dir=workspace/records/cxr14

Resumable: run the same command again after a crash and it finishes what is left.
--out_dir may be a bucket (gs://bucket/records/cxr14): everything is written through tf.io.gfile.

    python tools/shard_cxr14.py --verify --out_dir=workspace/records/cxr14

reads every shard the manifest lists and checks its bytes, sha256 and records against it; one line
per bad shard and exit 1 when any.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfcxr.quiet  # noqa: F401,E402  (first: TensorFlow starts without its start-up noise; -v shows it)

from absl import app, flags  # noqa: E402

from tfcxr.constants import SMALL_SIZE, VAL_IMAGES
from tfcxr.data import sharding

flags.DEFINE_string("data_dir", None, "ChestX-ray14 tree: label CSV, official lists, images (not with --verify).")
flags.DEFINE_string("out_dir", None, "Where the shards and manifest.json go: a folder or a URL.", required=True)
flags.DEFINE_bool("verify", False, "Check the shards in --out_dir against its manifest instead of sharding.")
flags.DEFINE_integer("seed", 0, "Seed of the patient-wise validation split and the record order.")
flags.DEFINE_integer("val_images", VAL_IMAGES, "About this many train_val images go to validation.")
flags.DEFINE_float("shard_mb", 150, "About this many MiB per shard.")
flags.DEFINE_integer("workers", os.cpu_count(), "Processes writing shards.")
flags.DEFINE_bool("allow_missing", False, "Skip missing or unreadable images (listed in the manifest).")
flags.DEFINE_integer("small_size", SMALL_SIZE, "Side of image/small, the stage-1 resize.")
flags.DEFINE_enum("encoding", "png", sharding.ENCODINGS, "image/encoded as PNG or raw uint8 pixels.")
flags.DEFINE_string("label_file", None, "Label CSV (name under data_dir or a path); default: "
                    "Data_Entry_2017_v2020.csv when present, else Data_Entry_2017.csv.")
FLAGS = flags.FLAGS


def verify():
    try:
        checked, problems = sharding.verify(FLAGS.out_dir)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    for problem in problems:
        print(f"bad shard: {problem}", file=sys.stderr)
    if problems:
        sys.exit(f"error: {len(problems)} of {checked} shards bad in {FLAGS.out_dir}")
    print(f"{checked} shards match {FLAGS.out_dir}/manifest.json (bytes, sha256, records)")


def main(argv):
    del argv
    if FLAGS.verify:
        return verify()
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required (unless --verify)")
    try:
        manifest = sharding.shard(
            data_dir=FLAGS.data_dir, out_dir=FLAGS.out_dir, seed=FLAGS.seed,
            val_images=FLAGS.val_images, shard_mb=FLAGS.shard_mb, workers=FLAGS.workers,
            allow_missing=FLAGS.allow_missing, small_size=FLAGS.small_size,
            encoding=FLAGS.encoding, label_file=FLAGS.label_file,
        )
    except sharding.ShardingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    for split, summary in manifest["splits"].items():
        print(f"{split}: {summary['written']} of {summary['planned']} images, "
              f"{summary['patients']} patients, {len(summary['shards'])} shards")
    print(f"labels: {manifest['label_file']} ({manifest['label_version']}); "
          f"converted: {len(manifest['converted'])}; manifest: {FLAGS.out_dir}/manifest.json")


if __name__ == "__main__":
    app.run(main)
