"""The modes of `python -m tfcxr.main`, in one place: train, evaluate, explain, export (and their flags).

    python -m tfcxr.main --flagfile=configs/stage3.cfg [--mode=train]
    python -m tfcxr.main --model_dir=RUN [--epochs=N]                     (resume a run from its config.json)
    python -m tfcxr.main --model_dir=RUN --mode=evaluate [--split=test] [--tta=none|tencrop] [--checkpoint=PATH]
    python -m tfcxr.main --model_dir=RUN --mode=explain
        [--images=a.png,b.png | --split=test --num_images=8] [--top_k=3] [--bbox_list=BBox_List_2017.csv]
    python -m tfcxr.main --model_dir=RUN --mode=export --export_dir=DIR
        [--model_name=NAME] [--version=N] [--max_image_side=8192] [--max_image_pixels=40000000]

The run owns its config (tfcxr.config.RunConfig, model_dir/config.json): a new run writes it from
the flags, holding only what applies to its stage; a resumed run (config.json present) trains on
from it, and a flag that would change the run's math stops with one line before anything is
written (only config.RESUMABLE_CHANGES may differ: more epochs, logging, checkpoints, previews).
A stage may take fields from elsewhere (stage 3: its codec from --init_codec's saved spec); a flag
that contradicts them stops with one line. Evaluate, explain and export read config.json, and a
flag given explicitly (command line or flagfile) overrides it there, so a run is evaluated and
exported at the geometry it trained with.
Each mode imports what it needs when it runs: a plain --mode=train loads none of the evaluation
figures and tables.
"""

import json

from absl import app, flags

from tfcxr import config as config_lib
from tfcxr import storage
from tfcxr.config import CONFIG_FILE, RunConfig
from tfcxr.constants import BOOTSTRAP_RESAMPLES, LABELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.stages import STAGES, Stage

FLAGS = flags.FLAGS
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


def stage_of(name, where) -> Stage:
    """The Stage called (or numbered) `name`; one line naming `where` it was asked for otherwise."""
    try:
        return STAGES[name]
    except KeyError as error:
        raise ValueError(f"{where}: {error.args[0]}") from None


def given_flags() -> dict[str, object]:
    """{dotted config field: value} of the run's flags given explicitly (command line or flagfile)."""
    given = {}
    for name in FLAGS:
        flag = FLAGS[name]
        if not flag.present or name == "stage":
            continue
        try:
            given[config_lib.flag_path(flag.name)] = flag.value  # flag.name: an alias's target
        except KeyError:
            continue  # a mode's flag (--split, --export_dir...), not the run's
    return given


def config_path(model_dir) -> str:
    return storage.join(model_dir, CONFIG_FILE)


def saved_config(model_dir) -> RunConfig | None:
    """model_dir/config.json as a RunConfig, None when the run has none (yet)."""
    path = config_path(model_dir)
    if not storage.exists(path):
        return None
    try:
        return RunConfig.from_dict(json.loads(storage.read_text(path)))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a tfcxr run config ({error})") from None


def run_stage(saved: RunConfig | None, model_dir) -> Stage:
    """The run's stage: config.json's, which an explicit --stage must agree with; else --stage."""
    asked = stage_of(FLAGS.stage, "--stage") if FLAGS.stage is not None else None
    if saved is None:
        if asked is None:
            raise app.UsageError(f"--mode={FLAGS.mode} needs --stage (no {CONFIG_FILE} in {model_dir})")
        return asked
    trained = stage_of(saved.stage, config_path(model_dir))
    if asked is not None and asked is not trained:
        raise ValueError(f"--stage={FLAGS.stage} ({asked.name}) contradicts {config_path(model_dir)}: the run "
                         f"trains {trained.name}; drop --stage or pick another --model_dir")
    return trained


def applies(stage: Stage, path: str) -> bool:
    """Whether a dotted config field applies to `stage` (not in its task's omits)."""
    return not any(path == omitted or path.startswith(omitted + ".") for omitted in stage.task.omits)


def complete_codec(config: RunConfig) -> RunConfig:
    """model.codec with every parameter of its kind (defaults included), checked: what config.json records."""
    from tfcxr.models import make_codec

    return config.replace(**{"model.codec": make_codec(config.model.codec).config()})


def derived_fields(stage: Stage, config: RunConfig, given: dict) -> RunConfig:
    """`config` with the fields the stage takes from elsewhere (stage.task.derive); an explicit flag
    that contradicts one stops with one line naming both."""
    for path, value in stage.task.derive(config).items():
        if path == "model.codec":
            derived = config_lib.CodecConfig.from_dict(value)
            contradicting = [p for p in given if p.startswith("model.codec.")
                             and derived.to_dict().get(p.removeprefix("model.codec.")) != given[p]]
            if contradicting:
                source = config_lib.describe("init.codec") + "=" + str(config.init.codec)
                raise ValueError(f"{', '.join(config_lib.describe(p) + '=' + str(given[p]) for p in contradicting)} "
                                 f"contradicts {source}: its codec is {derived.to_dict()}; drop the codec flags "
                                 "(the run trains the codec it starts from)")
            config = config.replace(**{"model.codec": derived})
        else:
            config = config.replace(**{path: value})
    return config


def new_run_config(stage: Stage, given: dict) -> RunConfig:
    """A new run's config: defaults, the flags given, then what the stage derives."""
    config = RunConfig(stage.name).replace(**{path: value for path, value in given.items() if applies(stage, path)})
    config = derived_fields(stage, config, given)
    return complete_codec(config) if applies(stage, "model.codec") else config


def resumed_run_config(stage: Stage, saved: RunConfig, given: dict, model_dir) -> RunConfig:
    """A resumed run's config: config.json's; a flag that would change the run's math stops with one line."""
    changes = {}
    for path, value in given.items():
        if not applies(stage, path):
            continue
        current = saved.get(path) if not path.startswith("model.codec.") or path == "model.codec.kind" else \
            saved.model.codec.params.get(path.removeprefix("model.codec."))
        if value == current:
            continue
        upward = path != "schedule.epochs" or value >= current
        if path in config_lib.RESUMABLE_CHANGES and upward:
            changes[path] = value
            continue
        raise ValueError(f"{config_lib.describe(path)}={value} contradicts {config_path(model_dir)} "
                         f"({path} = {current}): a run keeps its config on resume (only more --epochs, logging, "
                         "checkpoints and previews may change); drop the flag or pick another --model_dir")
    return saved.replace(**changes) if changes else saved


def run_settings(model_dir) -> tuple[Stage, RunConfig]:
    """(stage, config) of an existing run for evaluate / explain / export: config.json, where a flag
    given explicitly overrides a field."""
    saved = saved_config(model_dir)
    stage = run_stage(saved, model_dir)
    config = saved or RunConfig(stage.name)
    given = {path: value for path, value in given_flags().items() if applies(stage, path)}
    return stage, config.replace(**given) if given else config


def _model_dir() -> str:
    if not FLAGS.model_dir:
        raise app.UsageError(f"--mode={FLAGS.mode} needs --model_dir")
    return FLAGS.model_dir


def _load(model_dir):
    from tfcxr.models import load_model

    checkpoint = FLAGS.checkpoint or storage.join(model_dir, "best.keras")
    return load_model(checkpoint), checkpoint


def _records(config: RunConfig, needed_by: str):
    from tfcxr.data.records import Records

    if not config.data.records_dir:
        raise app.UsageError(f"--mode={FLAGS.mode} needs --records_dir{needed_by}")
    return Records.open(config.data.records_dir)


def evaluation_inputs(stage: Stage, config: RunConfig):
    """What evaluate and export feed the model: the stage's inputs at the run's sizes (a codec alone
    reads each original at its own size in both: reconstruction.originals, CodecModule.compress)."""
    return stage.task.input_spec(config)


def train():
    from tfcxr.train import loop, strategy

    model_dir = _model_dir() if FLAGS.model_dir else None
    if model_dir is None:
        raise app.UsageError("--mode=train needs --model_dir (and --records_dir for a new run)")
    saved = saved_config(model_dir)
    stage = run_stage(saved, model_dir)  # a resumed run keeps its stage
    given = given_flags()
    if saved is None:
        config = new_run_config(stage, given)
    else:
        config = resumed_run_config(stage, saved, given, model_dir)
    records = _records(config, " (a new run)")
    distribution = strategy.make_strategy(config.runtime.strategy, config.runtime.cpu_replicas)
    chief = strategy.is_chief(distribution)
    if chief and config != saved:  # a new run, or more epochs: nothing else of a resumed run changes
        storage.makedirs(model_dir)
        storage.write_json(config_path(model_dir), config.to_dict(omit=stage.task.omits))
    loop.train(stage.task, config, distribution, records)
    if chief:
        print_best(storage.join(model_dir, "log.csv"))


def print_best(log_path):
    """The epoch of lowest val_loss in log.csv, with its mean val AUC when the stage has one."""
    import io

    import pandas as pd

    log = pd.read_csv(io.StringIO(storage.read_text(log_path)))
    best = log.loc[log["val_loss"].idxmin()]
    auc = f", val mean AUC {best['val_auc']:.4f}" if "val_auc" in log else ""
    print(f"best val_loss {best['val_loss']:.5f} at epoch {int(best['epoch']) + 1}{auc}")


def evaluate():
    """Every evaluator of the run's stage, in order (classifiers: Table 1 with CIs; codecs: PSNR / SSIM)."""
    from tfcxr.data import schema
    from tfcxr.data.pipeline import naming_bad_shards
    from tfcxr.evaluate.evaluators import EvalRun

    model_dir = _model_dir()
    stage, config = run_settings(model_dir)
    records = _records(config, "")
    if FLAGS.tta != "none" and not any(evaluator.tencrop for evaluator in stage.evaluators):
        raise app.UsageError(f"--tta=tencrop applies to classifiers, not to {stage.name}")
    model, checkpoint = _load(model_dir)
    run = EvalRun(model, records, model_dir, FLAGS.split, evaluation_inputs(stage, config),
                  config.data.batch_size, stage.name, checkpoint, FLAGS.tta, FLAGS.resamples, config.runtime.seed)
    with naming_bad_shards(records, FLAGS.split, small=run.inputs.feature == schema.SMALL):
        for evaluator in stage.evaluators:
            for line in evaluator.run(run):
                print(line)


def explain():
    """Grad-CAM overlays of the top findings of --images, or of the first --num_images of --split."""
    from tfcxr.data.records import Records
    from tfcxr.evaluate import gradcam
    from tfcxr.models import spec_of

    model_dir = _model_dir()
    stage, config = run_settings(model_dir)
    if not stage.classifies:
        raise app.UsageError(f"--mode=explain needs a classifier; {stage.name} is not one")
    inputs = stage.task.input_spec(config)
    if FLAGS.images:
        images = gradcam.file_images(FLAGS.images, inputs.eval_size, FLAGS.max_image_side, FLAGS.max_image_pixels)
    elif config.data.records_dir:
        images = gradcam.split_images(config.data.records_dir, FLAGS.split, inputs, FLAGS.num_images)
    else:
        raise app.UsageError("--mode=explain needs --images, or --records_dir (with --split, --num_images)")
    boxes = gradcam.read_boxes(FLAGS.bbox_list) if FLAGS.bbox_list else None
    model, _ = _load(model_dir)
    label_names = spec_of(model).get("labels") or Records.open(config.data.records_dir).label_names
    rows = gradcam.explain(model, images, model_dir, top_k=FLAGS.top_k, boxes=boxes, label_names=label_names)
    for row in rows:
        inside = f", {row['mass_in_box']:.0%} of the heat in its box" if row["mass_in_box"] is not None else ""
        print(f"{row['image']}: {row['rank']}. {row['label']} {row['probability']:.3f}{inside}")
    print(f"wrote {storage.join(model_dir, 'explain')}/")


def export():
    """A TF Serving SavedModel of the run's model, with its stage's serving module."""
    from tfcxr.data import schema
    from tfcxr.export import saved_model
    from tfcxr.models import spec_of

    model_dir = _model_dir()
    if not storage.exists(config_path(model_dir)):
        raise FileNotFoundError(f"{config_path(model_dir)}: not found; export reads the run's stage and sizes from it")
    stage, config = run_settings(model_dir)
    if stage.export_name is None:
        raise app.UsageError(f"--mode=export: {stage.name} has no export")
    if not FLAGS.export_dir:
        raise app.UsageError("--mode=export needs --export_dir")
    model, checkpoint = _load(model_dir)
    inputs = evaluation_inputs(stage, config)
    # image/small inputs serve what evaluation reads: image/small as the sharder made it (its size is in
    # the records' manifest), then the resize; originals need no records
    records = _records(config, " (image/small's size)") if inputs.feature == schema.SMALL else None
    small = records.small_size if records else None
    label_names = spec_of(model).get("labels") or (records.label_names if records else LABELS)
    path = saved_model.export(model, FLAGS.export_dir, image_size=inputs.eval_size, version=FLAGS.version,
                              model_name=FLAGS.model_name or stage.export_name,
                              max_image_side=FLAGS.max_image_side, max_image_pixels=FLAGS.max_image_pixels,
                              small_size=small, label_names=label_names, module=stage.serving)
    first = f"image/small {small}x{small}, then " if small else ""
    size = ("each image at its own size, cut to multiples of 4" if getattr(stage.serving, "own_size", False)
            else f"{first}{inputs.eval_size}x{inputs.eval_size} inputs")
    print(f"exported {checkpoint} ({size}) to {path}")
    print(f"image_bytes refuses headers above {FLAGS.max_image_side} pixels a side or {FLAGS.max_image_pixels} pixels")


MODES = {"train": train, "evaluate": evaluate, "explain": explain, "export": export}
