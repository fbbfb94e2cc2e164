"""Inference throughput (images/s), float32: tfcxr's evaluation forward against PyTorch eval, batch 1 and 16.

    .venv/bin/python benchmarks/bench_inference.py [--models=baseline,aecnn] [--batches=1,16] [--repeats=2]

tfcxr: the probabilities evaluation and the export's predict_images compute (sigmoid of the model's
logits in a tf.function, training=False) on gray [B,H,W,1] images; the baseline (DenseNet121 BL5)
at its evaluation size 256, the AECNN at 896. PyTorch: the same modules from tests/torch_reference.py
(the parity tests' references) in eval mode under torch.inference_mode, channels_first (faster than
channels_last for these modules here), denormals flushed to zero (as TensorFlow's CPU kernels do), on
the same pixels replicated and ImageNet-normalized. Random weights; every case in a process of its own, the
fastest of --repeats alternating runs. Writes benchmarks/results/inference_pytorch.md.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

flags.DEFINE_list("models", ["baseline", "aecnn"], "baseline (256 px) and / or aecnn (896 px)")
flags.DEFINE_list("batches", ["1", "16"], "batch sizes")
flags.DEFINE_integer("repeats", 2, "alternating runs per case; the fastest counts (the machine is shared)")
flags.DEFINE_string("case", None, "internal: measure one case (model,implementation,batch) in this process")
flags.DEFINE_string("out", None, "Markdown results (default: results/inference_pytorch.md)")
FLAGS = flags.FLAGS

SIDE = {"baseline": 256, "aecnn": 896}
SECONDS = 8.0  # timed seconds per case (at least 2 batches), after 2 untimed batches


def torch_reference():
    """tests/torch_reference.py, the parity tests' PyTorch modules (bench_training.py reads the same)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import torch_reference as reference

    return reference


def tfcxr_predict(model_name, batch_size):
    import tensorflow as tf

    from tfcxr import models

    classifier = models.build_classifier(weights=None)
    model = (models.build_baseline(classifier) if model_name == "baseline"
             else models.build_aecnn(*models.build_codec("paper"), classifier))
    images = tf.random.uniform([batch_size, SIDE[model_name], SIDE[model_name], 1], seed=0)

    @tf.function
    def probabilities(batch):
        return tf.sigmoid(model(batch, training=False)["logits"])

    return lambda: probabilities(images).numpy()


def torch_predict(model_name, batch_size):
    import torch

    torch.set_flush_denormal(True)
    reference = torch_reference()
    model = (reference.DenseNet121(14) if model_name == "baseline" else reference.AECNN(14)).eval()
    images = torch.rand(batch_size, 1, SIDE[model_name], SIDE[model_name])

    def run():
        with torch.inference_mode():
            logits = model(reference.imagenet_normalize(images)) if model_name == "baseline" else model(images)[2]
            return torch.sigmoid(logits).numpy()

    return run


def measure(model_name, implementation, batch_size):
    run = (tfcxr_predict if implementation == "tfcxr" else torch_predict)(model_name, batch_size)
    run(), run()  # tracing, first allocations
    batches, start = 0, time.perf_counter()
    while batches < 2 or time.perf_counter() - start < SECONDS:
        run()
        batches += 1
    seconds = time.perf_counter() - start
    return {"images_per_s": batches * batch_size / seconds, "ms_per_batch": 1000 * seconds / batches}


def run_case(model_name, implementation, batch_size):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, __file__, f"--case={model_name},{implementation},{batch_size}"],
                            env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"case {model_name},{implementation},{batch_size} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.case:
        model_name, implementation, batch_size = FLAGS.case.split(",")
        print(json.dumps(measure(model_name, implementation, int(batch_size))))
        sys.stdout.flush()
        os._exit(0)
    import tensorflow as tf
    import torch

    from tfcxr.storage import write_text

    out = Path(FLAGS.out or Path(__file__).parent / "results" / "inference_pytorch.md")
    load_start, rows = os.getloadavg()[0], []
    for model_name in FLAGS.models:
        for batch_size in map(int, FLAGS.batches):
            runs = [{name: run_case(model_name, name, batch_size) for name in ("tfcxr", "torch")}
                    for _ in range(FLAGS.repeats)]
            best = {name: max((run[name] for run in runs), key=lambda case: case["images_per_s"])
                    for name in ("tfcxr", "torch")}
            ratio = best["tfcxr"]["images_per_s"] / best["torch"]["images_per_s"]
            rows.append(f"| {model_name} | {SIDE[model_name]}x{SIDE[model_name]} | {batch_size} "
                        f"| {best['tfcxr']['images_per_s']:.2f} | {best['torch']['images_per_s']:.2f} | {ratio:.2f} "
                        f"| {best['tfcxr']['ms_per_batch']:.0f} / {best['torch']['ms_per_batch']:.0f} |")
            print(rows[-1], flush=True)
    command = " ".join(["python", "benchmarks/bench_inference.py", *sys.argv[1:]])
    write_text(out, f"# Inference throughput: tfcxr against PyTorch eval, float32\n\n`{command}`\n\n"
               f"{machine.describe()}; {time.strftime('%Y-%m-%d')}; TensorFlow {tf.__version__}, "
               f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads); random weights, gray images; "
               f"each case in a process of its own, timed for {SECONDS:.0f} s after 2 untimed batches; the fastest "
               f"of {FLAGS.repeats} alternating runs. Load average (1 min) at start / end: {load_start:.1f} / "
               f"{os.getloadavg()[0]:.1f} (a shared machine).\n\n"
               "| model | input | batch | tfcxr img/s | PyTorch img/s | tfcxr / PyTorch | ms per batch tfcxr / PyTorch |\n"
               "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
