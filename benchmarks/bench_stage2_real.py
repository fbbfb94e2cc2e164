"""Stage 2 trained on real radiographs, scored on held-out ones.

    .venv/bin/python benchmarks/bench_stage2_real.py --name=paper
    .venv/bin/python benchmarks/bench_stage2_real.py --name=lr1e-3 --learning_rate=1e-3 [--steps_per_epoch=300]

1. Shards the 64 real PNGs of ../shared/cxr14-real once (benchmarks/real_cxr14.py: raw records,
   43 train / 4 val / 17 held-out test radiographs, patient-disjoint).
2. Trains `python -m tfcxr.main --stage=2 --flagfile=<flagfile>` on them with --steps_per_epoch set
   so that 20 epochs take the paper's number of steps (76,526 train images / batch 64 = 1,196
   steps an epoch), in a process of its own; flags given here override the flagfile.
3. Scores the run's best.keras on the 17 held-out whole 1024 radiographs: PSNR / SSIM with the
   float and the 8-bit latent, beside bicubic and bilinear 1024 -> 256 -> 1024.
4. Writes benchmarks/results/stage2_real/<name>.json and the run's loss curve
   benchmarks/results/stage2_real_<name>.png, then rebuilds benchmarks/results/stage2_real.md
   from every JSON there (a "## Notes" part of it is kept).

Other --flags (e.g. --autoencoder=residual) go to tfcxr.main unchanged, and so does --flagfile
(default configs/stage2.cfg). --score_only scores an existing run again (the model_dir of --name) without training.
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import real_cxr14  # noqa: E402

from tfcxr.storage import save_figure, write_json, write_text  # noqa: E402

ROOT = real_cxr14.ROOT
RESULTS = ROOT / "benchmarks" / "results"
PAPER_TRAIN_IMAGES = 76_526  # the paper's training split (our planner on the real metadata, docs/training.md)
PAPER_STEPS_PER_EPOCH = -(-PAPER_TRAIN_IMAGES // 64)  # 1,196 batches at 64 (the last one partial)
AUTHORS_PSNR = 35.8  # dB, the authors' stage-2 autoencoder (the reproduction report)
NOTES = "\n## Notes\n"
PASSED_THROUGH = ("epochs", "learning_rate", "val_steps", "batch_size", "seed", "patches_per_image")
FLAGFILE = "configs/stage2.cfg"  # tfcxr.main's --flagfile unless one is given

flags.DEFINE_string("name", None, "the run: workspace/runs/stage2-real/<name>, results/<name>", required=True)
flags.DEFINE_integer("steps_per_epoch", PAPER_STEPS_PER_EPOCH, "train steps per epoch (default: 20 epochs take "
                     "the paper's number of steps)")
flags.DEFINE_integer("epochs", None, "default: the flagfile's (20)")
flags.DEFINE_float("learning_rate", None, "default: the flagfile's (1e-4)")
flags.DEFINE_integer("val_steps", None, "validation steps per epoch (default: the 4 val images)")
flags.DEFINE_integer("batch_size", None, "default: the flagfile's (64)")
flags.DEFINE_integer("seed", None, "default: the flagfile's")
flags.DEFINE_integer("patches_per_image", None, "stage 2 patches per decoded original (if tfcxr.main has it)")
flags.DEFINE_string("records_dir", str(real_cxr14.RECORDS_DIR), "the real radiographs' records (sharded if absent)")
flags.DEFINE_string("runs_dir", str(ROOT / "workspace" / "runs" / "stage2-real"), "the runs' folder")
flags.DEFINE_string("results_dir", str(RESULTS), "where the JSON, plots and stage2_real.md go")
flags.DEFINE_bool("score_only", False, "score the existing run, do not train")
flags.DEFINE_string("code_dir", None, "train with the tfcxr/ and configs/ in this folder (a modified copy, to measure "
                    "a change) instead of a snapshot of the working tree")
flags.DEFINE_integer("dead_at_init", None, "N: only count, for seeds 0..N-1, the stage-2 models whose initial "
                     "decoder has a channel no latent in [0, 1] lifts above 0; no training")
flags.DEFINE_string("note", "", "one line on why this run exists, kept in the results")
FLAGS = flags.FLAGS


def take_flagfile(argv):
    """(argv without --flagfile, the flagfile): it is tfcxr.main's, and absl would read it here."""
    flagfile, rest, args = FLAGFILE, [], iter(argv)
    for arg in args:
        if arg == "--flagfile":
            flagfile = next(args, "")
        elif arg.startswith("--flagfile="):
            flagfile = arg.partition("=")[2]
        else:
            rest.append(arg)
    return rest, flagfile


def parse_args(argv):
    """argv without the program name -> this script's flags as a namespace, with .flagfile, .argv and .extra:
    the flags it does not define, passed to tfcxr.main as they are."""
    rest, flagfile = take_flagfile(argv)
    FLAGS.unparse_flags()  # the defaults again: a test process parses more than once
    try:
        extra = FLAGS([sys.argv[0], *rest], known_only=True)[1:]
    except flags.Error as error:
        sys.exit(f"FATAL Flags parsing error: {error}")
    args = types.SimpleNamespace(**{flag.name: flag.value for flag in FLAGS.get_flags_for_module(__name__)},
                                 flagfile=flagfile, argv=argv, extra=extra)
    for name in ("records_dir", "runs_dir", "results_dir"):  # training runs in a snapshot folder
        setattr(args, name, Path(getattr(args, name)).resolve())
    args.code_dir = Path(args.code_dir) if args.code_dir else None
    return args


def train_command(args, model_dir):
    """The tfcxr.main command line of this run."""
    command = [sys.executable, "-m", "tfcxr.main", "--stage=2", f"--flagfile={args.flagfile}",
               f"--records_dir={args.records_dir}", f"--model_dir={model_dir}",
               f"--steps_per_epoch={args.steps_per_epoch}"]
    return (command + [f"--{name}={getattr(args, name)}" for name in PASSED_THROUGH if getattr(args, name) is not None]
            + args.extra)


class LoadSampler(threading.Thread):
    """The 1-minute load average every `every` seconds while training runs (the machine is shared)."""

    def __init__(self, every=30.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [os.getloadavg()[0]], threading.Event()

    def run(self):
        while not self.done.wait(self.every):
            self.samples.append(os.getloadavg()[0])


def snapshot(code_dir):
    """tfcxr/ and configs/ as they are on disk, copied into code_dir/<content hash>.
    -> (that folder, "<HEAD commit>+<content hash>"; "+clean" when they equal HEAD's).

    Training runs from there: tf.function's autograph re-reads the source files whenever it traces
    (the first step, the first validation), so edits that others make to the working tree meanwhile
    would otherwise be traced into a running benchmark, or break it. The working tree, not HEAD:
    HEAD may lack files that others have not committed yet. The folder keeps the diff against HEAD.
    """
    files = sorted(path for folder in ("tfcxr", "configs") for path in (ROOT / folder).rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    commit = _git("rev-parse", "HEAD").strip()
    changes = _git("status", "--porcelain", "--", "tfcxr", "configs")
    version = f"{commit[:7]}+{'clean' if not changes else digest.hexdigest()[:12]}"
    folder = code_dir / digest.hexdigest()[:12]
    if not (folder / "tfcxr" / "main.py").is_file():
        for path in files:
            (folder / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, folder / path.relative_to(ROOT))
        write_text(folder / "CHANGES.diff", changes + _git("diff", "HEAD", "--", "tfcxr", "configs"))
    return folder, version


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def train(command, model_dir, code):
    """Runs `command` in `code` (output to model_dir/train.log). -> (wall seconds, load samples)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    sampler = LoadSampler()
    sampler.start()
    start = time.perf_counter()
    with open(model_dir / "train.log", "ab") as log:
        returncode = subprocess.run(command, cwd=code, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    sampler.done.set()
    if returncode:
        raise SystemExit(f"{model_dir / 'train.log'}: training failed (exit {returncode}); see its end")
    return wall, sampler.samples


def score(code, model_path, records_dir):
    """real_cxr14.score_autoencoder run in a process of its own on the tfcxr of `code` (see snapshot)."""
    program = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import real_cxr14; "
               f"from tfcxr.models import load_model; model = load_model({str(model_path)!r}); "
               f"scores = real_cxr14.score_autoencoder(model, {str(records_dir)!r}); "
               f"scores['dead_decoder_channels'] = real_cxr14.dead_decoder_channels(model); "
               f"scores['channels_off'] = real_cxr14.channels_off_on(model, real_cxr14.held_out_images({str(records_dir)!r})[0]); "
               f"print(json.dumps(scores))")
    done = subprocess.run([sys.executable, "-c", program], cwd=code, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{model_path}: scoring failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def learning_rate_steps(log):
    """[(epoch counted from 1, new learning rate)] where the rate differs from the epoch before."""
    rates = log["learning_rate"].to_numpy()
    return [(int(log["epoch"].iloc[i]) + 1, float(rates[i])) for i in range(1, len(rates))
            if abs(rates[i] - rates[i - 1]) > 1e-3 * rates[i - 1]]


def plot_losses(log, name, counts, path):
    """Train MSE (patches) and validation MSE (128 resizes) per epoch, log scale, LR cuts marked."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    epochs = log["epoch"] + 1
    axis.semilogy(epochs, log["loss"], "o-", label="train MSE (128 patches)")
    axis.semilogy(epochs, log["val_loss"], "s-", label=f"val MSE (128 resizes, {counts['val']} images)")
    for epoch, rate in learning_rate_steps(log):
        axis.axvline(epoch - 0.5, color="gray", linestyle=":")
        axis.text(epoch - 0.5, axis.get_ylim()[1], f"lr {rate:.0e}", rotation=90, va="top", fontsize=8)
    axis.set(xlabel="epoch", ylabel="MSE", title=f"stage 2 on {counts['train']} real radiographs: {name}")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    save_figure(figure, path)
    plt.close(figure)


def row(result):
    """One results-table row of a run's JSON."""
    methods, config = result["scores"]["methods"], result["config"]
    cuts = ", ".join(f"{rate:.0e} at {epoch}" for epoch, rate in result["learning_rate_steps"]) or "none"
    done = result.get("epochs_done", config["epochs"])
    epochs = f"{done} of {config['epochs']} (stopped)" if done < config["epochs"] else config["epochs"]
    load = f"{result['load_mean']:.1f}" if result["load_mean"] is not None else "n/a"
    return (f"| {result['name']} | {config['learning_rate']:g} | {epochs} x {config['steps_per_epoch']} "
            f"| {config.get('patches_per_image', 1)} | {result['wall_s'] / 60:.0f} | {load} | {cuts} "
            f"| {result['final_train_mse']:.2e} | {result['best_val_mse']:.2e} "
            f"| {methods['autoencoder']['psnr']:.2f} / {methods['autoencoder']['ssim']:.4f} "
            f"| {methods['autoencoder_8bit']['psnr']:.2f} / {methods['autoencoder_8bit']['ssim']:.4f} "
            f"| {result['scores'].get('dead_decoder_channels', '?')} / {result['scores'].get('channels_off', '?')} |")


def write_report(results_dir):
    """benchmarks/results/stage2_real.md from every stage2_real/*.json (its Notes part kept)."""
    results = [json.loads(p.read_text()) for p in sorted((results_dir / "stage2_real").glob("*.json"))]
    results.sort(key=lambda r: r["finished"])
    path = results_dir / "stage2_real.md"
    notes = path.read_text().partition(NOTES)[2] if path.is_file() else ""
    baseline, counts = results[-1]["scores"], results[-1]["records"]
    lines = [
        "# Stage 2 on real radiographs", "",
        f"`benchmarks/bench_stage2_real.py`: `python -m tfcxr.main --stage=2` trained on {counts['train']} real",
        f"ChestX-ray14 radiographs (raw records), validated on {counts['val']}, scored on {counts['test']} held-out",
        "ones (official test list, patient-disjoint): PSNR (dB) / SSIM of whole 1024x1024 images, mean over",
        f"them, max_val 1. The authors' autoencoder: about {AUTHORS_PSNR} dB. Resizing on the same images:", "",
        "| method | PSNR (dB) | SSIM |", "|---|---|---|",
        *[f"| {name} | {baseline['methods'][name]['psnr']:.2f} | {baseline['methods'][name]['ssim']:.4f} |"
          for name in ("bicubic", "bicubic_8bit", "bilinear", "bilinear_8bit")],
        "", "| run | lr | epochs x steps | patches / image | wall (min) | load (mean) | LR steps (epoch) "
        "| train MSE, last epoch | best val MSE | autoencoder PSNR / SSIM | 8-bit latent PSNR / SSIM "
        "| decoder channels: dead / off on the held-out |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(result) for result in results], "",
    ]
    for result in results:
        lines += [f"## {result['name']}", "", result["note"] or "", "", "```bash", result["bench_command"], "# which ran:", result["command"], "```", "",
                  f"Code: {result.get('commit') or 'unknown'} (commit + hash of uncommitted tfcxr/, configs/). "
                  f"Finished {result['finished']} on {result['cpu']}; " + (
                      f"1-minute load average during training {result['load_min']:.1f}-{result['load_max']:.1f} "
                      f"(mean {result['load_mean']:.1f})" if result["load_mean"] is not None else
                      "training was stopped by hand (wall time from config.json to the last log.csv row)")
                  + ": the machine is shared with other work.", "",
                  f"![loss curve](stage2_real_{result['name']}.png)", ""]
    write_text(path, "\n".join(lines) + (NOTES + notes if notes else ""))


def dead_at_init(seeds, records_dir):
    """{seed: (dead decoder channels, channels 0 on every pixel of the val radiographs)} of the
    stage-2 model as the trainer builds it (seeded, tfcxr.train.tasks)."""
    import keras

    from tfcxr.config import RunConfig
    from tfcxr.train import tasks

    images, _ = real_cxr14.held_out_images(records_dir, split="val")  # [4,1024,1024,1]
    config = RunConfig("autoencoder")
    dead = {}
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)  # as tfcxr.train.loop.train does before building
        model = tasks.build_autoencoder(config)
        dead[seed] = (real_cxr14.dead_decoder_channels(model), real_cxr14.channels_off_on(model, images))
    return dead


def main(args):
    if args.dead_at_init:
        dead = dead_at_init(args.dead_at_init, args.records_dir)
        print("seed: (decoder channels no latent in [0, 1] lifts above 0, channels 0 on every pixel of the "
              f"{len(real_cxr14.split_names(args.records_dir, 'val'))} val radiographs)\n{dead}")
        for index, what in enumerate(("a dead channel", "a channel 0 on the val radiographs")):
            print(f"{sum(bool(d[index]) for d in dead.values())} of {len(dead)} seeds start with {what}")
        return
    model_dir = args.runs_dir / args.name
    manifest = real_cxr14.ensure_records(args.records_dir)
    counts = {split: summary["written"] for split, summary in manifest["splits"].items()}
    command = train_command(args, model_dir)
    timing = model_dir / "timing.json"  # written after training, read by --score_only
    if not args.score_only:
        code, commit = snapshot(args.runs_dir / ".code")
        if args.code_dir:
            code, commit = args.code_dir.resolve(), f"{commit} modified in {args.code_dir}"
        print(f"training (code {commit}, in {code}): {' '.join(command)}\n  log: {model_dir / 'train.log'}",
              flush=True)
        wall, loads = train(command, model_dir, code)
        write_json(timing, {"wall_s": wall, "load_samples": loads, "commit": commit, "code": str(code)})
    if not timing.is_file():  # training stopped by hand: its wall time from the files it wrote
        if not (model_dir / "log.csv").is_file():
            raise SystemExit(f"{model_dir / 'log.csv'}: not found; train the run first (without --score_only)")
        wall = (model_dir / "log.csv").stat().st_mtime - (model_dir / "config.json").stat().st_mtime
        code_dir = args.code_dir.resolve() if args.code_dir else None  # the code it trained with, if known
        write_json(timing, {"wall_s": wall, "load_samples": [], "stopped": True, "code": str(code_dir or ""),
                            "commit": f"the tfcxr/ of {code_dir}" if code_dir else None})
    wall, loads, commit, code = (json.loads(timing.read_text()).get(key)
                                 for key in ("wall_s", "load_samples", "commit", "code"))
    if not (code and Path(code, "tfcxr").is_dir()):
        code, _ = snapshot(args.runs_dir / ".code")
    log = pd.read_csv(model_dir / "log.csv")
    config = json.loads((model_dir / "config.json").read_text())
    plot_losses(log, args.name, counts, args.results_dir / f"stage2_real_{args.name}.png")
    scores = score(code, model_dir / "best.keras", args.records_dir)
    result = {
        "name": args.name, "note": args.note, "commit": commit,
        "bench_command": shlex.join([".venv/bin/python", "benchmarks/bench_stage2_real.py",
                                     *[a for a in args.argv if a != "--score_only" and not a.startswith("--note")]]),
        "command": shlex.join(["python", *command[1:]]).replace(str(ROOT) + "/", ""),
        "config": {key: config.get(key) for key in ("autoencoder", "learning_rate", "epochs", "steps_per_epoch",
                                                     "batch_size", "patches_per_image", "seed", "val_steps")},
        "records": counts, "cpu": machine.describe(), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": wall, "load_samples": loads, "load_mean": sum(loads) / len(loads) if loads else None,
        "load_min": min(loads, default=None), "load_max": max(loads, default=None), "epochs_done": len(log),
        "learning_rate_steps": learning_rate_steps(log),
        "final_train_mse": float(log["loss"].iloc[-1]), "best_val_mse": float(log["val_loss"].min()),
        "log": log.to_dict("list"), "scores": scores,
    }
    path = args.results_dir / "stage2_real" / f"{args.name}.json"
    if args.score_only and path.is_file():  # scored again: how it was trained stays as recorded
        before = json.loads(path.read_text())
        result.update(command=before["command"], bench_command=before["bench_command"].split(" --note")[0],
                      note=args.note or before["note"])
    write_json(path, result)
    write_report(args.results_dir)
    methods = scores["methods"]
    print(f"{args.name}: {scores['images']} held-out images; autoencoder {methods['autoencoder']['psnr']:.2f} dB "
          f"(8-bit latent {methods['autoencoder_8bit']['psnr']:.2f}), bicubic {methods['bicubic']['psnr']:.2f}, "
          f"bilinear {methods['bilinear']['psnr']:.2f}; LR steps {result['learning_rate_steps'] or 'none'}; "
          f"{wall / 60:.1f} min")


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_args(argv[1:]))
