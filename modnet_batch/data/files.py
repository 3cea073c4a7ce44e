"""A dataset that points at image files where they are: what `modnet-batch matte` runs on.

Staging lists a folder (recursively) or a list file, reads each image's header only (its size
after EXIF orientation, with Pillow: no decode) and writes small Parquet shards of
(image_id, image_path, output_name, width, height); the bytes stay in the user's files and
each worker reads them when their turn comes. Ids are safe file names derived from the relative
path (the path itself, with its original characters, names the outputs).
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from modnet_batch import __version__
from modnet_batch.data.dataset import (
    FILES_ROOT_KEY,
    META_FILE,
    SCHEMA_VERSION,
    SHARD_DIR,
    shard_name,
)
from modnet_batch.data.ids import path_id
from modnet_batch.data.sources import list_images, shown_name
from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError

FILES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),  # relative to FILES_ROOT_KEY
        pa.field("output_name", pa.string(), nullable=False),  # relative, without extension
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)
# Small shards of one photo per row group: a work unit is a run of row groups (execution/units),
# so a job cuts units as small as one photo when it has few photos for its workers (8 photos on
# 2 workers: both get photos), and at most a shard of 4 otherwise: on ppm100-dev (8 MP photos,
# ~1.5 s of a core each) 16 per unit left one of 2 workers idle for the last 9 photos.
FILES_PER_SHARD = 4


@dataclass(frozen=True)
class StageReport:
    images: int
    shards: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # files without an image extension


def header_size(source: Path | BinaryIO) -> tuple[int, int]:
    """(width, height) as decoded, EXIF orientation applied, from the header alone (a file, or
    the bytes of one: data/parquet.py)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # decoding is guarded by OpenCV's own pixel limit
    with Image.open(source) as img:
        width, height = img.size
        if img.format == "PNG":  # getexif() would decode a PNG to find a late eXIf chunk
            exif = Image.Exif()
            raw = img.info.get("exif")
            if isinstance(raw, bytes):
                exif.load(raw)
            orientation = exif.get(0x0112, 1)
        else:
            orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def stage(src: Path, dst: Path, *, per_shard: int = FILES_PER_SHARD) -> StageReport:
    """Write the file-list dataset for `src` at `dst` (which must not exist): atomic."""
    root, rels, ignored, skipped = list_images(src)
    rows: list[dict[str, object]] = []
    seen_ids: set[str] = set()
    by_output: dict[str, list[str]] = {}
    for rel in rels:
        by_output.setdefault(rel.rsplit(".", 1)[0].lower(), []).append(rel)
    clash = {r for group in by_output.values() if len(group) > 1 for r in group}
    for rel in rels:
        if any("\udc80" <= c <= "\udcff" for c in rel):  # bytes that are not UTF-8
            skipped.append(
                (shown_name(rel), "the name is not UTF-8 (Parquet keeps text); rename it")
            )
            continue
        if rel in clash:
            others = " = ".join(by_output[rel.rsplit(".", 1)[0].lower()])
            skipped.append((shown_name(rel), f"outputs would collide ({others}); rename one"))
            continue
        try:
            width, height = header_size(root / rel)
        except Exception as exc:  # Pillow raises many types for a bad header
            skipped.append((shown_name(rel), f"not a readable image ({type(exc).__name__}: {exc})"))
            continue
        image_id = path_id(rel)
        n = 0
        while image_id.lower() in seen_ids:  # two paths sanitised alike
            n += 1
            image_id = path_id(f"{rel}#{n}")
        seen_ids.add(image_id.lower())
        rows.append(
            {
                "image_id": image_id,
                "image_path": rel,
                "output_name": rel.rsplit(".", 1)[0],
                "width": width,
                "height": height,
            }
        )
    if not rows:
        raise ModnetBatchError(
            f"no readable images in {src}"
            + (
                f": {len(skipped)} skipped, e.g. {skipped[0][0]}: {skipped[0][1]}"
                if skipped
                else ""
            )
        )
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp"
    (tmp / SHARD_DIR).mkdir(parents=True)
    try:
        schema = FILES_SCHEMA.with_metadata(
            {
                FILES_ROOT_KEY: str(root.resolve()),
                "modnet_batch.schema_version": str(SCHEMA_VERSION),
            }
        )
        shards: list[dict[str, object]] = []
        for k in range(0, len(rows), per_shard):
            name = shard_name(len(shards))
            path = tmp / SHARD_DIR / f"{name}.parquet"
            part = rows[k : k + per_shard]
            pq.write_table(pa.Table.from_pylist(part, schema=schema), path, row_group_size=1)
            shards.append(
                {
                    "name": name,
                    "path": f"{SHARD_DIR}/{name}.parquet",
                    "rows": len(part),
                    "sha256": sha256_file(path),
                }
            )
        meta = {
            "schema_version": SCHEMA_VERSION,
            "kind": "files",
            "source": shown_name(str(root)),
            "listed": shown_name(str(src.resolve())),  # the folder or list file staged
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "modnet_batch": __version__,
            "counts": {"images": len(rows), "with_matte": 0, "skipped": len(skipped)},
            "shards": shards,
            "skipped": [{"name": n, "reason": r} for n, r in skipped],
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StageReport(len(rows), len(shards), skipped, [shown_name(i) for i in ignored])
