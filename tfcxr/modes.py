"""The modes of `python -m tfcxr.main`, in one place: train, evaluate, explain, export (and their flags).

    python -m tfcxr.main --flagfile=configs/stage3.cfg [--mode=train]
    python -m tfcxr.main --model_dir=RUN --mode=evaluate [--split=test] [--tta=none|tencrop] [--checkpoint=PATH]
    python -m tfcxr.main --model_dir=RUN --mode=explain
        [--images=a.png,b.png | --split=test --num_images=8] [--top_k=3] [--bbox_list=BBox_List_2017.csv]
    python -m tfcxr.main --model_dir=RUN --mode=export --export_dir=DIR
        [--model_name=NAME] [--version=N] [--max_image_side=8192] [--max_image_pixels=40000000]

The run owns its config: training writes model_dir/config.json (the stage and every TrainConfig
field); evaluate, explain and export read it, and a flag overrides it only when given explicitly
(on the command line or in a flagfile), so a run is evaluated and exported at the geometry it
trained with. A --stage that contradicts the run's stops with one line.
Each mode imports what it needs when it runs: a plain --mode=train loads none of tfcxr.evaluate
(figures, tables) or tfcxr.export (Keras itself still imports matplotlib when it is installed).
"""

import dataclasses
import json
from pathlib import Path

from absl import app, flags

from tfcxr.constants import BOOTSTRAP_RESAMPLES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.train import stages
from tfcxr.train.stages import CLASSIFICATION, RECONSTRUCTION, STAGES, Stage, TrainConfig

FLAGS = flags.FLAGS
CONFIG = "config.json"  # model_dir/config.json: the run's stage and TrainConfig
flags.DEFINE_string("split", "test", "evaluate / explain: the records' split")
flags.DEFINE_enum("tta", "none", ["none", "tencrop"], "evaluate: one resize, or the mean of ten crops")
flags.DEFINE_string("checkpoint", None, "evaluate / explain / export: the model (default: model_dir/best.keras)")
flags.DEFINE_integer("resamples", BOOTSTRAP_RESAMPLES, "evaluate: patient-level bootstrap resamples")
flags.DEFINE_list("images", None, "explain: image files (PNG / JPEG), comma-separated, instead of --split")
flags.DEFINE_integer("num_images", 8, "explain: the first images of --split")
flags.DEFINE_integer("top_k", 3, "explain: findings explained per image, the most probable first")
flags.DEFINE_string("bbox_list", None, "explain: BBox_List_2017.csv, to draw its boxes where an image has one")
flags.DEFINE_string("export_dir", None, "export: base folder; writes <export_dir>/<model_name>/<version>/")
flags.DEFINE_string("model_name", None, "export: the TF Serving model name (default: the stage's export name)")
flags.DEFINE_integer("version", None, "export: version folder (default: one more than the highest there)")
flags.DEFINE_integer("max_image_side", MAX_IMAGE_SIDE, "explain --images / export: refuse images whose header "
                     "declares more pixels a side (export: recorded in the SavedModel)")
flags.DEFINE_integer("max_image_pixels", MAX_IMAGE_PIXELS, "explain --images / export: refuse images whose header "
                     "declares more pixels in all (export: recorded in the SavedModel)")


def stage_of(name, where):
    """The Stage called (or numbered) `name`; one line naming `where` it was asked for otherwise."""
    try:
        return STAGES[name]
    except KeyError as error:
        raise ValueError(f"{where}: {error.args[0]}") from None


def flag_config():
    """The TrainConfig of the flags alone."""
    return TrainConfig(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(TrainConfig)})


def saved_run(model_dir):
    """model_dir/config.json as a dict, {} when the run has none (yet)."""
    path = Path(model_dir) / CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}


def run_stage(saved, model_dir):
    """The run's stage: config.json's, which an explicit --stage must agree with; else --stage."""
    asked = stage_of(FLAGS.stage, "--stage") if FLAGS.stage is not None else None
    if "stage" not in saved:
        if asked is None:
            raise app.UsageError(f"--mode={FLAGS.mode} needs --stage (no {CONFIG} in {model_dir})")
        return asked
    trained = stage_of(saved["stage"], Path(model_dir) / CONFIG)
    if asked is not None and asked is not trained:
        raise ValueError(f"--stage={FLAGS.stage} ({asked.name}) contradicts {Path(model_dir) / CONFIG}: the run "
                         f"trains {trained.name}; drop --stage or pick another --model_dir")
    return trained


def run_settings(model_dir):
    """(stage, config) of the run: config.json, where a flag given explicitly overrides a field."""
    saved = saved_run(model_dir)
    fields = {}
    for field in dataclasses.fields(TrainConfig):
        flag = FLAGS[field.name]
        fields[field.name] = flag.value if flag.present or field.name not in saved else saved[field.name]
    return run_stage(saved, model_dir), TrainConfig(**fields)


def _model_dir():
    if not FLAGS.model_dir:
        raise app.UsageError(f"--mode={FLAGS.mode} needs --model_dir")
    return Path(FLAGS.model_dir)


def _load(model_dir):
    from tfcxr.models import load_model

    checkpoint = Path(FLAGS.checkpoint or model_dir / "best.keras")
    return load_model(checkpoint), checkpoint


def evaluation_inputs(stage: Stage, config: TrainConfig, model):
    """What evaluate and export feed `model`: the stage's inputs at the run's sizes, or a codec
    alone's at full resolution (reconstruction.measured_inputs): one rule, so the two agree."""
    from tfcxr.evaluate.reconstruction import measured_inputs

    return measured_inputs(model, stage.input_spec(config), config.records_dir, FLAGS.split)


def train():
    from tfcxr.storage import write_json
    from tfcxr.train import loop, strategy

    if not (FLAGS.records_dir and FLAGS.model_dir):
        raise app.UsageError("--mode=train needs --records_dir and --model_dir")
    stage = run_stage(saved_run(FLAGS.model_dir), FLAGS.model_dir)  # a resumed run keeps its stage
    distribution = strategy.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    config = flag_config()
    model_dir = Path(config.model_dir)
    chief = strategy.is_chief(distribution)
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
        run = {"stage": stage.name, "strategy": FLAGS.strategy, "cpu_replicas": FLAGS.cpu_replicas}
        write_json(model_dir / CONFIG, {**run, **dataclasses.asdict(config)})
    loop.train(stage, config, distribution)
    if chief:
        print_best(model_dir / "log.csv")


def print_best(log_path):
    """The epoch of lowest val_loss in log.csv, with its mean val AUC when the stage has one."""
    import pandas as pd

    log = pd.read_csv(log_path)
    best = log.loc[log["val_loss"].idxmin()]
    auc = f", val mean AUC {best['val_auc']:.4f}" if "val_auc" in log else ""
    print(f"best val_loss {best['val_loss']:.5f} at epoch {int(best['epoch']) + 1}{auc}")


def evaluate():
    """Classifiers: Table 1 with CIs; codecs (resize protocol): PSNR / SSIM against resizing."""
    from tfcxr.evaluate import classification, reconstruction, runs

    model_dir = _model_dir()
    stage, config = run_settings(model_dir)
    if not config.records_dir:
        raise app.UsageError("--mode=evaluate needs --records_dir")
    if FLAGS.tta != "none" and CLASSIFICATION not in stage.evaluations:
        raise app.UsageError(f"--tta=tencrop applies to classifiers, not to {stage.name}")
    model, checkpoint = _load(model_dir)
    inputs = evaluation_inputs(stage, config, model)
    common = dict(split=FLAGS.split, stage=stage.name, batch_size=config.batch_size, checkpoint=checkpoint)
    if CLASSIFICATION in stage.evaluations:
        summary = classification.evaluate_classifier(
            model, config.records_dir, model_dir, inputs=inputs, tta=FLAGS.tta, resamples=FLAGS.resamples,
            seed=config.seed, **common)
        mean = summary["auc"]["Mean"]
        print(f"mean ROC-AUC {mean['auc']:.4f} [{mean['ci_low']:.4f}, {mean['ci_high']:.4f}] on {summary['images']} "
              f"images ({summary['protocol']}; labels {summary['label_file']})")
        print(f"wrote {runs.eval_dir(model_dir, FLAGS.split, FLAGS.tta)}/")
    if RECONSTRUCTION in stage.evaluations and FLAGS.tta == "none":
        summary = reconstruction.evaluate_reconstruction(model, config.records_dir, model_dir, inputs=inputs,
                                                         **common)
        for name, values in summary["methods"].items():
            print(f"{name:18s} PSNR {values['psnr']:6.2f} dB  SSIM {values['ssim']:.4f}")
        print(f"wrote {Path(model_dir) / 'eval' / FLAGS.split / 'reconstruction.md'}")


def explain():
    """Grad-CAM overlays of the top findings of --images, or of the first --num_images of --split."""
    from tfcxr.evaluate import gradcam

    model_dir = _model_dir()
    stage, config = run_settings(model_dir)
    if CLASSIFICATION not in stage.evaluations:
        raise app.UsageError(f"--mode=explain needs a classifier; {stage.name} is not one")
    inputs = stage.input_spec(config)
    if FLAGS.images:
        images = gradcam.file_images(FLAGS.images, inputs.eval_size, FLAGS.max_image_side, FLAGS.max_image_pixels)
    elif config.records_dir:
        images = gradcam.split_images(config.records_dir, FLAGS.split, inputs, FLAGS.num_images)
    else:
        raise app.UsageError("--mode=explain needs --images, or --records_dir (with --split, --num_images)")
    boxes = gradcam.read_boxes(FLAGS.bbox_list) if FLAGS.bbox_list else None
    model, _ = _load(model_dir)
    rows = gradcam.explain(model, images, model_dir, top_k=FLAGS.top_k, boxes=boxes,
                           label_names=stages.label_names(config))
    for row in rows:
        inside = f", {row['mass_in_box']:.0%} of the heat in its box" if row["mass_in_box"] is not None else ""
        print(f"{row['image']}: {row['rank']}. {row['label']} {row['probability']:.3f}{inside}")
    print(f"wrote {model_dir / 'explain'}/")


def export():
    """A TF Serving SavedModel of the run's model, with the signatures of what it does."""
    from tfcxr.data import schema
    from tfcxr.evaluate import runs
    from tfcxr.export import saved_model

    model_dir = _model_dir()
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir / CONFIG}: not found; export reads the run's stage and sizes from it")
    stage, config = run_settings(model_dir)
    if stage.export_name is None:
        raise app.UsageError(f"--mode=export: {stage.name} has no export")
    if not FLAGS.export_dir:
        raise app.UsageError("--mode=export needs --export_dir")
    model, checkpoint = _load(model_dir)
    inputs = evaluation_inputs(stage, config, model)
    # image/small inputs serve what evaluation reads: image/small as the sharder made it, then the resize
    small = runs.small_size(config.records_dir) if inputs.feature == schema.SMALL else None
    path = saved_model.export(model, FLAGS.export_dir, image_size=inputs.eval_size, version=FLAGS.version,
                              model_name=FLAGS.model_name or stage.export_name,
                              max_image_side=FLAGS.max_image_side, max_image_pixels=FLAGS.max_image_pixels,
                              small_size=small, label_names=stages.label_names(config))
    first = f"image/small {small}x{small}, then " if small else ""
    print(f"exported {checkpoint} ({first}{inputs.eval_size}x{inputs.eval_size} inputs) to {path}")
    print(f"image_bytes refuses headers above {FLAGS.max_image_side} pixels a side or {FLAGS.max_image_pixels} pixels")


MODES = {"train": train, "evaluate": evaluate, "explain": explain, "export": export}
