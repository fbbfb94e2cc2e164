"""Query a TF Serving REST endpoint with PNG / JPEG files: the 14 probabilities, or compressed latents.

    python tools/serving_client.py --url=http://localhost:8501/v1/models/tfcxr_aecnn:predict a.png b.png
    python tools/serving_client.py --url=... --signature_name=compress --out_dir=latents a.png b.png

Sends {"signature_name": ..., "instances": [{"b64": "<base64 file bytes>"}, ...]} (TF Serving's
row format for the `image_bytes` input) and decodes every {"b64": ...} in the answer (outputs
named *_bytes). serving_default: one row per label, one column per file. compress: one line
per file with its latent's size; with --out_dir, each latent_png_bytes written as
<out_dir>/<file stem>_latent.png. The standard library and absl-py only (no TensorFlow), so it
runs wherever Python does after `pip install absl-py`.
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from absl import app, flags

DEFAULT_SIGNATURE = "serving_default"
LATENT_PNG = "latent_png_bytes"  # compress's 8-bit latent, PNG-encoded


def request_body(paths, signature_name=DEFAULT_SIGNATURE):
    """The REST request of TF Serving's predict API for these image files."""
    instances = [{"b64": base64.b64encode(Path(path).read_bytes()).decode("ascii")} for path in paths]
    return json.dumps({"signature_name": signature_name, "instances": instances}).encode()


def decode_b64(value):
    """A JSON value with every {"b64": ...} object (TF Serving's binary outputs) replaced by its bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {key: decode_b64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_b64(item) for item in value]
    return value


def predict(url, paths, timeout=60, signature_name=DEFAULT_SIGNATURE):
    """POSTs the files; returns the response's "predictions" (one per file), binary values decoded."""
    request = urllib.request.Request(url, data=request_body(paths, signature_name),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return decode_b64(json.loads(response.read())["predictions"])


def table(paths, predictions):
    """Labels down, files across, probabilities to 4 places."""
    labels = predictions[0]["labels"]
    names = [Path(path).name for path in paths]
    width = max(len(label) for label in labels)
    lines = [" " * width + "  " + "  ".join(f"{name:>16.16}" for name in names)]
    for k, label in enumerate(labels):
        lines.append(f"{label:<{width}}  " + "  ".join(f"{p['probabilities'][k]:>16.4f}" for p in predictions))
    return "\n".join(lines)


def latent_path(out_dir, path):
    return Path(out_dir) / f"{Path(path).stem}_latent.png"


def write_file(path, data):
    """Under a temporary name, then renamed: never half a PNG under its name (stdlib only, as this whole tool)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def latent_lines(paths, predictions, out_dir=None):
    """compress: one line per file (latent h x w, PNG size), writing the PNGs when out_dir is given."""
    lines = []
    for path, prediction in zip(paths, predictions):
        latent, png = prediction["latent"], prediction[LATENT_PNG]
        line = f"{Path(path).name}: latent {len(latent)}x{len(latent[0])}, PNG {len(png)} bytes"
        if out_dir:
            write_file(latent_path(out_dir, path), png)
            line += f" -> {latent_path(out_dir, path)}"
        lines.append(line)
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags, defined only when this file runs: benchmarks/bench_serving.py (with a --url
    of its own) and tools/query_saved_model.py import it, and a process holds one set of absl flags."""
    flags.DEFINE_string("url", None, "http://HOST:8501/v1/models/MODEL_NAME:predict", required=True)
    flags.DEFINE_enum("signature_name", DEFAULT_SIGNATURE, [DEFAULT_SIGNATURE, "compress"],
                      "serving_default (probabilities) or compress (AECNN latents)")
    flags.DEFINE_string("out_dir", None, "compress: write each latent PNG here as <file stem>_latent.png")
    flags.DEFINE_float("timeout", 60, "seconds to wait for the server")


def image_files(argv):
    """The PNG / JPEG files of the command line (app.run's leftover argv): a usage error without any,
    one line and exit 1 for a file that is not there."""
    files = argv[1:]
    if not files:
        raise app.UsageError("give one or more PNG or JPEG files")
    for path in files:
        if not Path(path).is_file():
            sys.exit(f"error: {path}: no such file")
    return files


def main(argv):
    files = image_files(argv)
    if FLAGS.out_dir and FLAGS.signature_name != "compress":
        sys.exit("--out_dir: only compress returns images to write (pass --signature_name=compress)")
    try:
        predictions = predict(FLAGS.url, files, FLAGS.timeout, FLAGS.signature_name)
    except urllib.error.HTTPError as error:
        sys.exit(f"{FLAGS.url}: HTTP {error.code}: {error.read().decode(errors='replace').strip()}")
    except (urllib.error.URLError, OSError) as error:
        sys.exit(f"{FLAGS.url}: cannot reach the server ({getattr(error, 'reason', error)})")
    if FLAGS.signature_name == "compress":
        try:
            print(latent_lines(files, predictions, FLAGS.out_dir))
        except OSError as error:
            sys.exit(f"{FLAGS.out_dir}: cannot write the latent PNGs ({error.strerror})")
    else:
        print(table(files, predictions))


if __name__ == "__main__":
    define_flags()
    app.run(main)
