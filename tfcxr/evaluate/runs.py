"""What evaluation reads from a run and its records, and how it writes (atomically)."""

import json
import os
import tempfile
from pathlib import Path

from tfcxr.data import schema


def eval_dir(model_dir, split, tta="none"):
    """model_dir/eval/<split>, or model_dir/eval/<split>_tencrop for the ten-crop protocol."""
    return Path(model_dir) / "eval" / (split if tta == "none" else f"{split}_{tta}")


def label_source(records_dir):
    """{"label_file", "label_version"} of the records' manifest.json (what every output states)."""
    path = Path(records_dir) / schema.MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json; shard the data with tools/shard_cxr14.py")
    manifest = json.loads(path.read_text())
    return {key: manifest.get(key, "unknown") for key in ("label_file", "label_version")}


def small_size(records_dir):
    """The side of the records' image/small (manifest.json's small_size): stage 1's first resize."""
    path = Path(records_dir or ".") / schema.MANIFEST
    if not records_dir or not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json; stage 1 reads image/small's size from the records' "
                                f"manifest (pass --records_dir)")
    return int(json.loads(path.read_text())["small_size"])


def write_bytes(path, data):
    """Writes under a temporary name in the same folder, then renames into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_text(path, text):
    write_bytes(path, text.encode())


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def save_figure(figure, path):
    """Saves a matplotlib figure as PNG, atomically."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())
