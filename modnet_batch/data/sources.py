"""What a source folder holds: its image files, their ids, and each image's matte.

Two rules, by command:
- `ingest` (`pair_source`): a PPM-100 layout (SRC/image/ with optional SRC/matte/ of the same
  base names) or a flat folder of images, one level deep; each image's id is its file name
  without extension (data/ids.py `stem_id`), its matte the file of matte/ with the same id.
- `matte` (`list_images`): a folder searched recursively (never the outputs of an earlier
  `matte` inside it), or a list file of paths; ids are derived from the paths (`path_id`).
A file is an image by its extension (any case): IMAGE_EXTENSIONS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from modnet_batch.data.decode import IMAGE_EXTENSIONS
from modnet_batch.data.ids import UNSAFE_REASON, stem_id
from modnet_batch.errors import ModnetBatchError


def is_image_name(name: str) -> bool:
    """Whether a file named `name` is taken as an image (by its extension, any case)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def shown_name(name: str) -> str:
    """A file name as it can be printed and stored in JSON: bytes that are not UTF-8 (kept by
    Python as surrogates) are written as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class SourceFile:
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Item:
    """One image to ingest: its id and its files' paths relative to the source root."""

    image_id: str
    image: str
    matte: str | None


@dataclass(frozen=True)
class Skip:
    """A file left out, and why."""

    name: str
    reason: str


def list_folder(folder: Path) -> list[SourceFile]:
    """The regular files directly in `folder` (sizes and times for the source's identity)."""
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                st = entry.stat()
                files.append(SourceFile(entry.name, st.st_size, st.st_mtime_ns))
    return sorted(files, key=lambda f: f.name)


@dataclass
class _Scan:
    """The image files of one folder, by id; what else it held."""

    files: dict[str, str]  # id -> path relative to the source root
    ignored: list[str]  # files without an image extension
    skips: list[Skip]  # files skipped for their name
    ambiguous: set[str]  # ids (lower case) that several files share
    listed: list[SourceFile]  # every file, named relative to the source root


def _scan(folder: Path, prefix: str) -> _Scan:
    """An unsafe id, or one that several files share (ignoring case, since outputs named by id
    would collide on case-insensitive file systems), skips those files, named with the reason."""
    by_key: dict[str, list[str]] = {}
    ignored: list[str] = []
    skips: list[Skip] = []
    listed = list_folder(folder)
    for entry in listed:
        rel = prefix + entry.name
        if not is_image_name(entry.name):
            ignored.append(shown_name(rel))
        elif stem_id(entry.name) is None:
            skips.append(Skip(shown_name(rel), UNSAFE_REASON))
        else:
            by_key.setdefault(Path(entry.name).stem.lower(), []).append(rel)
    ambiguous = {key for key, rels in by_key.items() if len(rels) > 1}
    for key in sorted(ambiguous):
        group = " = ".join(by_key[key])
        reason = f"duplicate image id ({group}): ids must be unique ignoring case; rename one"
        skips.extend(Skip(rel, reason) for rel in by_key[key])
    files = {Path(rels[0]).stem: rels[0] for k, rels in by_key.items() if k not in ambiguous}
    named = [dataclasses.replace(f, name=prefix + f.name) for f in listed]
    return _Scan(files, ignored, skips, ambiguous, named)


@dataclass(frozen=True)
class SourcePairs:
    """A source folder's images paired with their mattes (`pair_source`)."""

    layout: str  # "ppm" (image/ and matte/) or "flat"
    items: list[Item]  # in id order
    skipped: list[Skip]  # for their name, or orphan mattes
    ignored: list[str]
    listing: str  # SHA-256 of every listed file's name, size and modification time


def _ppm(src: Path) -> tuple[_Scan, dict[str, str]]:
    """The images of SRC/image/ and the mattes of SRC/matte/ (an image whose matte is
    ambiguous is skipped: no guessing its truth)."""
    images = _scan(src / "image", "image/")
    if not (src / "matte").is_dir():
        return images, {}
    mattes = _scan(src / "matte", "matte/")
    images.ignored += mattes.ignored
    images.skips += mattes.skips
    images.listed += mattes.listed
    for i in [i for i in images.files if i.lower() in mattes.ambiguous]:
        images.skips.append(Skip(images.files.pop(i), "its matte is ambiguous (see matte/)"))
    return images, mattes.files


def _none_found(where: str, skips: list[Skip]) -> ModnetBatchError:
    if skips:
        more = f" (and {len(skips) - 1} more)" if len(skips) > 1 else ""
        return ModnetBatchError(
            f"no image in {where} can be ingested: {skips[0].name}: {skips[0].reason}{more}"
        )
    return ModnetBatchError(
        f"no images in {where}; expected files with extensions "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case), in SRC/image/ with optional "
        "SRC/matte/ of the same base names, or directly in SRC"
    )


def pair_source(src: Path) -> SourcePairs:
    """What source folder `src` holds, from its listing alone: its images (PPM layout or flat)
    with their mattes. Raises ModnetBatchError when it holds no image that can be ingested."""
    if (src / "image").is_dir():
        scan, mattes = _ppm(src)
        layout, where = "ppm", f"{src / 'image'}"
    else:
        scan, mattes = _scan(src, ""), {}
        layout, where = "flat", f"{src} (and it has no image/ subfolder)"
    images = scan.files
    if not images:
        raise _none_found(where, scan.skips)
    items = [Item(i, images[i], mattes.get(i)) for i in sorted(images)]
    orphans = [
        Skip(mattes[i], f"no image with id '{i}' in image/")
        for i in sorted(mattes)
        if i not in images
    ]
    digest = hashlib.sha256()
    for f in scan.listed:
        digest.update(f"{os.fsencode(f.name)!r}\0{f.size}\0{f.mtime_ns}\n".encode())
    return SourcePairs(layout, items, scan.skips + orphans, scan.ignored, digest.hexdigest())


def list_images(src: Path) -> tuple[Path, list[str], list[str], list[tuple[str, str]]]:
    """(root, image paths relative to it, ignored files, skipped entries) of a folder (searched
    recursively) or a list file (one path per line, relative to the list's folder or absolute
    under it; # comments)."""
    if src.is_dir():
        # never the mattes of an earlier `matte` whose OUT lies inside SRC
        outs = [m.parent for m in src.rglob(".modnet-batch") if m.is_dir()]
        files = sorted(
            p for p in src.rglob("*") if p.is_file() and not any(p.is_relative_to(o) for o in outs)
        )
        rels = [p.relative_to(src).as_posix() for p in files]
        found = [r for r in rels if is_image_name(r)]
        taken = set(found)
        return src, found, [r for r in rels if r not in taken], []
    if not src.is_file():
        raise ModnetBatchError(f"{src} does not exist; give an image folder or a list file")
    return _list_file(src)


def _list_file(src: Path) -> tuple[Path, list[str], list[str], list[tuple[str, str]]]:
    root = src.parent.resolve()
    images: list[str] = []
    skipped: list[tuple[str, str]] = []
    for line in src.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(os.path.normpath(root / entry))  # lexical: a link keeps its own name
        if not path.is_relative_to(root):
            skipped.append(
                (entry, f"outside {root}, the list file's folder; outputs mirror paths under it")
            )
        elif not path.is_file():
            skipped.append((entry, "no such file"))
        elif path.relative_to(root).as_posix() not in images:  # a path listed twice: once
            images.append(path.relative_to(root).as_posix())
    return root, images, [], skipped
