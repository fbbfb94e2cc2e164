"""`make demo`: the whole method, end to end, on a generated ChestX-ray14-shaped dataset (CPU).

generate -> shard -> train stage 1 (D121 BL5), stage 2 (autoencoder), stage 3 (AECNN)
-> evaluate on the test split (Table-1-style AUCs, PSNR/SSIM) -> export a SavedModel and
query its serving_default signature with a generated PNG.

Every step is one of the user-facing commands, run as a user would run it. Run `make demo` again
after an interruption: generation is skipped, sharding and training resume where they stopped
(a finished run has nothing left to do), evaluation runs again and export writes the next version.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]

flags.DEFINE_string("workspace", "demo_workspace", "Workspace folder (see WORKSPACE.md).")
flags.DEFINE_integer("num_patients", 300, "Patients in the generated dataset.")
flags.DEFINE_integer("image_size", 256, "Side of the generated radiographs.")
flags.DEFINE_integer("val_images", 150, "About this many train_val images go to validation.")
flags.DEFINE_bool("quick", False, "A smoke run (what the tests run): two training steps a stage, "
                  "20 bootstrap resamples.")
FLAGS = flags.FLAGS


def run(title, *args):
    print(f"\n=== {title}\n$ {' '.join(str(a) for a in args)}", flush=True)
    start = time.time()
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}  # no CUDA / CPU-feature notices unless asked for
    returncode = subprocess.run([str(a) for a in args], cwd=ROOT, env=quiet).returncode
    if returncode:
        sys.exit(f"demo: '{title}' failed (exit status {returncode}); run `make demo` again to resume")
    print(f"=== {title}: done in {time.time() - start:.0f} s", flush=True)


def codec_table(model_dirs):
    """Markdown: both stage-2 codecs' test reconstruction (8-bit latent) beside bicubic / bilinear resizing."""
    summaries = {name: json.loads((path / "eval" / "test" / "reconstruction.json").read_text())
                 for name, path in model_dirs.items()}
    first = next(iter(summaries.values()))
    lines = [f"## Both codecs (stage 2): `test`, {first['images']} images", "", f"Protocol: {first['protocol']}.", "",
             "| method | PSNR (dB) | SSIM |", "|---|---|---|"]
    for name, summary in summaries.items():
        for method, label in (("autoencoder", "float latent"), ("autoencoder_8bit", "latent stored as 8 bits")):
            values = summary["methods"][method]
            lines.append(f"| {name}, {label} | {values['psnr']:.2f} | {values['ssim']:.4f} |")
    for method in ("bicubic_8bit", "bilinear_8bit"):
        values = first["methods"][method]
        lines.append(f"| {method.replace('_8bit', '')} (small image stored as 8 bits) | {values['psnr']:.2f} | {values['ssim']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    python = sys.executable
    workspace = (ROOT / FLAGS.workspace).resolve()
    raw, records = workspace / "raw" / "cxr14", workspace / "records" / "cxr14"
    runs, exports = workspace / "runs", workspace / "exports"

    if not (raw / "test_list.txt").exists():
        run("generate a ChestX-ray14-shaped dataset", python, "tools/make_synthetic_cxr14.py",
            f"--out_dir={raw}", f"--num_patients={FLAGS.num_patients}",
            f"--image_size={FLAGS.image_size}", "--layout=kaggle", "--seed=0", "--overwrite")
    run("shard it into TFRecords", python, "tools/shard_cxr14.py", f"--data_dir={raw}",
        f"--out_dir={records}", f"--val_images={FLAGS.val_images}", "--shard_mb=8", "--small_size=64",
        "--workers=2")

    stage = [python, "-m", "tfcxr.main", f"--records_dir={records}"]
    train = ["--epochs=1", "--steps_per_epoch=2", "--val_steps=2"] if FLAGS.quick else []
    evaluate = ["--resamples=20"] if FLAGS.quick else []
    stage1, stage2, stage3 = runs / "demo_d121", runs / "demo_autoencoder", runs / "demo_aecnn"
    residual = runs / "demo_residual_codec"
    run("stage 1: DenseNet121 baseline (BL5)", *stage, "--stage=1",
        "--flagfile=configs/demo_stage1.cfg", f"--model_dir={stage1}", *train)
    run("stage 2: autoencoder head start", *stage, "--stage=2",
        "--flagfile=configs/demo_stage2.cfg", f"--model_dir={stage2}", *train)
    run("stage 2: residual codec (--codec=residual)", *stage, "--stage=2",
        "--flagfile=configs/demo_stage2_residual.cfg", f"--model_dir={residual}", *train)
    run("stage 3: joint AECNN", *stage, "--stage=3", "--flagfile=configs/demo_stage3.cfg",
        f"--model_dir={stage3}", f"--init_codec={stage2 / 'best.keras'}",
        f"--init_classifier={stage1 / 'best.keras'}", *train)

    for number, model_dir in ((1, stage1), (3, stage3)):
        run(f"evaluate stage {number} on the test split", *stage, f"--stage={number}",
            f"--flagfile=configs/demo_stage{number}.cfg", f"--model_dir={model_dir}",
            "--mode=evaluate", "--split=test", *evaluate)
    for name, model_dir in (("paper autoencoder", stage2), ("residual codec", residual)):
        run(f"evaluate the {name} (stage 2) on the test split", *stage, "--stage=2", f"--model_dir={model_dir}",
            "--mode=evaluate", "--split=test", "--batch_size=32")
    run("export stage 3 for TF Serving", *stage, "--stage=3",
        "--flagfile=configs/demo_stage3.cfg", f"--model_dir={stage3}", "--mode=export",
        f"--export_dir={exports}", "--model_name=tfcxr_aecnn")  # the next version: TF Serving serves the highest
    latest = max((v for v in (exports / "tfcxr_aecnn").iterdir() if v.name.isdigit()), key=lambda v: int(v.name))
    run("query the SavedModel's serving_default with a generated PNG", python,
        "tools/query_saved_model.py", f"--saved_model={latest}",
        sorted((raw / "images_001" / "images").glob("*.png"))[0])

    run("Table 1 of the demo (test split)", python, "tools/compare_runs.py", stage1, stage3,
        "--names=D121,AECNN", "--split=test", f"--out={runs / 'table1_demo.md'}")
    print((stage3 / "eval" / "test" / "reconstruction.md").read_text().replace("# ", "## AECNN ", 1))
    print(codec_table({"paper autoencoder": stage2, "residual codec": residual}))
    print(f"SavedModel for TF Serving: {latest}")
    print(f"TensorBoard: {Path(python).parent / 'tensorboard'} --logdir {runs}")


if __name__ == "__main__":
    app.run(main)
