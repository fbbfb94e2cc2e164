"""The synthetic ChestX-ray14 tree: real formats, layouts, quirks, determinism, learnable findings."""

import filecmp
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tfcxr.constants import LABELS, NO_FINDING
from tfcxr.data import synthetic
from helpers import run_tool

PANDAS_COLUMNS = [  # what pandas makes of the real 2017 header
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
    "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
    "OriginalImagePixelSpacing[x", "y]", "Unnamed: 11",
]


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """Enough images (about 540, 128 px) for prevalence, pattern and learnability checks."""
    out = tmp_path_factory.mktemp("synthetic_big") / "cxr14"
    return synthetic.generate(out, num_patients=200, image_size=128, layout="nih", seed=1)


def read_entries(tree):
    return pd.read_csv(tree / synthetic.DATA_ENTRY)


def read_list(tree, name):
    return (tree / name).read_text().split("\n")


def label_matrix(entries):
    """Finding Labels -> bool [N, 14] in LABELS order."""
    findings = entries["Finding Labels"].str.split("|")
    return np.array([[label in labels for label in LABELS] for labels in findings])


def image_paths(tree):
    return {path.name: path for path in tree.rglob("*.png")}


def test_data_entry_has_the_real_2017_header(synthetic_dir):
    lines = (synthetic_dir / synthetic.DATA_ENTRY).read_text().split("\n")
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    assert lines[-1] == "" and all(line.count(",") == 11 and line.endswith(",")
                                   for line in lines[1:-1])
    entries = read_entries(synthetic_dir)
    assert list(entries.columns) == PANDAS_COLUMNS
    assert entries["Unnamed: 11"].isna().all()


def test_data_entry_matches_the_real_v2020_columns(synthetic_dir, real_dir):
    real = (real_dir / "metadata" / "Data_Entry_2017_v2020.csv").open().readline().rstrip("\n")
    ours = (synthetic_dir / synthetic.DATA_ENTRY).open().readline().rstrip("\n")
    assert ours == real + ","  # the 2017 file: the v2020 header plus a trailing empty column
    real_rows = pd.read_csv(real_dir / "metadata" / "Data_Entry_2017_v2020.csv", nrows=50)
    ours_rows = read_entries(synthetic_dir).iloc[:, :11]
    assert list(ours_rows.dtypes) == list(real_rows.dtypes)


def test_rows_look_like_the_real_ones(synthetic_dir):
    entries = read_entries(synthetic_dir)
    names = entries["Image Index"]
    assert names.is_unique and list(names) == sorted(names)
    parts = names.str.extract(r"^(\d{8})_(\d{3})\.png$").astype(int)
    assert (parts[0] == entries["Patient ID"]).all() and (parts[1] == entries["Follow-up #"]).all()
    findings = entries["Finding Labels"].str.split("|").explode()
    assert set(findings) <= set(LABELS) | {NO_FINDING}
    assert "Pleural_Thickening" in set(findings)
    assert set(entries["Patient Gender"]) == {"M", "F"}
    assert set(entries["View Position"]) == {"PA", "AP"}
    assert entries["Patient Age"].between(1, 100).all()
    assert (entries["OriginalImage[Width"] > 1000).all() and (entries["Height]"] > 1000).all()
    assert entries["OriginalImagePixelSpacing[x"].between(0.1, 0.2).all()
    assert entries.groupby("Patient ID").size().between(1, 5).all()
    assert entries.groupby("Patient ID").size().max() > 1


@pytest.mark.parametrize("layout", synthetic.LAYOUTS)
def test_every_listed_image_is_in_the_layout(layout, tmp_path, synthetic_dir):
    tree = (synthetic_dir if layout == "kaggle" else
            synthetic.generate(tmp_path / "nih", num_patients=10, image_size=64, layout="nih"))
    names = list(read_entries(tree)["Image Index"])
    pngs = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))
    if layout == "nih":
        assert pngs == [f"images/{name}" for name in names]
    else:
        assert [p.split("/")[-1] for p in pngs] == names
        assert all(re.fullmatch(r"images_0\d\d/images/\d{8}_\d{3}\.png", p) for p in pngs)
        folders = sorted({p.split("/")[0] for p in pngs})
        assert folders[0] == "images_001" and len(folders) == synthetic.KAGGLE_FOLDERS


def test_lists_are_sorted_patient_disjoint_and_cover_the_csv(synthetic_dir):
    entries = read_entries(synthetic_dir)
    train_val = read_list(synthetic_dir, synthetic.TRAIN_VAL_LIST)
    test = read_list(synthetic_dir, synthetic.TEST_LIST)
    assert train_val == sorted(train_val) and test == sorted(test)
    assert "" not in train_val + test  # one name a line, no trailing newline
    assert sorted(train_val + test) == sorted(entries["Image Index"])
    patient = dict(zip(entries["Image Index"], entries["Patient ID"]))
    test_patients = {patient[name] for name in test}
    assert not test_patients & {patient[name] for name in train_val}
    assert 0.15 < len(test_patients) / entries["Patient ID"].nunique() < 0.3


def test_quirks_are_planted_with_the_right_modes_and_sizes(synthetic_dir):
    quirks = json.loads((synthetic_dir / synthetic.QUIRKS_FILE).read_text())
    assert sorted(quirks.values()) == sorted(synthetic.QUIRKS)
    assert 2 <= list(quirks.values()).count("rgba") <= 3
    paths = image_paths(synthetic_dir)
    expected = {"rgba": ("RGBA", (128, 128)), "rgb": ("RGB", (128, 128)),
                "gray16": ("I;16", (128, 128)),
                "not_square": ("L", (128 - synthetic.NOT_SQUARE_CUT, 128))}
    for name, path in paths.items():
        with Image.open(path) as image:
            assert (image.mode, image.size) == expected.get(quirks.get(name), ("L", (128, 128))), name
            pixels = np.asarray(image)
        if quirks.get(name) == "gray16":
            assert pixels.max() > 255 * 16  # scaled to 16 bits, not 8-bit values in a 16-bit file
        if quirks.get(name) in ("rgb", "rgba"):
            assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        if quirks.get(name) == "rgba":
            assert (pixels[..., 3] == 255).all()


def test_bbox_file_has_the_real_format_and_every_planted_finding(synthetic_dir):
    path = synthetic_dir / synthetic.BBOX_LIST
    assert path.read_text().split("\n")[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    boxes = pd.read_csv(path, index_col=False)
    assert list(boxes.columns[:6]) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    assert "Infiltrate" in set(boxes["Finding Label"]) and "Infiltration" not in set(boxes["Finding Label"])
    entries = read_entries(synthetic_dir)
    planted = {(name, synthetic.BBOX_SPELLING.get(label, label))
               for name, labels in zip(entries["Image Index"], entries["Finding Labels"])
               for label in labels.split("|") if label != NO_FINDING}
    assert set(zip(boxes["Image Index"], boxes["Finding Label"])) == planted
    assert len(boxes) == len(planted)
    x, y, w, h = (boxes[c].to_numpy() for c in ("Bbox [x", "y", "w", "h]"))
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 128).all() and (y + h <= 128).all()
    assert (w > 0.09 * 104).all() and (h < 0.15 * 128).all()


def test_real_bbox_header_is_the_same(synthetic_dir, real_dir):
    real = (real_dir / "metadata" / "BBox_List_2017.csv").open().readline()
    assert (synthetic_dir / synthetic.BBOX_LIST).open().readline() == real


def test_same_arguments_give_a_byte_identical_tree(tmp_path):
    first = synthetic.generate(tmp_path / "a", num_patients=8, image_size=64, seed=3)
    second = synthetic.generate(tmp_path / "b", num_patients=8, image_size=64, seed=3)
    other = synthetic.generate(tmp_path / "c", num_patients=8, image_size=64, seed=4)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert len(match) == len(files) and not mismatch and not errors
    assert (first / synthetic.DATA_ENTRY).read_bytes() != (other / synthetic.DATA_ENTRY).read_bytes()


def test_prevalence_and_both_splits_have_every_label(big_dir):
    entries = read_entries(big_dir)
    labels = label_matrix(entries)
    prevalence = dict(zip(LABELS, labels.mean(axis=0)))
    assert all(0.08 <= p <= 0.25 for p in prevalence.values()), prevalence
    assert 0.35 <= (entries["Finding Labels"] == NO_FINDING).mean() <= 0.45
    assert (labels.sum(axis=1) > 1).mean() > 0.2  # multi-label images are common
    test = entries["Image Index"].isin(read_list(big_dir, synthetic.TEST_LIST)).to_numpy()
    assert labels[test].any(axis=0).all() and labels[~test].any(axis=0).all()


@pytest.mark.parametrize("num_patients", [6, 7])
def test_tiny_trees_still_have_every_label_in_both_splits(tmp_path, num_patients):
    tree = synthetic.generate(tmp_path / "t", num_patients=num_patients, image_size=64)
    entries = read_entries(tree)
    labels = label_matrix(entries)
    test = entries["Image Index"].isin(read_list(tree, synthetic.TEST_LIST)).to_numpy()
    assert labels[test].any(axis=0).all() and labels[~test].any(axis=0).all()


def test_each_label_plants_a_visible_pattern_in_its_box(big_dir):
    entries = read_entries(big_dir).set_index("Image Index")
    quirks = json.loads((big_dir / synthetic.QUIRKS_FILE).read_text())
    plain = [name for name in entries.index if name not in quirks]
    pixels = {name: np.asarray(Image.open(big_dir / "images" / name), np.float32) for name in plain}
    boxes = pd.read_csv(big_dir / synthetic.BBOX_LIST, index_col=False)
    for label in LABELS:
        spelled = synthetic.BBOX_SPELLING.get(label, label)
        without = [pixels[n] for n in plain if label not in entries.at[n, "Finding Labels"]]
        with_label = boxes[(boxes["Finding Label"] == spelled) & boxes["Image Index"].isin(plain)]
        inside, control = [], []
        for name, _, x, y, w, h in with_label.iloc[:, :6].itertuples(index=False):
            rows, cols = slice(int(y), int(y + h)), slice(int(x), int(x + w))
            reference = np.mean([image[rows, cols] for image in without], axis=0)
            inside.append(np.abs(pixels[name][rows, cols] - reference).mean())
            control.append(np.abs(without[len(control)][rows, cols] - reference).mean())
        assert np.mean(inside) > 25 and np.mean(inside) > 3 * np.mean(control), label


def test_patterns_are_learnable_by_a_linear_model(big_dir):
    """Logistic regression on 32x32 downsized images: mean per-label test AUC far above chance."""
    entries = read_entries(big_dir)
    paths = image_paths(big_dir)
    features = np.stack([
        np.asarray(Image.open(paths[name]).convert("L").resize((32, 32), Image.BILINEAR),
                   np.float32).ravel() / 255 for name in entries["Image Index"]])  # [N, 1024]
    labels = label_matrix(entries)
    test = entries["Image Index"].isin(read_list(big_dir, synthetic.TEST_LIST)).to_numpy()
    aucs = []
    for index in range(len(LABELS)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, solver="liblinear"))
        model.fit(features[~test], labels[~test, index])
        aucs.append(roc_auc_score(labels[test, index], model.decision_function(features[test])))
    assert np.mean(aucs) > 0.8 and min(aucs) > 0.7, dict(zip(LABELS, np.round(aucs, 3)))


def test_no_finding_images_carry_no_pattern(synthetic_dir):
    entries = read_entries(synthetic_dir)
    quirks = json.loads((synthetic_dir / synthetic.QUIRKS_FILE).read_text())
    paths = image_paths(synthetic_dir)
    clean = entries[(entries["Finding Labels"] == NO_FINDING) & ~entries["Image Index"].isin(quirks)]
    for name, patient, follow_up in clean[["Image Index", "Patient ID", "Follow-up #"]].values:
        pixels, boxes = synthetic.render((), 128, 0, patient, follow_up)  # seed 0, as the fixture
        assert boxes == {}
        np.testing.assert_array_equal(np.asarray(Image.open(paths[name])), pixels)
    background = synthetic.render(("Mass",), 128, 0, 1, 0)[0]
    assert np.abs(background.astype(int) - synthetic.render((), 128, 0, 1, 0)[0]).max() > 100


def test_bad_arguments_raise_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        synthetic.generate(tmp_path / "x", num_patients=10, image_size=64, layout="zip")
    with pytest.raises(ValueError, match="num_patients"):
        synthetic.generate(tmp_path / "x", num_patients=2, image_size=64)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate(tmp_path / "x", num_patients=10, image_size=32)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(busy, num_patients=10, image_size=64)
    with pytest.raises(FileExistsError, match="not a synthetic tree"):
        synthetic.generate(busy, num_patients=10, image_size=64, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert (busy / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_generated_tree(tmp_path):
    tree = synthetic.generate(tmp_path / "t", num_patients=10, image_size=64, seed=0)
    (tree / "stale.txt").write_text("old")
    synthetic.generate(tree, num_patients=6, image_size=64, seed=1, overwrite=True)
    assert not (tree / "stale.txt").exists()
    assert read_entries(tree)["Patient ID"].max() == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    write_image, written = synthetic._write_image, []

    def write_four_then_fail(task):
        if len(written) == 4:
            raise OSError("disk full")
        written.append(write_image(task))
        return written[-1]

    monkeypatch.setattr(synthetic, "_write_image", write_four_then_fail)
    with pytest.raises(OSError, match="disk full"):
        synthetic.generate(tmp_path / "t", num_patients=10, image_size=64)
    assert len(written) == 4 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_writes_the_same_tree_in_parallel_and_refuses_a_busy_dir(tmp_path):
    flags = [f"--out_dir={tmp_path / 'cli'}", "--num_patients=8", "--image_size=64", "--layout=nih", "--seed=5",
             "--workers=2"]
    done = run_tool("make_synthetic_cxr14.py", *flags, timeout=120)
    assert done.returncode == 0, done.stderr
    serial = synthetic.generate(tmp_path / "serial", num_patients=8, image_size=64, layout="nih",
                                seed=5)
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(serial, tmp_path / "cli", files, shallow=False)
    assert len(match) == len(files) and not mismatch and not errors

    again = run_tool("make_synthetic_cxr14.py", *flags, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'cli'}: exists and is not empty (use --overwrite)"]
