"""A ChestX-ray14-shaped synthetic tree with learnable planted findings.

`generate()` writes what the NIH / Kaggle downloads hold, in the same formats:
`Data_Entry_2017.csv` (the real 2017 header, trailing empty column included),
`train_val_list.txt` / `test_list.txt` (patient-disjoint, sorted, no trailing newline),
`BBox_List_2017.csv` (a box for every planted finding, in the PNG's own pixel coordinates),
PNGs in the Kaggle (`images_001/images/...`) or NIH (`images/`) layout, and
`SYNTHETIC_QUIRKS.json` naming the images that carry a real-world quirk
(RGBA, 16-bit grayscale, RGB, not square).

Each image is a cheap radiograph-like background (dark air, a soft body silhouette, two darker
lung fields with rib-like bands, a brighter spine, smooth and fine noise). Each label plants
its own high-contrast pattern in a square box of 10-14% of the image side, centred on a
label-specific cell of a 4x4 grid (cell centres at 20/40/60/80% of the side, so the patterns
stay inside the stage-1 and stage-3 random crops), jittered by up to 2% of the side in
position, and in size and opacity. Bright patterns pull pixels towards white, dark ones
towards black (these sit below the lungs, where the background is bright):

| label              | pattern                       | centre (x, y), % of side |
|--------------------|-------------------------------|--------------------------|
| Atelectasis        | 3 horizontal stripes, bright  | (80, 60)                 |
| Cardiomegaly       | filled disc, bright           | (60, 60)                 |
| Consolidation      | 3x3 checkerboard, bright      | (60, 40)                 |
| Edema              | 3 vertical stripes, bright    | (20, 60)                 |
| Effusion           | triangle, apex up, bright     | (20, 80)                 |
| Emphysema          | soft dome, dark               | (40, 80)                 |
| Fibrosis           | diagonal stripes, bright      | (20, 20)                 |
| Hernia             | ring, bright                  | (40, 60)                 |
| Infiltration       | 3x3 dotted grid, bright       | (60, 20)                 |
| Mass               | filled diamond, bright        | (40, 40)                 |
| Nodule             | plus-shaped cross, bright     | (40, 20)                 |
| Pleural_Thickening | hollow square frame, bright   | (20, 40)                 |
| Pneumonia          | X-shaped cross, bright        | (80, 20)                 |
| Pneumothorax       | filled square, dark           | (60, 80)                 |

`No Finding` images carry no pattern. Everything is drawn from `seed` (one generator per
image), and PNGs are written with fixed settings and no timestamps, so the same arguments
give a byte-identical tree.
"""

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tfcxr.constants import LABELS, NO_FINDING, ORIGINAL_SIZE
from tfcxr.storage import atomic_directory, to_uint8

DATA_ENTRY = "Data_Entry_2017.csv"
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_LIST = "BBox_List_2017.csv"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_SPELLING = {"Infiltration": "Infiltrate"}  # as the real BBox_List_2017.csv spells it
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
QUIRKS_FILE = "SYNTHETIC_QUIRKS.json"
LAYOUTS = ("kaggle", "nih")
KAGGLE_FOLDERS = 12  # images_001 ... images_012, contiguous chunks of the sorted names

TEST_PATIENTS = 0.22  # fraction of patients in test_list.txt
NO_FINDING_RATE = 0.4  # fraction of images without any finding
FINDING_RATE = 0.25  # chance of each label on an image with findings (Hernia: HERNIA_RATE)
HERNIA_RATE = 0.15
IMAGES_PER_PATIENT = (0.3, 0.25, 0.2, 0.15, 0.1)  # P(1 image), ..., P(5 images)
QUIRKS = ("rgba", "rgba", "rgba", "gray16", "rgb", "not_square")
NOT_SQUARE_CUT = 24  # the not_square image is (image_size - 24) wide, image_size high
# (width, height, pixel spacing) of the scanners in the real CSV.
ORIGINAL_GEOMETRY = ((2500, 2048, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139),
                     (2500, 2048, 0.171), (2048, 2500, 0.168), (2021, 2021, 0.194311))
# Fixed PNG settings (no timestamps are written): fast zlib level 1, Huffman-only strategy.
PNG_OPTIONS = dict(format="PNG", compress_level=1, compress_type=2, optimize=False)

BOX_SIZE = (0.10, 0.14)  # pattern box side, fraction of the image side
JITTER = 0.02  # centre jitter, fraction of the image side
OPACITY = (0.8, 1.0)  # how far a pattern pulls pixels to BRIGHT / DARK
BRIGHT, DARK = 0.95, 0.05
CELLS = (0.2, 0.4, 0.6, 0.8)  # grid cell centres, fraction of the image side
BACKGROUND_SIZE = 64  # the background is drawn at most this large, then upsampled


def _stripes(t):
    return (np.cos(2.5 * np.pi * t) > 0.2).astype(np.float32)  # 3 bars over t in [-1, 1]


def _radius(u, v):
    return np.sqrt(u * u + v * v)


def _square_radius(u, v):
    return np.maximum(np.abs(u), np.abs(v))


def _between(r, inner, outer):
    return ((r > inner) & (r < outer)).astype(np.float32)


def _dome(u, v):
    return np.clip(1.3 * (1 - u * u - v * v), 0, 1)


def _checkerboard(u, v):
    row, column = (np.minimum((t + 1) * 1.5, 2).astype(int) for t in (v, u))  # 3x3 cells
    return ((row + column) % 2 == 0).astype(np.float32)


def _dots(u, v):
    du, dv = u - np.round(u * 1.5) / 1.5, v - np.round(v * 1.5) / 1.5  # 3x3 dot centres
    return (_radius(du, dv) < 0.22).astype(np.float32)


# label -> (pattern, (column, row) of its CELLS). A pattern maps box coordinates u (right),
# v (down) in [-1, 1] to a profile in [-1, 1]: > 0 pulls towards BRIGHT, < 0 towards DARK.
PATTERNS = {
    "Atelectasis": (lambda u, v: _stripes(v), (3, 2)),
    "Cardiomegaly": (lambda u, v: _between(_radius(u, v), -1, 0.92), (2, 2)),
    "Consolidation": (_checkerboard, (2, 1)),
    "Edema": (lambda u, v: _stripes(u), (0, 2)),
    "Effusion": (lambda u, v: (np.abs(u) < (v + 0.95) / 2).astype(np.float32), (0, 3)),
    "Emphysema": (lambda u, v: -_dome(u, v), (1, 3)),
    "Fibrosis": (lambda u, v: _stripes((u + v) / 1.4), (0, 0)),
    "Hernia": (lambda u, v: _between(_radius(u, v), 0.55, 0.95), (1, 2)),
    "Infiltration": (_dots, (2, 0)),
    "Mass": (lambda u, v: _between(np.abs(u) + np.abs(v), -1, 0.95), (1, 1)),
    "Nodule": (lambda u, v: (np.minimum(np.abs(u), np.abs(v)) < 0.28).astype(np.float32), (1, 0)),
    "Pleural_Thickening": (lambda u, v: _between(_square_radius(u, v), 0.6, 0.95), (0, 1)),
    "Pneumonia": (lambda u, v: _between(np.abs(np.abs(u) - np.abs(v)), -1, 0.25), (3, 0)),
    "Pneumothorax": (lambda u, v: -_between(_square_radius(u, v), -1, 0.85), (2, 3)),
}
assert tuple(PATTERNS) == LABELS


def _smooth_noise(rng, cells, size):
    """Bicubically upsampled Gaussian noise: [size, size] float32, std about 1."""
    coarse = Image.fromarray(rng.standard_normal((cells, cells), dtype=np.float32))
    return np.asarray(coarse.resize((size, size), Image.BICUBIC))


def _soft_inside(radius, width):
    """1 inside radius 1, 0 outside, a logistic edge `width` wide (tanh: no overflow)."""
    return 0.5 - 0.5 * np.tanh((radius - 1) / (2 * width))


def _background(rng, size):
    """A radiograph-like background in [0, 1]: [size, size] float32."""
    small = min(size, BACKGROUND_SIZE)
    y, x = np.mgrid[-1:1:small * 1j, -1:1:small * 1j].astype(np.float32)
    # Body: a rounded rectangle filling most of the frame; dark air only near the edges.
    body_r = (np.abs((x - rng.uniform(-0.04, 0.04)) / rng.uniform(0.9, 1.0)) ** 3
              + np.abs((y - rng.uniform(0.1, 0.2)) / rng.uniform(1.05, 1.15)) ** 3) ** (1 / 3)
    body = _soft_inside(body_r, 0.04)
    lungs = 0
    for side in (-1, 1):
        lung_r = np.hypot((x - side * rng.uniform(0.34, 0.42)) / rng.uniform(0.24, 0.3),
                          (y + rng.uniform(0.08, 0.16)) / rng.uniform(0.48, 0.56))
        lungs = lungs + _soft_inside(lung_r, 0.06)
    ribs = np.sin(2 * np.pi * (rng.uniform(5, 7) * y + rng.uniform(0.5, 0.9) * x * x)
                  + rng.uniform(0, 2 * np.pi))
    spine = np.exp(-(x / rng.uniform(0.08, 0.12)) ** 2)
    image = (0.05 + body * (rng.uniform(0.5, 0.62) + 0.12 * spine)
             - lungs * (rng.uniform(0.2, 0.28) + 0.025 * ribs)
             + 0.03 * _smooth_noise(rng, 6, small))  # [small, small]
    image = Image.fromarray(image.astype(np.float32)).resize((size, size), Image.BILINEAR)
    return np.asarray(image) + rng.standard_normal((size, size), dtype=np.float32) * (1.5 / 255)


def _plant(image, label, rng):
    """Draws `label`'s pattern into `image` in place; returns its box (x, y, w, h) in pixels."""
    pattern, (column, row) = PATTERNS[label]
    size = image.shape[0]
    side = int(round(rng.uniform(*BOX_SIZE) * size))
    cx, cy = (np.array([CELLS[column], CELLS[row]]) + rng.uniform(-JITTER, JITTER, 2)) * size
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    v, u = np.mgrid[-1:1:side * 1j, -1:1:side * 1j].astype(np.float32)
    profile = pattern(u, v) * rng.uniform(*OPACITY)  # [side, side] in [-1, 1]
    box = image[y0:y0 + side, x0:x0 + side]
    target = np.where(profile > 0, BRIGHT, DARK)
    box += np.abs(profile) * (target - box)
    return x0, y0, side, side


def render(labels, image_size, seed, patient_id, follow_up):
    """One image: (uint8 [H, W] grayscale, {label: box}). Deterministic in its arguments."""
    rng = np.random.default_rng([seed, patient_id, follow_up])
    image = _background(rng, image_size)
    boxes = {label: _plant(image, label, rng) for label in labels}
    return to_uint8(image), boxes


def _with_quirk(pixels, quirk):
    """uint8 [H, W] -> the PIL image carrying `quirk` (None: plain 8-bit grayscale)."""
    if quirk in ("rgba", "rgb"):
        channels = [pixels] * 3 + ([np.full_like(pixels, 255)] if quirk == "rgba" else [])
        return Image.fromarray(np.stack(channels, axis=-1))
    if quirk == "gray16":
        return Image.fromarray(pixels.astype(np.uint16) * 257)  # mode I;16, 0..65535
    if quirk == "not_square":
        height, width = pixels.shape
        return Image.fromarray(pixels).resize((width - NOT_SQUARE_CUT, height), Image.LANCZOS)
    return Image.fromarray(pixels)


def _write_image(task):
    """Renders and writes one PNG; returns its boxes in the written image's pixels."""
    path, labels, image_size, seed, patient_id, follow_up, quirk = task
    pixels, boxes = render(labels, image_size, seed, patient_id, follow_up)
    image = _with_quirk(pixels, quirk)
    image.save(path, **PNG_OPTIONS)
    scale_x = image.size[0] / image_size
    return {label: (x * scale_x, y, w * scale_x, h) for label, (x, y, w, h) in boxes.items()}


def _sample_labels(rng, count):
    """Finding labels of `count` images: a list of tuples (empty: No Finding)."""
    rates = np.array([HERNIA_RATE if label == "Hernia" else FINDING_RATE for label in LABELS])
    images = []
    for _ in range(count):
        if rng.random() < NO_FINDING_RATE:
            images.append(())
            continue
        found = rng.random(len(LABELS)) < rates
        if not found.any():
            found[rng.integers(len(LABELS))] = True
        images.append(tuple(label for label, f in zip(LABELS, found) if f))
    return images


def _make_table(rng, num_patients):
    """One row per image (sorted by name): name, patient, follow-up, labels, test, metadata."""
    counts = rng.choice(len(IMAGES_PER_PATIENT), num_patients, p=IMAGES_PER_PATIENT) + 1
    patients = np.repeat(np.arange(1, num_patients + 1), counts)
    follow_ups = np.concatenate([np.arange(c) for c in counts])
    num_test = max(1, int(round(TEST_PATIENTS * num_patients)))
    test_patients = rng.permutation(np.arange(1, num_patients + 1))[:num_test]
    ages = np.clip(rng.normal(47, 17, num_patients), 1, 95).astype(int)
    genders = rng.choice(["M", "F"], num_patients, p=(0.56, 0.44))
    geometry = rng.integers(len(ORIGINAL_GEOMETRY), size=len(patients))
    table = pd.DataFrame({
        "name": [f"{p:08d}_{f:03d}.png" for p, f in zip(patients, follow_ups)],
        "patient": patients,
        "follow_up": follow_ups,
        "labels": _sample_labels(rng, len(patients)),
        "test": np.isin(patients, test_patients),
        "age": ages[patients - 1] + follow_ups // 2,
        "gender": genders[patients - 1],
        "view": rng.choice(["PA", "AP"], len(patients), p=(0.6, 0.4)),
        "width": [ORIGINAL_GEOMETRY[g][0] for g in geometry],
        "height": [ORIGINAL_GEOMETRY[g][1] for g in geometry],
        "spacing": [ORIGINAL_GEOMETRY[g][2] for g in geometry],
    })
    # Every label gets positives on both sides of the official split, whatever the size.
    for test in (False, True):
        rows = np.flatnonzero(table.test == test)
        for label in LABELS:
            if not any(label in labels for labels in table.labels.iloc[rows]):
                row = rows[rng.integers(len(rows))]
                old = table.labels.iloc[row]
                table.at[row, "labels"] = tuple(l for l in LABELS if l == label or l in old)
    return table


def _write_text(path, text):
    Path(path).write_text(text, encoding="utf-8", newline="\n")


def _image_dirs(names, layout):
    """name -> relative folder, as the NIH (images/) or Kaggle (images_0NN/images/) copy."""
    if layout == "nih":
        return {name: Path("images") for name in names}
    chunk = -(-len(names) // KAGGLE_FOLDERS)
    return {name: Path(f"images_{i // chunk + 1:03d}") / "images" for i, name in enumerate(names)}


def _check_out_dir(out_dir, overwrite):
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir}: exists and is not empty (use --overwrite)")
        if not (out_dir / QUIRKS_FILE).is_file():
            raise FileExistsError(
                f"{out_dir}: not a synthetic tree (no {QUIRKS_FILE}); refusing to overwrite it")


def generate(out_dir, num_patients=300, image_size=ORIGINAL_SIZE, layout="kaggle", seed=0,
             *, overwrite=False, workers=1, progress=False) -> Path:
    """Writes a ChestX-ray14-shaped tree to `out_dir` and returns its path.

    The tree is built under a temporary name next to `out_dir` and renamed into place
    when complete, so `out_dir` is never left half-written.
    """
    out_dir = Path(out_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if num_patients < len(QUIRKS):
        raise ValueError(f"num_patients must be at least {len(QUIRKS)}, got {num_patients}")
    if image_size <= 2 * NOT_SQUARE_CUT:
        raise ValueError(f"image_size must be more than {2 * NOT_SQUARE_CUT}, got {image_size}")
    _check_out_dir(out_dir, overwrite)

    rng = np.random.default_rng(seed)
    table = _make_table(rng, num_patients)
    quirks = dict(zip(rng.choice(table.name, len(QUIRKS), replace=False), QUIRKS))
    folders = _image_dirs(list(table.name), layout)

    with atomic_directory(out_dir) as tmp:
        for folder in sorted(set(folders.values())):
            (tmp / folder).mkdir(parents=True)
        tasks = [(tmp / folders[r.name] / r.name, r.labels, image_size, seed, r.patient,
                  r.follow_up, quirks.get(r.name)) for r in table.itertuples()]
        with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
            written = (pool.map(_write_image, tasks, chunksize=8) if pool
                       else map(_write_image, tasks))
            boxes = list(tqdm(written, total=len(tasks), desc="images", unit="img",
                              disable=not progress))

        rows = [f"{r.name},{'|'.join(r.labels) or NO_FINDING},{r.follow_up},{r.patient},{r.age},"
                f"{r.gender},{r.view},{r.width},{r.height},{r.spacing},{r.spacing},"
                for r in table.itertuples()]
        _write_text(tmp / DATA_ENTRY, "\n".join([DATA_ENTRY_HEADER, *rows]) + "\n")
        _write_text(tmp / TRAIN_VAL_LIST, "\n".join(table.name[~table.test]))
        _write_text(tmp / TEST_LIST, "\n".join(table.name[table.test]))
        box_rows = [f"{name},{BBOX_SPELLING.get(label, label)},{x:.3f},{y:.3f},{w:.3f},{h:.3f}"
                    for name, image_boxes in zip(table.name, boxes)
                    for label, (x, y, w, h) in image_boxes.items()]
        _write_text(tmp / BBOX_LIST, "\n".join([BBOX_HEADER, *box_rows]) + "\n")
        _write_text(tmp / QUIRKS_FILE, json.dumps(dict(sorted(quirks.items())), indent=2) + "\n")

        if out_dir.exists():
            shutil.rmtree(out_dir)  # --overwrite, checked above: the old tree goes just before the new one lands
    return out_dir

