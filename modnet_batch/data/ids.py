"""Image ids: what one is, and how a file name (or any text) becomes one.

An image id names that image's files in a run (alpha/<image_id>.npz, outputs/<image_id>.png)
on every OS: only portable characters, no leading dot (no "..", no hidden files), at most
MAX_NAME characters (the temporary file of an output, ".<id>.npz.<random>.tmp", stays within the
usual 255-byte file name limit). Shard names follow the same rule. Ids are unique in a dataset
ignoring case (outputs named by id would collide on case-insensitive file systems).

How a name becomes an id, by where the images come from:
- `ingest`: the file name without its extension, as it is (`stem_id`); an unsafe one is skipped
  with UNSAFE_REASON (the user renames it);
- `matte` (data/files.py): the path relative to the folder, `/` as `__`, escaped (`path_id`);
- Parquet read in place (data/parquet.py): an id column's values or the images' path stems,
  escaped (`safe_id`), else `<file stem>-<row>` (`row_id`).
Escaping replaces unsafe characters by `_` and appends 10 hex digits of the original's SHA-1,
so an escaped id never takes the id of a name that was safe already (barring a collision).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
PARQUET_SUFFIX = ".parquet"

UNSAFE_REASON = (
    "unsafe image id: an id (the file name without extension) must match [A-Za-z0-9._-]+, "
    f"not start with '.' and have at most {MAX_NAME} characters, because outputs are named "
    "<image_id>.npz; rename the file"
)


def is_safe_name(name: object) -> bool:
    """Whether `name` is safe as a file name inside a run or dataset directory."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME
        and bool(SAFE_NAME.fullmatch(name))
        and not name.startswith(".")
    )


def _escaped(text: str, original: str) -> str:
    """`text` with unsafe characters replaced, and a hash of `original` appended."""
    plain = _UNSAFE.sub("_", text).lstrip(".") or "image"
    digest = hashlib.sha1(original.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{plain[: MAX_NAME - 11]}-{digest}"


def safe_id(text: str) -> str:
    """`text` when it is a safe file name, else a deterministic safe form of it (escaped)."""
    return text if is_safe_name(text) else _escaped(text, text)


def stem_id(name: str) -> str | None:
    """An ingested file's id: its name without extension, None when that is not safe (the
    file is skipped with UNSAFE_REASON)."""
    stem = PurePosixPath(name).stem
    return stem if is_safe_name(stem) else None


def path_id(rel: str) -> str:
    """The id of the file at relative path `rel` (`matte`): the path without extension when it
    is safe, else the path with `/` as `__`, escaped (the hash is of `rel`)."""
    stem = rel.rsplit(".", 1)[0] if "." in PurePosixPath(rel).name else rel
    return stem if is_safe_name(stem) else _escaped(stem.replace("/", "__"), rel)


def file_id(rel: str) -> str:
    """The id part naming a Parquet file of a dataset: its relative path without `.parquet`,
    `/` as `__`, made safe."""
    stem = rel[: -len(PARQUET_SUFFIX)] if rel.endswith(PARQUET_SUFFIX) else rel
    return safe_id(stem.replace("/", "__"))


def row_id(rel: str, row: int, rows: int) -> str:
    """`<file stem>-<row>`, the row zero-padded to the file's row count (ids sort in row order)."""
    digits = f"{row:0{len(str(max(rows - 1, 0)))}d}"
    return f"{file_id(rel)[: MAX_NAME - len(digits) - 1]}-{digits}"


def path_stem(path: object) -> str | None:
    """The file stem of an image's recorded path (either slash), None when there is none."""
    if not isinstance(path, str) or not path.strip():
        return None
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return PurePosixPath(name).stem or None
