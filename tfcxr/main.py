"""Command line: python -m tfcxr.main --stage=1|2|3 --flagfile=configs/stageN.cfg [--mode=train|evaluate|explain|export].

Modes live in MODES; each is a function of the parsed flags.
"""

import dataclasses
import os
import sys
from pathlib import Path

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)

import pandas as pd
from absl import app, flags, logging

from tfcxr import models
from tfcxr.constants import SMALL_SIZE
from tfcxr.evaluate.runs import write_json
from tfcxr.evaluate import modes as evaluation_modes
from tfcxr.train import loop, stages, strategy

FLAGS = flags.FLAGS
DEFAULTS = {field.name: field.default for field in dataclasses.fields(stages.TrainConfig)}
flags.DEFINE_string("mode", "train", "what to do: one of MODES (train, evaluate, explain, export)")
flags.DEFINE_integer("stage", 1, "1: D121 BL5 baseline, 2: autoencoder, 3: joint AECNN", lower_bound=1, upper_bound=3)
flags.DEFINE_string("records_dir", None, "TFRecords and manifest.json of tools/shard_cxr14.py")
flags.DEFINE_string("model_dir", None, "the run: checkpoints/, best.keras, log.csv, tensorboard/, config.json")
flags.DEFINE_integer("epochs", DEFAULTS["epochs"], "epochs in all (a resumed run continues to this many)")
flags.DEFINE_integer("batch_size", 16, "global batch size, over all replicas and workers")
flags.DEFINE_integer("steps_per_epoch", DEFAULTS["steps_per_epoch"], "train steps per epoch (default: one pass)")
flags.DEFINE_integer("val_steps", DEFAULTS["val_steps"], "validation steps per epoch (default: one pass over val)")
flags.DEFINE_integer("image_size", DEFAULTS["image_size"], "crop / patch / resize size (default: the stage's)")
flags.DEFINE_integer("resize_size", DEFAULTS["resize_size"], f"stage 1: resize before the crop (default: {SMALL_SIZE})")
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
flags.DEFINE_enum("autoencoder", DEFAULTS["autoencoder"], list(models.AUTOENCODERS),
                  "stages 2 and 3: the paper's autoencoder, or the residual codec (bicubic + learned residuals)")
flags.DEFINE_integer("residual_width", DEFAULTS["residual_width"], "residual codec: channels of its hidden convolutions", lower_bound=1)
flags.DEFINE_integer("residual_decoder_depth", DEFAULTS["residual_decoder_depth"],
                     "residual codec: 3x3 convolutions of the decoder's detail branch", lower_bound=2)
flags.DEFINE_integer("residual_encoder_depth", DEFAULTS["residual_encoder_depth"],
                     "residual codec: convolutions of the encoder's correction branch", lower_bound=2)
flags.DEFINE_integer("patches_per_image", DEFAULTS["patches_per_image"],
                     "stage 2 training: random patches cut from each decoded original (1: the paper's loader)", lower_bound=1)


def train_config():
    """The TrainConfig of the flags."""
    names = [field.name for field in dataclasses.fields(stages.TrainConfig)]
    return stages.TrainConfig(**{name: FLAGS[name].value for name in names})


def print_best(log_path):
    """The epoch of lowest val_loss in log.csv, with its mean val AUC when the stage has one."""
    log = pd.read_csv(log_path)
    best = log.loc[log["val_loss"].idxmin()]
    auc = f", val mean AUC {best['val_auc']:.4f}" if "val_auc" in log else ""
    print(f"best val_loss {best['val_loss']:.5f} at epoch {int(best['epoch']) + 1}{auc}")


def train():
    if not (FLAGS.records_dir and FLAGS.model_dir):
        raise app.UsageError("--mode=train needs --records_dir and --model_dir")
    distribution = strategy.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    config = train_config()
    model_dir = Path(config.model_dir)
    chief = strategy.is_chief(distribution)
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
        run = {"stage": FLAGS.stage, "strategy": FLAGS.strategy, "cpu_replicas": FLAGS.cpu_replicas}
        write_json(model_dir / "config.json", {**run, **dataclasses.asdict(config)})
    loop.train(stages.STAGES[FLAGS.stage], config, distribution)
    if chief:
        print_best(model_dir / "log.csv")


MODES = {"train": train, **evaluation_modes.MODES}  # evaluate, explain, export: tfcxr/evaluate/modes.py


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's Python INFO lines (checkpoint saving...); -v 0 shows them
    if FLAGS.mode not in MODES:
        raise app.UsageError(f"--mode={FLAGS.mode}: expected one of {', '.join(MODES)}")
    try:
        MODES[FLAGS.mode]()
    except (FileNotFoundError, ValueError, loop.TrainingStopped) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except loop.WorkersDisagree as error:  # every worker stops here; a normal exit can hang in collectives
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(1)


if __name__ == "__main__":
    app.run(main)
