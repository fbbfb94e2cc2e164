"""The evaluation modes of `python -m tfcxr.main`: evaluate, explain, export (and their flags).

    python -m tfcxr.main --stage=3 --flagfile=configs/stage3.cfg --mode=evaluate [--split=test]
        [--tta=none|tencrop] [--checkpoint=PATH]
    python -m tfcxr.main --stage=3 --flagfile=configs/stage3.cfg --mode=explain
        [--images=a.png,b.png | --split=test --num_images=8] [--top_k=3] [--bbox_list=BBox_List_2017.csv]
    python -m tfcxr.main --stage=3 --flagfile=configs/stage3.cfg --mode=export --export_dir=DIR
        [--model_name=tfcxr_aecnn] [--version=N] [--max_image_side=8192] [--max_image_pixels=40000000]

Each reads the run's model (--checkpoint, default model_dir/best.keras) and writes under the
run's model_dir (export: under --export_dir). The stage, records and sizes come from the same
flags (the training flagfile) as training.
"""

import json
from pathlib import Path

from absl import app, flags

from tfcxr.constants import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, SMALL_SIZE, STAGE3_CROP
from tfcxr.evaluate import classification, gradcam, reconstruction, runs
from tfcxr.export import saved_model
from tfcxr.models import load_model

FLAGS = flags.FLAGS
flags.DEFINE_string("split", "test", "evaluate / explain: the records' split")
flags.DEFINE_enum("tta", "none", ["none", "tencrop"], "evaluate: one resize, or the mean of ten crops")
flags.DEFINE_string("checkpoint", None, "evaluate / explain / export: the model (default: model_dir/best.keras)")
flags.DEFINE_integer("resamples", classification.RESAMPLES, "evaluate: patient-level bootstrap resamples")
flags.DEFINE_list("images", None, "explain: image files (PNG / JPEG), comma-separated, instead of --split")
flags.DEFINE_integer("num_images", 8, "explain: the first images of --split")
flags.DEFINE_integer("top_k", 3, "explain: findings explained per image, the most probable first")
flags.DEFINE_string("bbox_list", None, "explain: BBox_List_2017.csv, to draw its boxes where an image has one")
flags.DEFINE_string("export_dir", None, "export: base folder; writes <export_dir>/<model_name>/<version>/")
flags.DEFINE_string("model_name", None, "export: tfcxr_d121 (stage 1) or tfcxr_aecnn (stage 3) by default")
flags.DEFINE_integer("version", None, "export: version folder (default: one more than the highest there)")
flags.DEFINE_integer("max_image_side", MAX_IMAGE_SIDE, "explain --images / export: refuse images whose header "
                     "declares more pixels a side (export: recorded in the SavedModel)")
flags.DEFINE_integer("max_image_pixels", MAX_IMAGE_PIXELS, "explain --images / export: refuse images whose header "
                     "declares more pixels in all (export: recorded in the SavedModel)")


def eval_size(stage, image_size, resize_size):
    """The side of the whole-image evaluation resize: stage 1 resize_size, stage 3 image_size."""
    return (resize_size or SMALL_SIZE) if stage == 1 else (image_size or STAGE3_CROP)


def _model_dir():
    if not FLAGS.model_dir:
        raise app.UsageError(f"--mode={FLAGS.mode} needs --model_dir")
    return Path(FLAGS.model_dir)


def _load(model_dir):
    checkpoint = Path(FLAGS.checkpoint or model_dir / "best.keras")
    return load_model(checkpoint), checkpoint


def evaluate():
    """Stage 1 / 3: Table 1 with CIs; stage 2 / 3 (resize protocol): PSNR / SSIM against resizing."""
    model_dir = _model_dir()
    if not FLAGS.records_dir:
        raise app.UsageError("--mode=evaluate needs --records_dir")
    if FLAGS.stage == 2 and FLAGS.tta != "none":
        raise app.UsageError("--tta=tencrop applies to classifiers (stages 1 and 3)")
    model, checkpoint = _load(model_dir)
    common = dict(split=FLAGS.split, stage=FLAGS.stage, batch_size=FLAGS.batch_size, checkpoint=checkpoint)
    if FLAGS.stage in (1, 3):
        summary = classification.evaluate_classifier(
            model, FLAGS.records_dir, model_dir, tta=FLAGS.tta, image_size=FLAGS.image_size,
            resize_size=FLAGS.resize_size, resamples=FLAGS.resamples, seed=FLAGS.seed, **common)
        mean = summary["auc"]["Mean"]
        print(f"mean ROC-AUC {mean['auc']:.4f} [{mean['ci_low']:.4f}, {mean['ci_high']:.4f}] on {summary['images']} "
              f"images ({summary['protocol']}; labels {summary['label_file']})")
        print(f"wrote {runs.eval_dir(model_dir, FLAGS.split, FLAGS.tta)}/")
    if FLAGS.stage in (2, 3) and FLAGS.tta == "none":
        image_size = FLAGS.image_size if FLAGS.stage == 3 else None  # stage 2: full resolution
        summary = reconstruction.evaluate_reconstruction(model, FLAGS.records_dir, model_dir, image_size=image_size,
                                                         **common)
        for name, values in summary["methods"].items():
            print(f"{name:18s} PSNR {values['psnr']:6.2f} dB  SSIM {values['ssim']:.4f}")
        print(f"wrote {Path(model_dir) / 'eval' / FLAGS.split / 'reconstruction.md'}")


def explain():
    """Grad-CAM overlays of the top findings of --images, or of the first --num_images of --split."""
    model_dir = _model_dir()
    if FLAGS.stage == 2:
        raise app.UsageError("--mode=explain needs a classifier (stage 1 or 3)")
    size = eval_size(FLAGS.stage, FLAGS.image_size, FLAGS.resize_size)
    if FLAGS.images:
        images = gradcam.file_images(FLAGS.images, size, FLAGS.max_image_side, FLAGS.max_image_pixels)
    elif FLAGS.records_dir:
        images = gradcam.split_images(FLAGS.records_dir, FLAGS.split, FLAGS.stage, FLAGS.num_images, size)
    else:
        raise app.UsageError("--mode=explain needs --images, or --records_dir (with --split, --num_images)")
    boxes = gradcam.read_boxes(FLAGS.bbox_list) if FLAGS.bbox_list else None
    model, _ = _load(model_dir)
    rows = gradcam.explain(model, images, model_dir, top_k=FLAGS.top_k, boxes=boxes)
    for row in rows:
        inside = f", {row['mass_in_box']:.0%} of the heat in its box" if row["mass_in_box"] is not None else ""
        print(f"{row['image']}: {row['rank']}. {row['label']} {row['probability']:.3f}{inside}")
    print(f"wrote {model_dir / 'explain'}/")


def export():
    """A TF Serving SavedModel of the stage 1 baseline or the stage 3 AECNN."""
    model_dir = _model_dir()
    if FLAGS.stage not in saved_model.MODEL_NAMES:
        raise app.UsageError("--mode=export exports a classifier: --stage=1 (D121) or --stage=3 (AECNN)")
    if not FLAGS.export_dir:
        raise app.UsageError("--mode=export needs --export_dir")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; the evaluation size is read from the run's config")
    config = json.loads(config_path.read_text())
    size = eval_size(FLAGS.stage, config.get("image_size"), config.get("resize_size"))
    # stage 1 serves what evaluation reads: image/small as the sharder made it, then resized to `size`
    small = runs.small_size(FLAGS.records_dir or config.get("records_dir")) if FLAGS.stage == 1 else None
    model, checkpoint = _load(model_dir)
    path = saved_model.export(model, FLAGS.export_dir, image_size=size, version=FLAGS.version,
                              model_name=FLAGS.model_name or saved_model.MODEL_NAMES[FLAGS.stage],
                              max_image_side=FLAGS.max_image_side, max_image_pixels=FLAGS.max_image_pixels,
                              small_size=small)
    first = f"image/small {small}x{small}, then " if small else ""
    print(f"exported {checkpoint} ({first}{size}x{size} inputs) to {path}")
    print(f"image_bytes refuses headers above {FLAGS.max_image_side} pixels a side or {FLAGS.max_image_pixels} pixels")


MODES = {"evaluate": evaluate, "explain": explain, "export": export}
