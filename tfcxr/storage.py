"""Files every layer shares, local or in a bucket: paths, atomic writes, the records' manifest, 8 bits.

The base layer: it imports nothing of tfcxr but tfcxr.constants, so data, models, train,
evaluate, export, tools and benchmarks all write and read through it.

Paths: a local path or a URL that tf.io.gfile takes (gs://bucket/run, s3://, hdfs://, and
ram:// in memory, which the tests use: the same code path as gs://). pathlib collapses the `//`
of a URL (`Path("gs://b/r")` is `gs:/b/r`), so a path that may be remote is a string, joined
with join() and read / written / listed with the functions here: tf.io.gfile for URLs (TensorFlow is
imported on first use), plain files for local paths.

Atomic writes: a file is written under a hidden temporary name beside its own
(`.<name>.<random>.tmp`), then renamed into place, so a reader (or a rerun after a kill) finds
the old file or the whole new one, never half of it. Locally the temporary is flushed to disk
and os.replace'd (atomic on POSIX). On an object store a rename is a copy then a delete (GCS,
S3): the final object still appears whole, since an object becomes visible only when its
upload completes, but a kill between the copy and the delete leaves the temporary behind.
A temporary ends in .tmp, so a folder's leftovers are found with temporaries(folder).
A whole folder (a SavedModel version, a synthetic dataset) is built the same way under a hidden
name and renamed into place (atomic_directory; on an object store copied file by file).
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import glob as globbing

import numpy as np

from tfcxr.constants import LATENT_LEVELS

MANIFEST = "manifest.json"  # a records folder's description, written by tfcxr.data.sharding
TEMPORARY_SUFFIX = ".tmp"
CHUNK_BYTES = 1 << 22  # 4 MiB: sha256 and copies stream in pieces this size


def _gfile():
    """tf.io.gfile, imported on first use: local paths never load TensorFlow (the sharder's metadata
    and synthetic modules stay TensorFlow-free)."""
    import tensorflow as tf

    return tf.io.gfile


def _url_errors(path) -> tuple[type[Exception], ...]:
    """TensorFlow's file errors for a URL (what gfile raises), nothing more for a local path."""
    if not is_url(path):
        return ()
    import tensorflow as tf

    return (tf.errors.OpError,)


def is_url(path) -> bool:
    """True for scheme://... paths (gs://, s3://, ram://...), which only tf.io.gfile may touch."""
    return "://" in str(path)


def join(base, *parts) -> str:
    """`base`/`parts` as a string; keeps a URL's `//` (pathlib would not)."""
    return os.path.join(str(base), *(str(part) for part in parts))


def parent(path) -> str:
    """The folder holding `path` (a string; a URL stays one)."""
    return os.path.dirname(str(path).rstrip("/"))


def name(path) -> str:
    """The last part of `path`."""
    return os.path.basename(str(path).rstrip("/"))


def exists(path) -> bool:
    return _gfile().exists(str(path)) if is_url(path) else os.path.exists(path)


def isdir(path) -> bool:
    return _gfile().isdir(str(path)) if is_url(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return exists(path) and not isdir(path)


def makedirs(path) -> None:
    if is_url(path):
        _gfile().makedirs(str(path))
    else:
        os.makedirs(path, exist_ok=True)


def glob(pattern) -> list[str]:
    """Paths matching `pattern`, sorted."""
    return sorted(_gfile().glob(str(pattern)) if is_url(pattern) else globbing.glob(str(pattern)))


def size(path) -> int:
    return _gfile().stat(str(path)).length if is_url(path) else os.path.getsize(path)


def remove(path) -> None:
    """Deletes a file; nothing when it is not there."""
    if not is_url(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    import tensorflow as tf

    with contextlib.suppress(tf.errors.NotFoundError):
        _gfile().remove(str(path))


def open_file(path, mode="rb"):
    """A file object on a local path (open) or a URL (tf.io.gfile.GFile)."""
    return _gfile().GFile(str(path), mode) if is_url(path) else open(path, mode)


def read_bytes(path) -> bytes:
    """The file's bytes; a missing file raises FileNotFoundError naming it."""
    try:
        with open_file(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except _url_errors(path) as error:
        if type(error).__name__ == "NotFoundError":
            raise FileNotFoundError(f"{path}: not found") from None
        raise


def read_text(path) -> str:
    return read_bytes(path).decode()


def sha256(path) -> str:
    """The file's sha256, streamed."""
    digest = hashlib.sha256()
    with open_file(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def copy_tree(source, target) -> None:
    """Copies every file under folder `source` to the same place under `target` (either may be a URL)."""
    if not (is_url(source) or is_url(target)):
        shutil.copytree(source, target, dirs_exist_ok=True)
        return
    for folder, _, files in _gfile().walk(str(source)):
        relative = os.path.relpath(folder, str(source)) if folder != str(source) else ""
        makedirs(join(target, relative) if relative else target)
        for file in files:
            if exists(join(folder, file)):  # ram:// also lists `assets.extra/x` as `assets/.extra`: not there
                _gfile().copy(join(folder, file), join(target, relative, file), overwrite=True)


def rmtree(path) -> None:
    """Deletes folder `path` and everything under it; nothing when it is not there."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    if not exists(path):
        return
    for folder, _, files in _gfile().walk(str(path)):
        for file in files:
            remove(join(folder, file))
    with contextlib.suppress(*_url_errors(path)):
        _gfile().rmtree(str(path))


def temporaries(folder) -> list[str]:
    """What the atomic writes here left behind in `folder` when a run was killed."""
    return glob(join(folder, f".*{TEMPORARY_SUFFIX}"))


@contextlib.contextmanager
def atomic_path(path, suffix=TEMPORARY_SUFFIX):
    """Yields a new file name beside `path` to write by any means (bytes, a TFRecordWriter, model.save).

    A local `path` gets a pathlib.Path (an empty file, flushed to disk and os.replace'd onto
    `path` when the block ends); a URL gets a URL string (renamed onto `path` through gfile: a copy
    and a delete on an object store). When the block raises, the temporary is removed and `path`
    left as it was. suffix: the temporary's ending (Keras saves only to names ending in .keras).
    """
    if is_url(path):
        temporary = join(parent(path), f".{name(path)}.{uuid.uuid4().hex[:8]}{suffix}")
        makedirs(parent(path))
        try:
            yield temporary
            _gfile().rename(temporary, str(path), overwrite=True)
        finally:
            remove(temporary)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(temporary_name)
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
    numeric version folders only, never sees a half-written SavedModel. A local `path` gets a
    pathlib.Path; a URL a URL string, its files copied into place when the block ends (object
    stores have no folder rename), then the temporary deleted.
    """
    if is_url(path):
        temporary = join(parent(path), f".{name(path)}.{uuid.uuid4().hex[:8]}")
        makedirs(temporary)
        try:
            yield temporary
            copy_tree(temporary, path)
        finally:
            rmtree(temporary)
        return
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
    if not isinstance(data, bytes):
        raise TypeError(f"{path}: write_bytes takes bytes, not {type(data).__name__}")
    with atomic_path(path) as temporary:
        with open_file(temporary, "wb") as file:
            file.write(data)


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
    path = join(records_dir, MANIFEST)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {MANIFEST}; shard the data with tools/shard_cxr14.py") from None
    except (OSError, *_url_errors(path)) as error:
        raise ValueError(f"{path}: cannot read {MANIFEST} ({getattr(error, 'strerror', None) or error})") from None
    try:
        return json.loads(data)
    except ValueError as error:
        raise ValueError(f"{path}: not a readable {MANIFEST} ({error}); shard the data again") from None


def to_uint8(values) -> np.ndarray:
    """float array in [0, 1] -> uint8: round(clip(x, 0, 1) * 255), what an 8-bit PNG stores.

    The NumPy twin of tfcxr.models.compression.to_uint8 (tensors), with the same numbers.
    """
    return np.round(np.clip(values, 0.0, 1.0) * LATENT_LEVELS).astype(np.uint8)
