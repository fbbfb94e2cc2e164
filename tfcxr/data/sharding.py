"""Shards ChestX-ray14 into TFRecords: `{split}-NNNNN-of-NNNNN.tfrecord`, `small/` and a manifest.

Decisions (each one the simplest that is correct):
- Pixels: every source becomes 8-bit grayscale. 16-bit (PIL modes I;16*, I) is scaled by 1/257,
  rounded, so 0..65535 maps onto 0..255 exactly (v * 257 -> v); every other mode goes through
  PIL's `convert("L")`: RGB/RGBA by ITU-R 601-2 luma with the alpha dropped (the real RGBA
  radiographs are opaque with R=G=B, so this is exact), palettes through their palette.
  Any source whose mode is not L is listed in the manifest's "converted" with that mode.
- image/encoded: an 8-bit grayscale source PNG is stored as its own IHDR/IDAT/IEND chunks
  (ancillary chunks such as tIME dropped, every CRC checked): the same pixels, no metadata,
  one CRC pass instead of a deflate of 1 MB. Other sources are re-encoded with
  PNG_COMPRESS_LEVEL, no metadata: byte-deterministic. encoding="raw": the H*W uint8 pixels.
- image/small: PIL BILINEAR resize to small_size x small_size (PIL's filters scale their
  support with the reduction, so this is antialiased; it is what torchvision's Resize(256)
  does to a PIL image in the PyTorch reference), stored as PNG. pixels.resize_pil runs its two
  passes horizontal first whatever Pillow's version, and pixels.resize_tf, in stage-1
  serving, gives the same pixels (tests/test_pixels.py).
- Shard count per split: ceil(estimated bytes / shard_mb MiB), decided before writing from the
  sources (PNG: file size; raw: pixel count from the PNG header). The split's planned rows are
  shuffled with the seed, the images on disk kept in that order and cut into that many
  near-equal runs (np.array_split). small/ holds the same Examples minus image/encoded.
- Resume: a shard and its small companion are written under temporary names, flushed and
  renamed into place (tfcxr.storage.atomic_path), then a sidecar `.progress/<shard>.json` records
  a key of the exact inputs (rows, labels, settings, source sizes and mtimes) and the shards'
  sha256 and size. A rerun skips a shard whose sidecar key matches and whose files have the
  recorded sizes; since a final name only ever holds a complete file, re-hashing gigabytes is
  not needed. Stale temporaries (a killed run's) are removed at start and after a failure.
- out_dir may be a URL (gs://bucket/records): shards, sidecars and the manifest go through
  tf.io.gfile (tfcxr.storage). There a rename is a copy and a delete, and a final name still only
  ever holds a whole object; the manifest is written last, after every shard and sidecar, so a
  manifest lists only complete shards with their sha256. verify() re-reads every shard against it.
"""

import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from tfcxr.constants import LABELS, SMALL_SIZE, VAL_IMAGES
from tfcxr.data import image_limits, metadata, pipeline, schema
from tfcxr.data import pixels as gray_pixels
from tfcxr.data.image_limits import PNG_SIGNATURE
from tfcxr.data.metadata import ShardingError
from tfcxr import storage
from tfcxr.storage import atomic_path, write_text

ENCODINGS = ("png", "raw")
PNG_COMPRESS_LEVEL = 1  # zlib's fastest: a few times faster than 6 for slightly larger image/small (small beside a record)
SMALL_DIR = "small"
PROGRESS_DIR = ".progress"
FORMAT_VERSION = 2  # part of every resume key: bump it when the bytes written for the same inputs change
# 2: image/small's resize passes in a fixed order (pixels.resize_pil), the same under every Pillow
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
META = ("patient_id", "follow_up", "patient_age", "patient_gender", "view_position",
        "original_width", "original_height", "pixel_spacing_x", "pixel_spacing_y")
MANIFEST_SHARD_KEYS = ("file", "records", "sha256", "bytes")


def to_gray(image):
    """A loaded PIL image -> uint8 [H, W] (conversion rules in the module docstring)."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return ((wide + 128) // 257).astype(np.uint8)
    return np.asarray(image.convert("L"))


def read_image(path):
    """-> (uint8 [H, W], the source's PIL mode, the source's bytes); ShardingError if unreadable.

    A header declaring more than constants.MAX_IMAGE_SIDE / MAX_IMAGE_PIXELS is refused before decoding.
    """
    try:
        data = Path(path).read_bytes()
        image_limits.check_bytes(data)  # PNG / JPEG as their decoders read them; other formats PIL's header
        with Image.open(io.BytesIO(data)) as image:
            image_limits.check_size(*image.size)  # the size PIL will decode, before .load()
            image.load()
            return to_gray(image), image.mode, data
    except image_limits.ImageTooLarge as error:
        raise ShardingError(f"{path}: image too large: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as error:
        raise ShardingError(f"{path}: corrupt or truncated image ({error})") from None


def plain_gray_png(data, path):
    """The IHDR/IDAT/IEND chunks of an 8-bit grayscale PNG, CRCs checked; None for other PNGs."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x00":
        return None  # IHDR bytes 24, 25: bit depth 8, color type 0 (grayscale)
    chunks, offset, kind = [PNG_SIGNATURE], len(PNG_SIGNATURE), b""
    while kind != b"IEND":
        length, kind = struct.unpack(">I4s", data[offset:offset + 8].ljust(8, b"\0"))
        chunk = data[offset:offset + 12 + length]  # length, type, data, CRC of type + data
        if len(chunk) != 12 + length or zlib.crc32(chunk[4:-4]) != int.from_bytes(chunk[-4:], "big"):
            raise ShardingError(f"{path}: corrupt or truncated PNG (bad {kind!r} chunk at byte {offset})")
        if kind in (b"IHDR", b"IDAT", b"IEND"):
            chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def encode_png(pixels):
    """uint8 [H, W] -> PNG bytes, fixed settings, no metadata."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def make_examples(row, encoding, small_size):
    """One CSV row + its image -> (full Example, the same without image/encoded, source mode)."""
    pixels, mode, data = read_image(row["path"])
    if encoding == "raw":
        encoded = pixels.tobytes()
    else:
        encoded = plain_gray_png(data, row["path"]) or encode_png(pixels)
    small = gray_pixels.resize_pil(pixels, small_size)  # [small_size, small_size]
    fields = dict(
        small=encode_png(small), filename=row["image_index"], height=pixels.shape[0],
        width=pixels.shape[1], labels=row["labels"], image_format=encoding,
        **{name: row[name] for name in META},
    )
    return schema.make_example(encoded=encoded, **fields), schema.make_example(encoded=b"", **fields), mode


_on_image = None  # advances this run's progress bar by one image; set in each process


def _set_progress(on_image):
    global _on_image
    _on_image = on_image


def _increment(counter):
    with counter.get_lock():
        counter.value += 1


def _temporaries(out_dir):
    """What tfcxr.storage's atomic writes left behind when a run was killed."""
    return [path for folder in (out_dir, storage.join(out_dir, SMALL_DIR), storage.join(out_dir, PROGRESS_DIR))
            for path in storage.temporaries(folder)]


def _sidecar(task):
    name = schema.shard_name(task["split"], task["index"], task["count"])
    return storage.join(task["out_dir"], PROGRESS_DIR, f"{name}.json")


def write_shard(task):
    """Writes one shard and its small companion, then its sidecar. -> the sidecar's content."""
    out_dir = task["out_dir"]
    name = schema.shard_name(task["split"], task["index"], task["count"])
    relative = {"shard": name, "small_shard": f"{SMALL_DIR}/{name}"}
    final = {kind: storage.join(out_dir, file) for kind, file in relative.items()}
    result = {"key": task["key"], "records": 0, "converted": [], "unreadable": []}
    with atomic_path(final["shard"]) as full_path, atomic_path(final["small_shard"]) as small_path:
        with tf.io.TFRecordWriter(str(full_path)) as full, tf.io.TFRecordWriter(str(small_path)) as small:
            for row in task["rows"]:
                _on_image()
                try:
                    example, small_example, mode = make_examples(row, task["encoding"], task["small_size"])
                except ShardingError as error:
                    if not task["allow_missing"]:
                        raise
                    result["unreadable"].append({"image": row["image_index"], "error": str(error)})
                    continue
                full.write(example.SerializeToString(deterministic=True))  # map keys sorted
                small.write(small_example.SerializeToString(deterministic=True))
                result["records"] += 1
                if mode != "L":
                    result["converted"].append({"image": row["image_index"], "mode": mode})
        for kind, written in (("shard", full_path), ("small_shard", small_path)):
            result[kind] = {"file": relative[kind], "records": result["records"],
                            "sha256": storage.sha256(written), "bytes": storage.size(written)}
    write_text(_sidecar(task), json.dumps(result, indent=1))
    return result


def _completed(task):
    """The sidecar of a shard already written from exactly these inputs, else None."""
    try:
        done = json.loads(storage.read_text(_sidecar(task)))
    except (OSError, ValueError):
        return None
    files = {kind: storage.join(task["out_dir"], done[kind]["file"]) for kind in ("shard", "small_shard")}
    complete = done.get("key") == task["key"] and all(
        storage.isfile(path) and storage.size(path) == done[kind]["bytes"] for kind, path in files.items())
    return done if complete and (task["allow_missing"] or not done["unreadable"]) else None


def _run(tasks, workers):
    """write_shard over `tasks`, in this process or a pool (each worker writes whole shards)."""
    with tqdm(total=sum(len(task["rows"]) for task in tasks), unit="img", desc="sharding") as bar:
        if workers == 1 or len(tasks) <= 1:
            _set_progress(bar.update)
            return [write_shard(task) for task in tasks]
        # forkserver: workers fork from a clean process that only imported this module, never
        # from a parent whose TensorFlow runtime may already hold threads and locks.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tfcxr.quiet", __name__])  # quiet first: its TensorFlow starts without noise
        counter = context.Value("q", 0)
        with context.Pool(min(workers, len(tasks)), _set_progress,
                          (functools.partial(_increment, counter),)) as pool:
            pending = pool.map_async(write_shard, tasks, chunksize=1)
            while not pending.ready():
                pending.wait(0.5)
                bar.update(counter.value - bar.n)
            return pending.get()


def shard_count(estimated_bytes, shard_mb):
    """Shards for records weighing about `estimated_bytes` (one per image): ~shard_mb MiB each."""
    if not estimated_bytes:
        return 0
    return min(len(estimated_bytes), max(1, math.ceil(sum(estimated_bytes) / (shard_mb * 2**20))))


def _estimated_bytes(path, encoding):
    """A record's weight before writing it: the PNG's size, or its pixel count for raw."""
    if encoding == "png":
        return path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(24)
    if head[:8] != PNG_SIGNATURE:
        return path.stat().st_size
    width, height = struct.unpack(">II", head[16:24])
    return width * height


def _rows(frame, images):
    """A split's DataFrame -> plain dicts for the workers: CSV fields, labels, path, source stat."""
    rows = []
    for record in frame.to_dict("records"):
        stat = images[record["image_index"]].stat()
        rows.append({
            "image_index": record["image_index"],
            "labels": [int(record[label]) for label in LABELS],
            **{name: record[name] for name in META},
            "path": str(images[record["image_index"]]),
            "source": [stat.st_size, stat.st_mtime_ns],
        })
    return rows


def _tasks(plan, images, out_dir, seed, shard_mb, encoding, small_size, allow_missing):
    """The shards to write, per split: shuffled present rows cut into shard_count runs."""
    tasks = []
    for split_index, split in enumerate(schema.SPLITS):
        order = np.random.default_rng([seed, split_index]).permutation(len(plan[split]))
        shuffled = plan[split].iloc[order]
        present = shuffled[shuffled.image_index.isin(list(images))]
        rows = _rows(present, images)
        count = shard_count([_estimated_bytes(Path(row["path"]), encoding) for row in rows], shard_mb)
        parts = np.array_split(np.arange(len(rows)), count) if count else []
        for index, part in enumerate(parts):
            task = {"split": split, "index": index, "count": count, "encoding": encoding,
                    "small_size": small_size, "rows": [rows[i] for i in part]}
            keyed = {**task, "version": FORMAT_VERSION,
                     "rows": [{k: v for k, v in row.items() if k != "path"} for row in task["rows"]]}
            task["key"] = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
            tasks.append({**task, "out_dir": str(out_dir), "allow_missing": allow_missing})
    return tasks


def _split_summary(frame, written_names, results):
    written = frame[frame.image_index.isin(written_names)]
    return {
        "planned": len(frame),
        "written": len(written),
        "patients": int(written.patient_id.nunique()),
        "label_counts": {label: int(written[label].sum()) for label in LABELS},
        "shards": [{k: r["shard"][k] for k in MANIFEST_SHARD_KEYS} for r in results],
        "small_shards": [{k: r["small_shard"][k] for k in MANIFEST_SHARD_KEYS} for r in results],
    }


def _remove_stale(out_dir, manifest):
    """Deletes shards and sidecars of earlier runs that this complete run does not list."""
    keep = {entry["file"] for split in manifest["splits"].values()
            for entry in split["shards"] + split["small_shards"]}
    for folder, prefix in ((out_dir, ""), (storage.join(out_dir, SMALL_DIR), f"{SMALL_DIR}/")):
        for path in storage.glob(storage.join(folder, "*.tfrecord")):
            if prefix + storage.name(path) not in keep:
                storage.remove(path)
    for path in storage.glob(storage.join(out_dir, PROGRESS_DIR, "*.json")):
        if storage.name(path).removesuffix(".json") not in {storage.name(name) for name in keep}:
            storage.remove(path)


def shard(data_dir, out_dir, seed=0, val_images=VAL_IMAGES, shard_mb=150, workers=None,
          allow_missing=False, small_size=SMALL_SIZE, encoding="png", label_file=None):
    """Shards the ChestX-ray14 tree under `data_dir` into `out_dir`. -> the manifest (a dict).

    Bad input raises ShardingError before anything is written; a corrupt image stops the run
    (or, with allow_missing, is skipped and listed as unreadable, as missing images are).
    """
    data_dir, out_dir = Path(data_dir), str(out_dir)  # out_dir: a local path or a URL
    workers = workers or os.cpu_count()
    if not data_dir.is_dir():
        raise ShardingError(f"{data_dir}: data_dir not found")
    if encoding not in ENCODINGS:
        raise ShardingError(f"encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if small_size < 1 or shard_mb <= 0 or workers < 1:
        raise ShardingError(f"small_size, shard_mb and workers must be positive "
                            f"(got {small_size}, {shard_mb}, {workers})")
    label_path = metadata.find_label_file(data_dir, label_file)
    table = metadata.read_metadata(label_path)
    train_val = metadata.read_list(metadata.find_file(data_dir, metadata.TRAIN_VAL_LIST))
    test = metadata.read_list(metadata.find_file(data_dir, metadata.TEST_LIST))
    plan = metadata.plan_splits(table, train_val, test, seed, val_images)
    images = metadata.find_images(data_dir)
    missing = {split: sorted(set(plan[split].image_index) - set(images)) for split in schema.SPLITS}
    absent = sorted(name for names in missing.values() for name in names)
    if absent and not allow_missing:
        planned = sum(len(rows) for rows in plan.values())
        raise ShardingError(f"{data_dir}: {len(absent)} of {planned} listed images are missing "
                            f"(first: {', '.join(absent[:3])}); pass --allow_missing to skip them")

    for folder in (out_dir, storage.join(out_dir, SMALL_DIR), storage.join(out_dir, PROGRESS_DIR)):
        storage.makedirs(folder)
    tasks = _tasks(plan, images, out_dir, seed, shard_mb, encoding, small_size, allow_missing)
    try:
        for path in _temporaries(out_dir):
            storage.remove(path)
        done = [_completed(task) for task in tasks]
        written = iter(_run([task for task, result in zip(tasks, done) if result is None], workers))
        results = [result or next(written) for result in done]
    finally:
        for path in _temporaries(out_dir):
            storage.remove(path)

    manifest = {
        "labels": list(LABELS),
        "label_file": label_path.name,
        "label_version": metadata.label_version(label_path),
        "seed": seed,
        "val_images": val_images,
        "small_size": small_size,
        "encoding": encoding,
        "shard_mb": shard_mb,
        "splits": {},
        "missing": missing,
        "unreadable": {},
        "converted": sorted((c for r in results for c in r["converted"]), key=lambda c: c["image"]),
    }
    for split in schema.SPLITS:
        mine = [r for task, r in zip(tasks, results) if task["split"] == split]
        unreadable = sorted((u for r in mine for u in r["unreadable"]), key=lambda u: u["image"])
        written_names = set(plan[split].image_index) - set(missing[split]) - {u["image"] for u in unreadable}
        manifest["splits"][split] = _split_summary(plan[split], written_names, mine)
        manifest["unreadable"][split] = unreadable
    write_text(storage.join(out_dir, schema.MANIFEST), json.dumps(manifest, indent=2) + "\n")
    _remove_stale(out_dir, manifest)  # after: a crash here leaves a true manifest and some litter
    return manifest


def verify(out_dir) -> tuple[int, list[str]]:
    """Reads every shard the manifest of `out_dir` lists -> (shards checked, one line per bad shard).

    A shard is bad when it is missing, or its bytes, sha256 or readable records differ from the
    manifest's (a record that does not read is named by its byte offset).
    """
    manifest = storage.read_manifest(out_dir)
    entries = [entry for split in manifest["splits"].values()
               for entry in split["shards"] + split.get("small_shards", [])]
    problems = []
    for entry in entries:
        path = storage.join(out_dir, entry["file"])
        if not storage.isfile(path):
            problems.append(f"{path}: missing")
            continue
        found = []
        if storage.size(path) != entry["bytes"]:
            found.append(f"{storage.size(path)} bytes, the manifest says {entry['bytes']}")
        if storage.sha256(path) != entry["sha256"]:
            found.append("sha256 differs from the manifest's")
        damage = pipeline.find_damage([path])
        if damage:
            found.append(f"{damage[2]}, after record {damage[1]}")
        else:
            records = int(tf.data.TFRecordDataset(path).reduce(0, lambda count, _: count + 1))
            if records != entry["records"]:
                found.append(f"{records} records, the manifest says {entry['records']}")
        if found:
            problems.append(f"{path}: " + "; ".join(found))
    return len(entries), problems
