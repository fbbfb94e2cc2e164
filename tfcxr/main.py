"""Command line: python -m tfcxr.main --flagfile=configs/<stage>.cfg [--mode=train|evaluate|explain|export].

The run's flags live here, flat, one per field of tfcxr.config.RunConfig (config.FLAGS maps each
to its place in the tree; --codec_<parameter> sets a codec parameter); the modes, and their own
flags, in tfcxr/modes.py. Every flagfile names its stage (--stage=baseline|autoencoder|aecnn, or the
paper's 1|2|3); a --stage that contradicts another (command line against flagfile, or against
the run's config.json) stops with one line.
"""

import dataclasses
import os
import sys

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)

from absl import app, flags, logging

from tfcxr import modes
from tfcxr.config import RunConfig
from tfcxr.constants import LR_SCHEDULES, SMALL_SIZE
from tfcxr.models import BACKBONES, CODECS
from tfcxr.stages import STAGES
from tfcxr.train import loop, strategy

FLAGS = flags.FLAGS
DEFAULTS = RunConfig("baseline")
default = DEFAULTS.get
flags.DEFINE_string("mode", "train", f"what to do: one of {', '.join(modes.MODES)}")
flags.DEFINE_string("stage", None, "the stage to train (every flagfile names its own): "
                    + ", ".join(f"{name} ({stage.number})" for name, stage in STAGES.items())
                    + "; a resumed run, evaluate, explain and export read it from the run's config.json")
# data
flags.DEFINE_string("records_dir", None, "TFRecords and manifest.json of tools/shard_cxr14.py (a path or a URL)")
flags.DEFINE_integer("batch_size", default("data.batch_size"), "global batch size, over all replicas and workers")
flags.DEFINE_integer("image_size", None, "crop / patch / resize size (default: the stage's)")
flags.DEFINE_integer("resize_size", None, f"stage 1: resize before the crop (default: {SMALL_SIZE})")
flags.DEFINE_enum("augment", default("data.augment"), ["bl5", "fmix"], "stage 1 augmentation")
flags.DEFINE_integer("patches_per_image", default("data.patches_per_image"),
                     "stage 2 training: random patches cut from each decoded original (1: the paper's loader)",
                     lower_bound=1)
flags.DEFINE_enum("codec_validation", None, ["full", "resize"],
                  "stage 2 validation: whole originals at their own size through the stored latent (full), or "
                  "--image_size resizes (resize, the paper's); default: the codec's own (residual full, paper resize)")
# model
flags.DEFINE_enum("backbone", default("model.backbone"), list(BACKBONES), "the classifier's trunk (models.BACKBONES)")
flags.DEFINE_string("weights", default("model.weights"), "stage 1 DenseNet121 initialisation: imagenet, none or a local .h5")
flags.DEFINE_string("codec", default("model.codec.kind"),
                    f"stages 2 and 3: the codec, one of {', '.join(CODECS)} (stage 3: the codec of --init_codec's run)")
flags.DEFINE_alias("autoencoder", "codec")
for codec_name, codec_class in CODECS.items():  # --codec_<parameter>: the codec's own parameters
    for field in dataclasses.fields(codec_class.Params):
        if f"codec_{field.name}" not in FLAGS:
            flags.DEFINE_integer(f"codec_{field.name}", None, f"--codec={codec_name}: {field.name} "
                                 f"(default {field.default})")
flags.DEFINE_alias("residual_width", "codec_width")
flags.DEFINE_alias("residual_encoder_depth", "codec_encoder_depth")
flags.DEFINE_alias("residual_decoder_depth", "codec_decoder_depth")
# optimizer and schedule
flags.DEFINE_float("learning_rate", default("optimizer.learning_rate"), "Adam learning rate")
flags.DEFINE_enum("lr_schedule", default("optimizer.schedule"), list(LR_SCHEDULES),
                  "plateau: the reference's ReduceLROnPlateau on val_loss (x0.1 after 5 epochs without progress); "
                  "cosine: --learning_rate decays to 0 along a half cosine over --epochs x --steps_per_epoch")
flags.DEFINE_float("classification_weight", default("optimizer.classification_weight"),
                   "stage 3: w in w * BCE + (1 - w) * MSE (the paper's 0.9)")
flags.DEFINE_float("latent_rate_weight", default("optimizer.latent_rate_weight"),
                   "stage 2: w in MSE + w * the latent's mean absolute neighbour difference in 8-bit levels "
                   "(a lossless coder's residual: smaller stores in fewer bytes); 0: MSE alone")
flags.DEFINE_float("latent_rate_budget", default("optimizer.latent_rate_budget"),
                   "stage 2, with --latent_rate_weight: r > 0 makes the rate term w * max(0, the batch's latent "
                   "rate - r * its 8-bit bicubic thumbnails' rate): a cap relative to the thumbnail; 0: w * rate")
flags.DEFINE_integer("epochs", default("schedule.epochs"), "epochs in all (a resumed run continues to this many)")
flags.DEFINE_integer("steps_per_epoch", None, "train steps per epoch (default: one pass)")
flags.DEFINE_integer("val_steps", None, "validation steps per epoch (default: one pass over val)")
# init
flags.DEFINE_string("init_classifier", None, "stages 1 and 3: the .keras whose classifier the run starts from "
                    "(stage 1's best.keras, or tools/import_torch.py's output)")
flags.DEFINE_string("init_codec", None, "stages 2 and 3: the .keras whose codec the run starts from (stage 2's best.keras)")
flags.DEFINE_alias("init_autoencoder", "init_codec")
# runtime
flags.DEFINE_string("model_dir", None, "the run: checkpoints/, best.keras, log.csv, tensorboard/, config.json")
flags.DEFINE_enum("strategy", default("runtime.strategy"), list(strategy.STRATEGIES), "tf.distribute strategy")
flags.DEFINE_integer("cpu_replicas", default("runtime.cpu_replicas"),
                     "split the CPU into this many logical devices (mirrored on a CPU)")
flags.DEFINE_enum("mixed_precision", default("runtime.mixed_precision"), list(loop.POLICIES), "mixed precision policy")
flags.DEFINE_integer("seed", default("runtime.seed"), "seed of weights, shuffling and augmentation")
flags.DEFINE_bool("deterministic", default("runtime.deterministic"), "tf.config.experimental.enable_op_determinism()")
flags.DEFINE_bool("sync_batchnorm", None,
                  "BatchNorm statistics over the global batch (all replicas); default: on with more than one replica")
flags.DEFINE_bool("jit_compile", default("runtime.jit_compile"), "XLA-compile the train step (GPUs; slower on CPUs)")
flags.DEFINE_integer("log_every", default("runtime.log_every"), "steps between progress and TensorBoard batch-loss updates")
flags.DEFINE_integer("checkpoint_every", default("runtime.checkpoint_every"),
                     "steps between mid-epoch checkpoints (0: none)")
flags.DEFINE_integer("preview_images", default("runtime.preview_images"), "val images in TensorBoard (stages 2 and 3)")


def stage_flags(argv):
    """[(value, where)] of every --stage in argv, flagfiles read: where is the flagfile or "the command line"."""
    found = []
    args = iter(argv[1:])
    for arg in args:
        name, _, value = arg.partition("=")
        if name in ("--flagfile", "--stage") and not value:
            value = next(args, "")  # --flag value
        if name == "--flagfile":
            found += [(inner.partition("=")[2], value) for inner in FLAGS.read_flags_from_files([f"--flagfile={value}"])
                      if inner.startswith("--stage=")]
        elif name == "--stage":
            found.append((value, "the command line"))
    return found


def check_stage_flags(argv):
    """One line and exit 1 when two --stage values (command line, flagfiles) name different stages."""
    try:
        found = stage_flags(argv)
        named = {STAGES[value].name for value, _ in found}
    except KeyError as error:
        raise SystemExit(f"error: {error.args[0]}")
    except flags.Error as error:  # a flagfile that cannot be read
        raise SystemExit(f"error: {error}")
    if len(named) > 1:
        said = " contradicts ".join(f"--stage={value} ({where})" for value, where in found)
        raise SystemExit(f"error: {said}: name one stage (each flagfile names its own)")


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's Python INFO lines (checkpoint saving...); -v 0 shows them
    if FLAGS.mode not in modes.MODES:
        raise app.UsageError(f"--mode={FLAGS.mode}: expected one of {', '.join(modes.MODES)}")
    try:
        modes.MODES[FLAGS.mode]()
    except (FileNotFoundError, ValueError, loop.TrainingStopped) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except loop.WorkersDisagree as error:  # every worker stops here; a normal exit can hang in collectives
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(1)
    except loop.Preempted as stop:  # checkpointed; exit 128 + the signal at once (collectives can hang at exit)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)


if __name__ == "__main__":
    check_stage_flags(sys.argv)
    app.run(main)
