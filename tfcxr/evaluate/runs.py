"""What evaluation reads from a run and its records: where its outputs go, the labels' source, image/small's size.

Writing them is tfcxr.storage's (atomic writes).
"""

from pathlib import Path

from tfcxr.storage import MANIFEST, read_manifest


def eval_dir(model_dir, split, tta="none"):
    """model_dir/eval/<split>, or model_dir/eval/<split>_tencrop for the ten-crop protocol."""
    return Path(model_dir) / "eval" / (split if tta == "none" else f"{split}_{tta}")


def label_source(records_dir):
    """{"label_file", "label_version"} of the records' manifest.json (what every output states)."""
    manifest = read_manifest(records_dir)
    return {key: manifest.get(key, "unknown") for key in ("label_file", "label_version")}


def small_size(records_dir):
    """The side of the records' image/small (manifest.json's small_size): stage 1's first resize."""
    path = Path(records_dir or ".") / MANIFEST
    if not records_dir or not path.is_file():
        raise FileNotFoundError(f"{path}: no {MANIFEST}; stage 1 reads image/small's size from the records' "
                                f"manifest (pass --records_dir)")
    return int(read_manifest(records_dir)["small_size"])
