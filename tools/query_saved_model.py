"""Query an exported SavedModel's serving_default in-process, as TF Serving would; print the 14 probabilities.

    python tools/query_saved_model.py --saved_model=workspace/exports/tfcxr_aecnn/1 a.png b.png

The same signature, inputs (encoded image bytes) and outputs that TF Serving exposes, without a
server: use it to check an export before deploying it (tools/serving_client.py talks to the server).
"""

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_client import image_files, table  # noqa: E402  (the REST client's checks and table)

flags.DEFINE_string("saved_model", None, "DIR/<model_name>/<version> written by --mode=export.")
FLAGS = flags.FLAGS


def main(argv):
    paths = image_files(argv)
    if not (Path(FLAGS.saved_model) / "saved_model.pb").is_file():
        sys.exit(f"error: {FLAGS.saved_model}: no saved_model.pb (export with --mode=export)")

    import tfcxr.quiet  # noqa: F401  (TensorFlow without its start-up noise; -v shows it)
    import tensorflow as tf

    serving_default = tf.saved_model.load(FLAGS.saved_model).signatures["serving_default"]
    outputs = serving_default(image_bytes=tf.constant([Path(path).read_bytes() for path in paths]))
    labels = [label.decode() for label in outputs["labels"].numpy()[0]]
    predictions = [{"labels": labels, "probabilities": row.tolist()} for row in outputs["probabilities"].numpy()]
    print(f"serving_default of {FLAGS.saved_model}:")
    print(table(paths, predictions))


if __name__ == "__main__":
    flags.mark_flag_as_required("saved_model")
    app.run(main)
