"""Locations: a local path or a URI, and what is done with either."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from modnet_batch.storage.text import URI_PATTERN
from modnet_batch.storage.uri import UriPath

AnyPath = Path | UriPath


def is_uri(value: object) -> bool:
    """Whether `value` names object storage (a URI other than file://)."""
    if isinstance(value, UriPath):
        return True
    if not isinstance(value, str):
        return False
    match = URI_PATTERN.match(value)
    return match is not None and match.group(1).lower() != "file"


def location(value: str | Path | UriPath) -> AnyPath:
    """A local path (`~` expanded; a `file://` URI as its path) or a UriPath."""
    if isinstance(value, UriPath | Path):
        return value
    text = str(value)
    match = URI_PATTERN.match(text)
    if match is None:
        return Path(text).expanduser()
    if match.group(1).lower() == "file":  # file:///abs/path (or file://localhost/abs/path)
        return Path(unquote(urlsplit(text).path) or "/")
    return UriPath(text)


def is_inside(child: AnyPath, parent: AnyPath) -> bool:
    """Whether `child` is `parent` or below it (both local, or both in one store)."""
    if isinstance(child, UriPath) or isinstance(parent, UriPath):
        return isinstance(child, UriPath) and child.is_relative_to(parent)
    return child.is_relative_to(parent)


def relative(child: AnyPath, parent: AnyPath) -> str:
    """`child`'s path below `parent`, with `/` (ValueError when it is not below)."""
    if isinstance(child, UriPath):
        return child.relative_to(parent).as_posix()
    if isinstance(parent, UriPath):
        raise ValueError(f"{child} is not inside {parent}")
    return child.relative_to(parent).as_posix()


def resolved(value: str | Path | UriPath) -> AnyPath:
    """`location(value)`, a local path made absolute."""
    loc = location(value)
    return loc.resolve() if isinstance(loc, Path) else loc


def argument(value: str | Path | UriPath) -> str:
    """The text that names `value` to another process (a worker, a cluster job): a local path
    absolute, a URI as given (credentials included: never show or store it)."""
    loc = resolved(value)
    return loc.uri if isinstance(loc, UriPath) else str(loc)


def parquet_source(path: AnyPath) -> str | pa.NativeFile:
    """What pq.ParquetFile / pq.read_table take for `path`."""
    return path.open_input_file() if isinstance(path, UriPath) else str(path)
