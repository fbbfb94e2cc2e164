"""tfcxr.data.metadata: label CSV in its real spellings, official lists, the patient-wise plan."""

import gzip

import numpy as np
import pytest

from tfcxr.constants import LABELS, TEST_IMAGES, TRAIN_VAL_IMAGES, VAL_IMAGES
from tfcxr.data import metadata
from tfcxr.data.metadata import ShardingError
from helpers import HEADER_2017

HEADER_KAGGLE = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                 "View Position,OriginalImageWidth,OriginalImageHeight,"
                 "OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y")
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Mass|Atelectasis,1,1,58,M,PA,2894,2729,0.14300000000000002,0.143",
    "00000002_000.png,No Finding,0,2,80,F,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Pleural_Thickening|Hernia|Effusion,0,3,74,F,PA,2500,2048,0.168,0.168",
]


def write_csv(path, header=HEADER_2017, rows=ROWS, trailing=","):
    text = "\n".join([header, *(row + trailing for row in rows)]) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def table(num_patients, images_of, test_patients):
    """CSV rows and the two lists: patient p has images_of(p) images; patients 1..test_patients are test."""
    rows, train_val, test = [], [], []
    for patient in range(1, num_patients + 1):
        for follow_up in range(images_of(patient)):
            name = f"{patient:08d}_{follow_up:03d}.png"
            rows.append(f"{name},No Finding,{follow_up},{patient},40,M,PA,2500,2048,0.1,0.1")
            (test if patient <= test_patients else train_val).append(name)
    return rows, train_val, test


@pytest.mark.parametrize("header,trailing,name", [
    (HEADER_2017, ",", "Data_Entry_2017.csv"),  # the real 2017 file: trailing empty column
    (HEADER_2017.rstrip(","), "", "Data_Entry_2017_v2020.csv"),  # v2020: none
    (HEADER_2017, ",", "Data_Entry_2017.csv.gz"),
    (HEADER_KAGGLE, "", "sample_labels.csv"),  # Kaggle spelling of the bracket columns
])
def test_read_metadata_normalises_columns(tmp_path, header, trailing, name):
    frame = metadata.read_metadata(write_csv(tmp_path / name, header, ROWS, trailing))
    assert list(frame.columns) == list(metadata.COLUMNS) + list(LABELS)
    assert frame.image_index.tolist() == [row.split(",")[0] for row in ROWS]
    second = frame.iloc[1]
    assert (second.follow_up, second.patient_id, second.patient_age) == (1, 1, 58)
    assert (second.patient_gender, second.view_position) == ("M", "PA")
    assert (second.original_width, second.original_height) == (2894, 2729)
    assert second.pixel_spacing_x == pytest.approx(0.143) and second.pixel_spacing_y == 0.143
    vectors = frame[list(LABELS)].to_numpy()
    expected = np.zeros((4, len(LABELS)), np.int64)
    for row, labels in enumerate([["Cardiomegaly"], ["Mass", "Atelectasis"], [],
                                  ["Pleural_Thickening", "Hernia", "Effusion"]]):
        expected[row, [LABELS.index(label) for label in labels]] = 1
    np.testing.assert_array_equal(vectors, expected)


def test_unknown_label_names_file_line_and_label(tmp_path):
    rows = ROWS[:2] + ["00000002_000.png,Pleural Thickening,0,2,80,F,AP,2500,2048,0.171,0.171"]
    path = write_csv(tmp_path / "Data_Entry_2017.csv", rows=rows)
    with pytest.raises(ShardingError, match=r"Data_Entry_2017.csv: line 4: unknown label 'Pleural Thickening'"):
        metadata.read_metadata(path)


def test_missing_column_is_named(tmp_path):
    path = write_csv(tmp_path / "Data_Entry_2017.csv", HEADER_2017.replace("Patient ID", "Patient"))
    with pytest.raises(ShardingError, match=r"Data_Entry_2017.csv: missing column 'Patient ID'"):
        metadata.read_metadata(path)


def test_bad_number_is_named(tmp_path):
    rows = ROWS[:1] + [ROWS[1].replace(",58,", ",058Y,")]
    with pytest.raises(ShardingError, match=r"line 3: column patient_age: not a number: '058Y'"):
        metadata.read_metadata(write_csv(tmp_path / "Data_Entry_2017.csv", rows=rows))


@pytest.mark.parametrize("name", ["../00000001_000.png", "/etc/passwd", "images/a.png", "a\\b.png", ".."])
def test_names_that_are_not_plain_file_names_are_rejected(tmp_path, name):
    rows = [ROWS[0].replace("00000001_000.png", name)]
    with pytest.raises(ShardingError, match="is not a plain file name"):
        metadata.read_metadata(write_csv(tmp_path / "Data_Entry_2017.csv", rows=rows))
    (tmp_path / "test_list.txt").write_text(f"00000001_000.png\n{name}\n")
    with pytest.raises(ShardingError, match=r"test_list.txt: image name .* is not a plain file name"):
        metadata.read_list(tmp_path / "test_list.txt")


def test_read_list_strips_and_needs_no_trailing_newline(tmp_path):
    (tmp_path / "train_val_list.txt").write_text("a.png\r\nb.png\n\nc.png")
    assert metadata.read_list(tmp_path / "train_val_list.txt") == ["a.png", "b.png", "c.png"]


def test_label_file_defaults_to_v2020_and_can_be_chosen(tmp_path):
    write_csv(tmp_path / "Data_Entry_2017.csv")
    assert metadata.find_label_file(tmp_path).name == "Data_Entry_2017.csv"
    (tmp_path / "metadata").mkdir()
    write_csv(tmp_path / "metadata" / "Data_Entry_2017_v2020.csv.gz", trailing="")
    chosen = metadata.find_label_file(tmp_path)
    assert chosen.name == "Data_Entry_2017_v2020.csv.gz" and metadata.label_version(chosen) == "v2020"
    chosen = metadata.find_label_file(tmp_path, "Data_Entry_2017.csv")
    assert chosen == tmp_path / "Data_Entry_2017.csv" and metadata.label_version(chosen) == "2017"
    with pytest.raises(ShardingError, match="no label file"):
        metadata.find_label_file(tmp_path / "metadata" / "nothing")
    with pytest.raises(ShardingError, match=r"test_list.txt not found"):
        metadata.find_file(tmp_path, "test_list.txt")


def test_find_images_in_both_layouts(tmp_path):
    for folder, name in [("images", "a.png"), ("images_001/images", "b.png"),
                         ("images_012/images", "c.png"), ("images_002", "d.png")]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_bytes(b"")  # never opened
    found = metadata.find_images(tmp_path)
    assert found == {"a.png": tmp_path / "images/a.png", "b.png": tmp_path / "images_001/images/b.png",
                     "c.png": tmp_path / "images_012/images/c.png"}
    (tmp_path / "images_012/images/a.png").write_bytes(b"")
    with pytest.raises(ShardingError, match="a.png found twice"):
        metadata.find_images(tmp_path)


def plan_of(tmp_path, rows, train_val, test, seed=0, val_images=10):
    frame = metadata.read_metadata(write_csv(tmp_path / "Data_Entry_2017.csv", rows=rows, trailing=""))
    return metadata.plan_splits(frame, train_val, test, seed, val_images)


def test_plan_is_patient_wise_seeded_and_sized(tmp_path):
    rows, train_val, test = table(60, lambda p: 1 + p % 4, test_patients=10)
    plan = plan_of(tmp_path, rows, train_val, test, seed=0, val_images=20)
    assert sorted(plan["train"].image_index.tolist() + plan["val"].image_index.tolist()) == sorted(train_val)
    assert plan["test"].image_index.tolist() == sorted(test)
    assert abs(len(plan["val"]) - 20) <= 2  # the closest cut; no patient holds more than 4
    assert not set(plan["val"].patient_id) & set(plan["train"].patient_id)
    for rows_of_split in plan.values():
        assert rows_of_split.image_index.is_monotonic_increasing
    again = plan_of(tmp_path, rows, train_val, test, seed=0, val_images=20)
    other = plan_of(tmp_path, rows, train_val, test, seed=1, val_images=20)
    assert again["val"].equals(plan["val"])
    assert set(other["val"].image_index) != set(plan["val"].image_index)
    assert plan_of(tmp_path, rows, train_val, test, val_images=0)["val"].empty


def test_plan_rejects_overlaps_and_unknown_names(tmp_path):
    rows, train_val, test = table(6, lambda p: 2, test_patients=2)
    with pytest.raises(ShardingError, match=r"1 images are in both train_val_list.txt and test_list.txt \(first: 00000005_000.png\)"):
        plan_of(tmp_path, rows, train_val, test + ["00000005_000.png"])
    moved = [n for n in train_val if n != "00000005_000.png"]
    with pytest.raises(ShardingError, match=r"1 patients have images in both .* \(first: patient 5\)"):
        plan_of(tmp_path, rows, moved, test + ["00000005_000.png"])
    with pytest.raises(ShardingError, match=r"test_list.txt: 1 images are not in the label file \(first: x.png\)"):
        plan_of(tmp_path, rows, train_val, test + ["x.png"])
    with pytest.raises(ShardingError, match="leaves no training images"):
        plan_of(tmp_path, rows, train_val, test, val_images=len(train_val))


@pytest.fixture(scope="module")
def real_tables(real_dir):
    frame = metadata.read_metadata(metadata.find_label_file(real_dir))
    train_val = metadata.read_list(metadata.find_file(real_dir, metadata.TRAIN_VAL_LIST))
    test = metadata.read_list(metadata.find_file(real_dir, metadata.TEST_LIST))
    return frame, train_val, test


def test_real_metadata_and_plan(real_dir, real_tables):
    frame, train_val, test = real_tables
    assert metadata.label_version(metadata.find_label_file(real_dir)) == "v2020"
    assert len(frame) == 112_120 and frame.patient_id.nunique() == 30_805
    counts = frame[list(LABELS)].sum()
    assert (counts["Infiltration"], counts["Hernia"], counts["Pleural_Thickening"]) == (19_894, 227, 3_385)

    plan = metadata.plan_splits(frame, train_val, test, seed=0, val_images=VAL_IMAGES)
    assert len(plan["train"]) + len(plan["val"]) == TRAIN_VAL_IMAGES
    assert len(plan["test"]) == TEST_IMAGES
    assert 9_500 <= len(plan["val"]) <= 10_500
    patients = [set(plan[split].patient_id) for split in ("train", "val", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    again = metadata.plan_splits(frame, train_val, test, seed=0, val_images=VAL_IMAGES)
    assert all(again[split].equals(plan[split]) for split in plan)
    other = metadata.plan_splits(frame, train_val, test, seed=1, val_images=VAL_IMAGES)
    assert set(other["val"].image_index) != set(plan["val"].image_index)
