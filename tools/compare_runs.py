"""Table 1 of several runs side by side, with the paper's columns.

    python tools/compare_runs.py workspace/runs/d121 workspace/runs/aecnn workspace/runs/fmix \
        --names=D121,AECNN,FMix [--split=test] [--tta=none|tencrop] [--out=table1.md]

Reads each RUN_DIR/eval/<split>[_tencrop]/auc.json written by `python -m tfcxr.main --mode=evaluate`.
"""

import argparse
import json
import sys
from pathlib import Path

import tfcxr.quiet  # noqa: F401  (first: TensorFlow starts without its start-up noise; -v shows it)
from tfcxr.evaluate import runs, tables
from tfcxr.io import write_text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (--model_dir of each run)")
    parser.add_argument("--names", nargs="+", help="column names, comma- or space-separated (default: folder names)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tta", default="none", choices=["none", "tencrop"])
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    names = [n for names in args.names or [] for n in names.split(",") if n] or [p.name for p in args.run_dirs]
    if len(names) != len(args.run_dirs):
        sys.exit(f"--names: {len(names)} names for {len(args.run_dirs)} runs")
    summaries = {}
    for name, run_dir in zip(names, args.run_dirs):
        path = runs.eval_dir(run_dir, args.split, args.tta) / "auc.json"
        if not path.is_file():
            sys.exit(f"{path}: not found; run python -m tfcxr.main --mode=evaluate --split={args.split} first")
        summaries[name] = json.loads(path.read_text())
    markdown = tables.compare(summaries)
    print(markdown, end="")
    if args.out:
        write_text(args.out, markdown)


if __name__ == "__main__":
    main()
