"""benchmarks/bench_stage2_real.py's pure parts: the command it runs, the learning-rate steps, the report."""

import json
from pathlib import Path

import pandas as pd

from helpers import benchmark

bench = benchmark("bench_stage2_real")


def test_train_command_paper_steps_and_pass_through():
    args = bench.parse_args(["--name=x", "--learning_rate=1e-3", "--patches_per_image=4", "--autoencoder=residual"])
    command = bench.train_command(args, Path("/runs/x"))
    assert command[1:4] == ["-m", "tfcxr.main", "--stage=2"]
    assert "--steps_per_epoch=1196" in command and "--model_dir=/runs/x" in command
    assert "--learning_rate=0.001" in command and "--patches_per_image=4" in command
    assert command[-1] == "--autoencoder=residual"
    assert not any(flag.startswith(("--epochs", "--seed", "--val_steps")) for flag in command)  # the flagfile's


def test_learning_rate_steps_counts_epochs_from_one():
    log = pd.DataFrame({"epoch": range(8), "learning_rate": [1e-4] * 6 + [1e-5, 1e-5]})
    assert bench.learning_rate_steps(log) == [(7, 1e-5)]
    assert bench.learning_rate_steps(log.iloc[:6]) == []


def test_report_keeps_notes_and_lists_every_run(tmp_path):
    method = {"psnr": 30.0, "ssim": 0.9}
    for name, finished in (("b", "2026-01-02"), ("a", "2026-01-01")):
        result = {
            "name": name, "note": f"why {name}", "bench_command": "bench", "command": "python -m tfcxr.main",
            "config": {"learning_rate": 1e-4, "epochs": 20, "steps_per_epoch": 1196, "patches_per_image": 1},
            "records": {"train": 43, "val": 4, "test": 17}, "cpu": "cpu", "finished": finished,
            "wall_s": 600.0, "load_mean": 2.0, "epochs_done": 20, "load_min": 1.0, "load_max": 3.0,
            "learning_rate_steps": [[7, 1e-5]] if name == "a" else [], "final_train_mse": 2e-4,
            "best_val_mse": 3e-4, "scores": {"images": 17, "methods": {m: method for m in bench.real_cxr14.reconstruction.METHODS}},
        }
        (tmp_path / "stage2_real").mkdir(exist_ok=True)
        (tmp_path / "stage2_real" / f"{name}.json").write_text(json.dumps(result))
    (tmp_path / "stage2_real.md").write_text("old table\n## Notes\nkept by hand\n")
    bench.write_report(tmp_path)
    text = (tmp_path / "stage2_real.md").read_text()
    assert text.endswith("## Notes\nkept by hand\n") and "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith(("| a |", "| b |"))]
    assert [row[:5] for row in rows] == ["| a |", "| b |"]  # in the order they finished
    assert "1e-05 at 7" in rows[0] and "| none |" in rows[1]
