"""PyTorch weights users already hold -> a tfcxr .keras model (tfcxr/models/torch_port.py does the work).

    python tools/import_torch.py --checkpoint=chexnet.pth.tar --architecture=densenet121 --out=runs/chexnet.keras
    python tools/import_torch.py --checkpoint=ae.safetensors --architecture=autoencoder --out=runs/ae.keras
    python tools/import_torch.py --checkpoint=aecnn.pth --architecture=aecnn --out=runs/aecnn.keras

--checkpoint: a .pth / .pt / .pth.tar (needs torch), .safetensors or .npz state dict, at the top
level or under "state_dict" / "model" / "model_state_dict"; DataParallel's "module." and CheXNet's
"densenet121." prefixes, torchvision's pre-0.4 DenseNet names and a Linear + Sigmoid head are read.
--architecture: densenet121 (torchvision's, any label count: the head says; becomes our stage-1
baseline, gray [B,H,W,1] in [0, 1] -> logits), autoencoder (the reproduction's: our stage 2) or aecnn
(our stage 3). The .keras file is what training writes (tfcxr.models' builders; BatchNorm epsilon
PyTorch's): evaluate / explain / export take it as --checkpoint, stage 3 as --init_classifier /
--init_autoencoder. A checkpoint that does not fit is refused with one line naming the first
missing, unexpected or mis-shaped tensor, and nothing is written.
"""

import sys

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)

from absl import app, flags

from tfcxr.models import torch_port
from tfcxr.train.callbacks import save_model_atomic

flags.DEFINE_string("checkpoint", None, "the PyTorch weights: .pth, .pt, .pth.tar, .safetensors or .npz", required=True)
flags.DEFINE_enum("architecture", None, torch_port.ARCHITECTURES, "what the checkpoint holds", required=True)
flags.DEFINE_string("out", None, "the .keras file to write", required=True)
flags.DEFINE_integer("num_labels", None, "check that the head has this many labels")
flags.DEFINE_list("label_names", None, "the head's labels in logit order, comma-separated (default: ChestX-ray14's "
                  "14 for a 14-label head, else label_0, label_1, ...); recorded in the model")
flags.DEFINE_bool("allow_pickle", False, "let torch.load run code pickled in the checkpoint (only a file you trust)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.out.endswith(".keras"):
        raise app.UsageError(f"--out={FLAGS.out}: the model file must end in .keras")
    try:
        state = torch_port.read_state_dict(FLAGS.checkpoint, FLAGS.allow_pickle)
        model = torch_port.import_state(state, FLAGS.architecture, FLAGS.num_labels, FLAGS.label_names,
                                        source=FLAGS.checkpoint)
    except torch_port.CheckpointError as error:
        sys.exit(f"error: {error}")
    save_model_atomic(model, FLAGS.out)
    head = ""
    if FLAGS.architecture != "autoencoder":
        sigmoid = any(torch_port.SIGMOID_HEAD.search(name) for name in state)
        labels = model.spec["labels"]
        head = (f"; head: {len(labels)} labels ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''})"
                + (", its Sigmoid dropped: the model returns logits" if sigmoid else ""))
    print(f"imported {FLAGS.checkpoint} ({len(state)} tensors) as {FLAGS.architecture}{head} -> {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
