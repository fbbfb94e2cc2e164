"""Plain helpers the test files share: image bytes, a hand-built ChestX-ray14 tree and its shards,
child processes of tfcxr.main and tools/, benchmark modules, a rotation's fill fraction.

Fixtures live in tests/conftest.py and tiny models in tests/tiny_models.py. pytest puts tests/ on
sys.path (it has no __init__.py), so a test file imports these as `from helpers import ...`.
The module stays free of TensorFlow, so TensorFlow-free tests stay quick to start.
"""

import concurrent.futures
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tfcxr.constants import LABELS

ROOT = Path(__file__).resolve().parents[1]
HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
               "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def encode(pixels, format="PNG", mode=None, **options):
    """The bytes of `pixels` (a numpy image, read as PIL `mode` if given) saved as a `format` file;
    `options` go to PIL's save (JPEG's progressive, exif, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=format, **options)
    return buffer.getvalue()


def gray_noise(height, width, seed=0):
    """A height x width uint8 image of uniform noise in [0, 255], seeded."""
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def noise_png(seed, size):
    """The PNG bytes of a size x size gray_noise image: a request to a served model."""
    return encode(gray_noise(size, size, seed))


def write_noise_pngs(folder, seeds, size):
    """folder/image_<seed>.png, the noise_png of each seed: files for a client tool. -> their paths."""
    paths = [folder / f"image_{seed}.png" for seed in seeds]
    for seed, path in zip(seeds, paths):
        path.write_bytes(noise_png(seed, size))
    return paths


def torch_pixel_shuffle(x, r):
    """torch.nn.PixelShuffle(r) in numpy: [N,C*r*r,H,W] -> [N,C,H*r,W*r],
    out[n, c, h*r+i, w*r+j] = x[n, c*r*r + i*r + j, h, w] (the reference the models' PixelShuffle matches)."""
    n, channels, height, width = x.shape
    x = x.reshape(n, channels // (r * r), r, r, height, width)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, channels // (r * r), height * r, width * r)


def write_tree(root, num_patients=8, images_per_patient=2, size=32, layout="nih", seed=0):
    """A ChestX-ray14-shaped tree by hand: 2017 CSV (trailing empty column), the two lists
    (the last two patients are test), PNGs of noise (8-bit L). -> root."""
    rng = np.random.default_rng(seed)
    rows, train_val, test = [], [], []
    for patient in range(1, num_patients + 1):
        for follow_up in range(images_per_patient):
            name = f"{patient:08d}_{follow_up:03d}.png"
            labels = "|".join(rng.choice(LABELS, rng.integers(0, 3), replace=False)) or "No Finding"
            rows.append(f"{name},{labels},{follow_up},{patient},{20 + patient},{'MF'[patient % 2]},"
                        f"{('PA', 'AP')[follow_up % 2]},2500,2048,0.143,0.168,")
            (test if patient > num_patients - 2 else train_val).append(name)
            folder = root / ("images" if layout == "nih" else f"images_{1 + patient % 2:03d}/images")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join([HEADER_2017, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val))
    (root / "test_list.txt").write_text("\n".join(test))
    return root


def run_shard(data_dir, out_dir, **overrides):
    """sharding.shard at write_tree's toy settings (seed 0, 4 val images, 0.01 MB shards, one worker,
    small 8 px), `overrides` on top. -> the manifest."""
    from tfcxr.data import sharding  # TensorFlow: loaded by the tests that shard, not by every importer

    options = dict(seed=0, val_images=4, shard_mb=0.01, workers=1, small_size=8)
    return sharding.shard(data_dir, out_dir, **{**options, **overrides})


def run_python(*args, expect=None, timeout=600):
    """`python *args` (a script or `-m module`, then its flags) in a child process from the repository
    root, TensorFlow's C++ logging quiet, output captured as text. -> the CompletedProcess.

    expect: the exit status to assert (the output's tail says why not); None leaves it to the test.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert expect is None or result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def concurrently(*calls):
    """Runs each call (a function of no arguments, e.g. a lambda around tfcxr_main) in a thread of its
    own and returns their results in order; the first failure raises. For child processes that do not
    depend on one another: each spends its start-up (TensorFlow's import, tracing) on one core, so
    two of them side by side take little more than one on two cores."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def run_tool(name, *args, expect=None, timeout=600):
    """tools/`name` with `args`, as run_python runs it."""
    return run_python(ROOT / "tools" / name, *args, expect=expect, timeout=timeout)


def serving_client(url, *args):
    """tools/serving_client.py against `url` (a model's REST :predict address) with `args`."""
    return run_tool("serving_client.py", f"--url={url}", *args, timeout=120)


def tfcxr_main(*flags, expect=0):
    """`python -m tfcxr.main *flags`, asserting it exits with `expect` (0 unless told)."""
    return run_python("-m", "tfcxr.main", *flags, expect=expect)


def run_mode(*argv, setup="", expect=0):
    """`python -m tfcxr.main *argv` in a child process that first runs `setup` (Python source: e.g.
    registering a stage that exists only in a test), asserting its exit status is `expect`."""
    argv = ["tfcxr.main", *map(str, argv)]
    code = (f"{setup}\nimport sys\nfrom absl import app\nfrom tfcxr import main\nsys.argv = {argv!r}\n"
            "main.check_stage_flags(sys.argv)\napp.run(main.main)\n")
    return run_python("-c", code, expect=expect)


def benchmark(name):
    """benchmarks/`name`.py as a module: benchmarks/ is a folder of scripts that import each other by
    name, so it goes on sys.path (once)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def zero_fraction(size, degrees):
    """Fraction of a size x size output that samples outside the input, rotated by `degrees`."""
    index = np.arange(size) - (size - 1) / 2
    x, y = np.meshgrid(index, index)
    angle = np.radians(degrees)
    source_x = np.round(np.cos(angle) * x - np.sin(angle) * y + (size - 1) / 2)
    source_y = np.round(np.sin(angle) * x + np.cos(angle) * y + (size - 1) / 2)
    return ((source_x < 0) | (source_x > size - 1) | (source_y < 0) | (source_y > size - 1)).mean()


def expected_zero_fraction(size, degrees):
    """zero_fraction averaged over angles ~ U[-degrees, degrees]."""
    return np.mean([zero_fraction(size, angle) for angle in np.linspace(-degrees, degrees, 201)])
