"""Writes a ChestX-ray14-shaped synthetic tree (CSV, lists, boxes, PNGs with planted findings).

    python tools/make_synthetic_cxr14.py --out_dir=workspace/cxr14-synthetic \
        [--num_patients=300] [--image_size=1024] [--layout=kaggle|nih] [--seed=0]

See tfcxr/data/synthetic.py for what each label looks like.
"""

import os
import sys

from absl import app, flags

from tfcxr.constants import ORIGINAL_SIZE
from tfcxr.data import synthetic

flags.DEFINE_string("out_dir", None, "Where to write the tree (must not exist, or be empty).")
flags.DEFINE_integer("num_patients", 300, "Patients; each has 1-5 images.",
                     lower_bound=len(synthetic.QUIRKS))
flags.DEFINE_integer("image_size", ORIGINAL_SIZE, "Side of the square PNGs, in pixels.")
flags.DEFINE_enum("layout", "kaggle", synthetic.LAYOUTS,
                  "kaggle: images_0NN/images/; nih: images/.")
flags.DEFINE_integer("seed", 0, "Same seed and flags: byte-identical tree.")
flags.DEFINE_bool("overwrite", False, "Replace out_dir if it holds a tree this tool wrote.")
flags.DEFINE_integer("workers", min(4, os.cpu_count() or 1), "Processes writing images.",
                     lower_bound=1)
flags.mark_flag_as_required("out_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        out_dir = synthetic.generate(
            FLAGS.out_dir, num_patients=FLAGS.num_patients, image_size=FLAGS.image_size,
            layout=FLAGS.layout, seed=FLAGS.seed, overwrite=FLAGS.overwrite,
            workers=FLAGS.workers, progress=True,
        )
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    app.run(main)
