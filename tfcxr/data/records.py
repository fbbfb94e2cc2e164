"""A records folder and its manifest.json, read once: what the trainer, evaluation and export ask of it.

    records = Records.open("gs://bucket/records/cxr14")
    records.label_names, records.split_size("train"), records.small_size, records.label_source
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from tfcxr import storage
from tfcxr.data import schema


@dataclasses.dataclass(frozen=True)
class Records:
    path: str  # the folder: a local path or a URL
    manifest: Mapping[str, Any]  # its manifest.json

    @classmethod
    def open(cls, path) -> "Records":
        """Reads path/manifest.json (one line naming it when missing or unreadable)."""
        return cls(str(path), storage.read_manifest(path))

    @classmethod
    def of(cls, records: "Records | str") -> "Records":
        """`records` itself, or the folder at that path opened (callers that hold only a path)."""
        return records if isinstance(records, Records) else cls.open(records)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label names in label-vector order."""
        return schema.label_names(self.manifest)

    def split_size(self, split: str) -> int:
        """Records written for `split`."""
        splits = self.manifest["splits"]
        if split not in splits:
            raise ValueError(f"{storage.join(self.path, schema.MANIFEST)}: no split {split!r} (has {sorted(splits)})")
        return splits[split]["written"]

    @property
    def small_size(self) -> int:
        """The side of image/small (stage 1's first resize, as the sharder made it)."""
        return int(self.manifest["small_size"])

    @property
    def label_source(self) -> dict[str, str]:
        """{"label_file", "label_version"}: what every evaluation output states."""
        return {key: self.manifest.get(key, "unknown") for key in ("label_file", "label_version")}
