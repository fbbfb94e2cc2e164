"""Files every layer shares: atomic writes, the records' manifest, and [0, 1] floats as 8 bits.

The base layer: it imports nothing of tfcxr but tfcxr.constants, so data, models, train,
evaluate, export, tools and benchmarks all write and read through it.

Atomic writes: a file is written under a hidden temporary name beside its own
(`.<name>.<random>.tmp`), flushed to disk, then renamed into place, so a reader (or a rerun after
a kill) finds the old file or the whole new one, never half of it. A temporary left by a kill ends
in .tmp, so a folder's leftovers are found with `folder.glob(".*.tmp")` (the sharder does).
A whole folder (a SavedModel version, a synthetic dataset) is built the same way under a hidden
name and renamed into place (atomic_directory).
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tfcxr.constants import LATENT_LEVELS

MANIFEST = "manifest.json"  # a records folder's description, written by tfcxr.data.sharding
TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path, suffix=TEMPORARY_SUFFIX):
    """Yields a new empty file beside `path` to write by any means (bytes, a TFRecordWriter, model.save).

    When the block ends, the file is flushed to disk and renamed onto `path`; when it raises, the
    file is removed and `path` left as it was. suffix: the temporary's ending (Keras saves only
    to names ending in .keras).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        temporary.chmod(0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a new empty folder beside `path` to fill; renamed onto `path` when the block ends.

    `path` must not exist by then (or be an empty folder); when the block raises, the new folder
    is removed with all it holds. Its temporary name starts with a dot, so TF Serving, which loads
    numeric version folders only, never sees a half-written SavedModel.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        temporary.chmod(0o755)  # mkdtemp makes it private
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def write_bytes(path, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode())


def write_json(path, value) -> None:
    """Writes `value` as indented JSON atomically; NaN or infinity is refused (ValueError), not written."""
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def save_figure(figure, path) -> None:
    """Saves a matplotlib figure as PNG (120 dpi, tight), atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def read_manifest(records_dir) -> dict:
    """The records folder's manifest.json as a dict.

    A missing one raises FileNotFoundError, an unreadable one ValueError, each one line naming
    the path, so a wrong --records_dir is seen at once.
    """
    path = Path(records_dir) / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {MANIFEST}; shard the data with tools/shard_cxr14.py") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read {MANIFEST} ({error.strerror})") from None
    try:
        return json.loads(data)
    except ValueError as error:
        raise ValueError(f"{path}: not a readable {MANIFEST} ({error}); shard the data again") from None


def to_uint8(values) -> np.ndarray:
    """float array in [0, 1] -> uint8: round(clip(x, 0, 1) * 255), what an 8-bit PNG stores.

    The NumPy twin of tfcxr.models.compression.to_uint8 (tensors), with the same numbers.
    """
    return np.round(np.clip(values, 0.0, 1.0) * LATENT_LEVELS).astype(np.uint8)
