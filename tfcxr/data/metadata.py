"""ChestX-ray14 metadata: the label CSV, the official lists, the patient-wise split plan.

Pure functions over pandas DataFrames. The plan is a function of the label file, the two
lists and the seed only, never of which images are on disk, so a partial download shards
into the same splits as the full one.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd

from tfcxr.constants import LABELS, NO_FINDING

LABEL_FILES = (  # the first one found is the default: v2020 when both versions are present
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

# Clean column name -> header spellings. The NIH header "OriginalImage[Width,Height]" is split
# by its inner comma into two columns "OriginalImage[Width" and "Height]" (the same for the
# pixel spacing); the Kaggle sample spells them out.
COLUMNS = {
    "image_index": ("Image Index",),
    "finding_labels": ("Finding Labels",),
    "follow_up": ("Follow-up #",),
    "patient_id": ("Patient ID",),
    "patient_age": ("Patient Age",),
    "patient_gender": ("Patient Gender", "Patient Sex"),
    "view_position": ("View Position",),
    "original_width": ("OriginalImage[Width", "OriginalImageWidth"),
    "original_height": ("Height]", "OriginalImageHeight"),
    "pixel_spacing_x": ("OriginalImagePixelSpacing[x", "OriginalImagePixelSpacing_x"),
    "pixel_spacing_y": ("y]", "OriginalImagePixelSpacing_y"),
}
INTEGER_COLUMNS = ("follow_up", "patient_id", "patient_age", "original_width", "original_height")
FLOAT_COLUMNS = ("pixel_spacing_x", "pixel_spacing_y")
PLAIN_NAME = re.compile(r"[^/\\\x00]+")


class ShardingError(ValueError):
    """Bad input to the metadata readers or the sharder; the message names file and problem."""


def check_name(name, source):
    """Rejects an image name that is not a plain file name (`../x.png`, `/abs`, `a/b.png`)."""
    if not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise ShardingError(f"{source}: image name {name!r} is not a plain file name")
    return name


def find_file(data_dir, name):
    """`data_dir/name`, else the single `data_dir/*/name` (e.g. metadata/, splits/)."""
    data_dir = Path(data_dir)
    if (data_dir / name).is_file():
        return data_dir / name
    found = sorted(path for path in data_dir.glob(f"*/{name}") if path.is_file())
    if len(found) != 1:
        problem = "not found" if not found else f"found {len(found)} times"
        raise ShardingError(f"{data_dir}: {name} {problem} (looked in it and its subfolders)")
    return found[0]


def find_label_file(data_dir, label_file=None):
    """The label CSV: `label_file` (a path, or a name under data_dir) or the first of LABEL_FILES."""
    if label_file is not None:
        if Path(label_file).is_file():
            return Path(label_file)
        return find_file(data_dir, label_file)
    for name in LABEL_FILES:
        try:
            return find_file(data_dir, name)
        except ShardingError:
            continue
    raise ShardingError(f"{data_dir}: no label file (looked for {', '.join(LABEL_FILES)})")


def label_version(path):
    """"v2020" or "2017", from the file name."""
    return "v2020" if "v2020" in Path(path).name else "2017"


def parse_labels(finding_labels, source):
    """"Effusion|Mass" strings -> int DataFrame [N, 14], one column per label in LABELS order."""
    names = finding_labels.str.split("|").explode().str.strip()  # one row per (image, label)
    unknown = names[~names.isin(LABELS + (NO_FINDING,))]
    if len(unknown):
        raise ShardingError(f"{source}: line {unknown.index[0] + 2}: unknown label {unknown.iloc[0]!r}")
    dummies = pd.get_dummies(names).groupby(level=0).max()
    return dummies.reindex(columns=list(LABELS), fill_value=0).astype(np.int64)


def read_metadata(path):
    """Data_Entry_2017[_v2020].csv[.gz] -> DataFrame with the clean COLUMNS plus one 0/1
    column per label (LABELS order), in file order."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, skipinitialspace=True)
    except (OSError, ValueError, EOFError) as error:
        raise ShardingError(f"{path}: unreadable CSV ({error})") from None
    frame = pd.DataFrame(index=raw.index)
    for column, spellings in COLUMNS.items():
        header = next((name for name in spellings if name in raw.columns), None)
        if header is None:
            raise ShardingError(f"{path}: missing column {spellings[0]!r}")
        frame[column] = raw[header]
    for column in INTEGER_COLUMNS + FLOAT_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise ShardingError(
                f"{path}: line {row + 2}: column {column}: not a number: {frame[column][row]!r}")
        frame[column] = values.astype(np.int64 if column in INTEGER_COLUMNS else np.float64)
    for name in frame.image_index:
        check_name(name, path)
    duplicated = frame.image_index[frame.image_index.duplicated()]
    if len(duplicated):
        raise ShardingError(f"{path}: image {duplicated.iloc[0]} appears more than once")
    return pd.concat([frame, parse_labels(frame.finding_labels, path)], axis=1)


def read_list(path):
    """An official list (one image name a line) -> the names, in file order."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ShardingError(f"{path}: unreadable list ({error})") from None
    if len(set(names)) != len(names):
        raise ShardingError(f"{path}: an image name appears more than once")
    return [check_name(name, path) for name in names]


def plan_splits(metadata, train_val_names, test_names, seed, val_images):
    """-> {"train", "val", "test": DataFrame sorted by image_index}.

    Val is about `val_images` images carved patient-wise out of train_val: patients in a seeded
    random order, cut where the running image count comes closest to `val_images`
    (scikit-learn's GroupShuffleSplit sizes by patients, not images).
    """
    both = sorted(set(train_val_names) & set(test_names))
    if both:
        raise ShardingError(f"{len(both)} images are in both {TRAIN_VAL_LIST} and {TEST_LIST} "
                            f"(first: {', '.join(both[:3])})")
    frame = metadata.set_index("image_index", drop=False).sort_index()
    for list_name, names in ((TRAIN_VAL_LIST, train_val_names), (TEST_LIST, test_names)):
        unknown = sorted(set(names) - set(frame.index))
        if unknown:
            raise ShardingError(f"{list_name}: {len(unknown)} images are not in the label file "
                                f"(first: {', '.join(unknown[:3])})")
    train_val = frame.loc[sorted(train_val_names)]
    test = frame.loc[sorted(test_names)]
    shared = sorted(set(train_val.patient_id) & set(test.patient_id))
    if shared:
        raise ShardingError(f"{len(shared)} patients have images in both {TRAIN_VAL_LIST} and "
                            f"{TEST_LIST} (first: patient {shared[0]})")
    if val_images >= len(train_val):
        raise ShardingError(f"val_images={val_images} leaves no training images "
                            f"({len(train_val)} in {TRAIN_VAL_LIST})")

    images_per_patient = train_val.patient_id.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(images_per_patient.index.to_numpy())
    running = np.concatenate([[0], np.cumsum(images_per_patient.loc[order].to_numpy())])
    val_patients = order[: np.argmin(np.abs(running - val_images))]
    is_val = train_val.patient_id.isin(val_patients)
    plan = {"train": train_val[~is_val], "val": train_val[is_val], "test": test}

    patients = {split: set(rows.patient_id) for split, rows in plan.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"]), "a patient is in two splits"
    return {split: rows.reset_index(drop=True) for split, rows in plan.items()}


def find_images(data_dir):
    """{name: path} of every PNG under `images/` (NIH) or `images_*/images/` (Kaggle)."""
    data_dir = Path(data_dir)
    images = {}
    for path in sorted(data_dir.glob("images/*.png")) + sorted(data_dir.glob("images_*/images/*.png")):
        if path.name in images:
            raise ShardingError(f"{data_dir}: {path.name} found twice: {images[path.name]} and {path}")
        images[path.name] = path
    return images
