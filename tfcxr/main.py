"""Command line: python -m tfcxr.main --flagfile=configs/<stage>.cfg [--mode=train|evaluate|explain|export].

The training flags (one per TrainConfig field) live here; the modes, and their own flags, in
tfcxr/modes.py. Every flagfile names its stage (--stage=baseline|autoencoder|aecnn, or the
paper's 1|2|3); a --stage that contradicts another (command line against flagfile, or against
the run's config.json) stops with one line.
"""

import dataclasses
import os
import sys

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)

from absl import app, flags, logging

from tfcxr import modes
from tfcxr.constants import SMALL_SIZE
from tfcxr.models.classifier import BACKBONES
from tfcxr.models.residual_codec import AUTOENCODERS
from tfcxr.train import loop, stages, strategy

FLAGS = flags.FLAGS
DEFAULTS = {field.name: field.default for field in dataclasses.fields(stages.TrainConfig)}
flags.DEFINE_string("mode", "train", f"what to do: one of {', '.join(modes.MODES)}")
flags.DEFINE_string("stage", None, "the stage to train (every flagfile names its own): "
                    + ", ".join(f"{name} ({stage.number})" for name, stage in stages.STAGES.items())
                    + "; evaluate / explain / export read it from the run's config.json")
flags.DEFINE_string("records_dir", None, "TFRecords and manifest.json of tools/shard_cxr14.py")
flags.DEFINE_string("model_dir", None, "the run: checkpoints/, best.keras, log.csv, tensorboard/, config.json")
flags.DEFINE_integer("epochs", DEFAULTS["epochs"], "epochs in all (a resumed run continues to this many)")
flags.DEFINE_integer("batch_size", 16, "global batch size, over all replicas and workers")
flags.DEFINE_integer("steps_per_epoch", DEFAULTS["steps_per_epoch"], "train steps per epoch (default: one pass)")
flags.DEFINE_integer("val_steps", DEFAULTS["val_steps"], "validation steps per epoch (default: one pass over val)")
flags.DEFINE_integer("image_size", DEFAULTS["image_size"], "crop / patch / resize size (default: the stage's)")
flags.DEFINE_integer("resize_size", DEFAULTS["resize_size"], f"stage 1: resize before the crop (default: {SMALL_SIZE})")
flags.DEFINE_enum("backbone", DEFAULTS["backbone"], list(BACKBONES), "the classifier's trunk (models.BACKBONES)")
flags.DEFINE_string("weights", DEFAULTS["weights"], "stage 1 DenseNet121 initialisation: imagenet, none or a local .h5")
flags.DEFINE_enum("augment", DEFAULTS["augment"], ["bl5", "fmix"], "stage 1 augmentation")
flags.DEFINE_enum("strategy", "mirrored", list(strategy.STRATEGIES), "tf.distribute strategy")
flags.DEFINE_integer("cpu_replicas", 1, "split the CPU into this many logical devices (mirrored on a CPU)")
flags.DEFINE_enum("mixed_precision", DEFAULTS["mixed_precision"], list(loop.POLICIES), "mixed precision policy")
flags.DEFINE_integer("seed", DEFAULTS["seed"], "seed of weights, shuffling and augmentation")
flags.DEFINE_bool("deterministic", DEFAULTS["deterministic"], "tf.config.experimental.enable_op_determinism()")
flags.DEFINE_bool("sync_batchnorm", DEFAULTS["sync_batchnorm"],
                  "BatchNorm statistics over the global batch (all replicas); default: on with more than one replica")
flags.DEFINE_bool("jit_compile", DEFAULTS["jit_compile"], "XLA-compile the train step (GPUs; measured slower on CPUs)")
flags.DEFINE_string("init_autoencoder", DEFAULTS["init_autoencoder"], "stage 3: stage 2's best.keras")
flags.DEFINE_string("init_classifier", DEFAULTS["init_classifier"], "stage 3: stage 1's best.keras")
flags.DEFINE_float("learning_rate", DEFAULTS["learning_rate"], "Adam learning rate")
flags.DEFINE_integer("log_every", DEFAULTS["log_every"], "steps between progress and TensorBoard batch-loss updates")
flags.DEFINE_integer("checkpoint_every", DEFAULTS["checkpoint_every"], "steps between mid-epoch checkpoints (0: none)")
flags.DEFINE_integer("preview_images", DEFAULTS["preview_images"], "val images in TensorBoard (stages 2 and 3)")
flags.DEFINE_enum("autoencoder", DEFAULTS["autoencoder"], list(AUTOENCODERS),
                  "stages 2 and 3: the paper's autoencoder, or the residual codec (bicubic + learned residuals)")
flags.DEFINE_integer("residual_width", DEFAULTS["residual_width"], "residual codec: channels of its hidden convolutions", lower_bound=1)
flags.DEFINE_integer("residual_decoder_depth", DEFAULTS["residual_decoder_depth"],
                     "residual codec: 3x3 convolutions of the decoder's detail branch", lower_bound=2)
flags.DEFINE_integer("residual_encoder_depth", DEFAULTS["residual_encoder_depth"],
                     "residual codec: convolutions of the encoder's correction branch", lower_bound=2)
flags.DEFINE_integer("patches_per_image", DEFAULTS["patches_per_image"],
                     "stage 2 training: random patches cut from each decoded original (1: the paper's loader)", lower_bound=1)


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
        named = {stages.STAGES[value].name for value, _ in found}
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


if __name__ == "__main__":
    check_stage_flags(sys.argv)
    app.run(main)
