"""Table 1 of several runs side by side, with the paper's columns.

    python tools/compare_runs.py workspace/runs/d121 workspace/runs/aecnn workspace/runs/fmix \
        --names=D121,AECNN,FMix [--split=test] [--tta=none|tencrop] [--out=table1.md]

Reads each RUN_DIR/eval/<split>[_tencrop]/auc.json written by `python -m tfcxr.main --mode=evaluate`.
"""

import json
import sys
from pathlib import Path

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)
from absl import app, flags

from tfcxr import storage
from tfcxr.evaluate import outputs, tables
from tfcxr.storage import write_text

flags.DEFINE_list("names", None, "column names, comma-separated (default: folder names)")
flags.DEFINE_string("split", "test", "the split evaluated (--split of --mode=evaluate)")
flags.DEFINE_enum("tta", "none", ["none", "tencrop"], "the evaluation's test-time augmentation (--tta of --mode=evaluate)")
flags.DEFINE_string("out", None, "also write the Markdown here")
FLAGS = flags.FLAGS


def main(argv):
    run_dirs = [Path(arg) for arg in argv[1:]]
    if not run_dirs:
        raise app.UsageError("give one or more run folders (--model_dir of each run)")
    names = [name for name in FLAGS.names or [] if name] or [run_dir.name for run_dir in run_dirs]
    if len(names) != len(run_dirs):
        sys.exit(f"--names: {len(names)} names for {len(run_dirs)} runs")
    summaries = {}
    for name, run_dir in zip(names, run_dirs):
        path = storage.join(outputs.eval_dir(run_dir, FLAGS.split, FLAGS.tta), "auc.json")
        if not storage.isfile(path):
            sys.exit(f"{path}: not found; run python -m tfcxr.main --mode=evaluate --split={FLAGS.split} first")
        summaries[name] = json.loads(storage.read_text(path))
    markdown = tables.compare(summaries)
    print(markdown, end="")
    if FLAGS.out:
        write_text(Path(FLAGS.out), markdown)


if __name__ == "__main__":
    app.run(main)
