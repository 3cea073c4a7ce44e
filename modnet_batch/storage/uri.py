"""Object storage addressed by URI: `UriPath`, the small part of the `Path` interface the project
uses, over a pyarrow file system; its failures as one line naming the URI and the fix."""

from __future__ import annotations

import errno
import fnmatch
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage.text import URI_PATTERN, redact


@dataclass(frozen=True)
class _Parts:
    scheme: str
    userinfo: str  # "" or "user:secret@"
    netloc: str  # bucket or host[:port]
    path: str  # inside netloc, no leading or trailing "/"
    query: str  # "" or "a=b&c=d" (without "?")


def _split(uri: str) -> _Parts:
    match = URI_PATTERN.match(uri)
    if match is None:
        raise ValueError(f"{redact(uri)} is not a URI")
    scheme, rest = match.group(1).lower(), match.group(2)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo = ""
    if "@" in netloc:
        user, _, netloc = netloc.rpartition("@")
        userinfo = user + "@"
    return _Parts(scheme, userinfo, netloc, path.strip("/"), query)


# file systems by (scheme, user-info, netloc, query): one client per process, built on first use
_FILESYSTEMS: dict[tuple[str, str, str, str], tuple[pafs.FileSystem, str]] = {}
_FS_LOCK = threading.Lock()


class UriError(OSError, ModnetBatchError):
    """A storage call on a URI failed; its message is one line naming the URI (redacted) and
    the fix. A network failure: a retry may pass."""

    permanent = False

    def __str__(self) -> str:
        return str(self.strerror)


class UriStorageError(UriError):
    """Object storage refused the request for a reason no retry passes (no such bucket, refused
    credentials)."""

    permanent = True


def _no_bucket(text: str) -> bool:
    return any(
        k in text for k in ("no_such_bucket", "nosuchbucket", "specified bucket does not exist")
    ) or bool(re.search(r"bucket '[^']*' not found", text))


def _fix(message: str) -> tuple[str, int, bool]:
    """(what to do, errno, permanent) for a pyarrow error message."""
    text = message.lower()
    if _no_bucket(text):
        return "the bucket does not exist: create it, or fix the URI", errno.ENOENT, True
    if any(
        k in text
        for k in (
            "access_denied",
            "accessdenied",
            "access denied",
            "invalidaccesskeyid",
            "invalid_access_key_id",
            "signaturedoesnotmatch",
            "signature_does_not_match",
            "forbidden",
            "403",
            "credentials",
        )
    ):
        return (
            "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
            "~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS) and the bucket's permissions",
            errno.EACCES,
            True,
        )
    if any(k in text for k in ("network_connection", "curlcode", "connect", "resolve host")):
        return (
            "the storage endpoint cannot be reached: check the network and the endpoint "
            "(AWS_ENDPOINT_URL or the URI's endpoint_override)",
            errno.EIO,
            False,
        )
    return "check the URI, the credentials and the network", errno.EIO, False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0]) if text else type(exc).__name__


def _failure(what: str, target: str, exc: BaseException) -> OSError:
    """One line for a failed storage call: what, on which URI (redacted), why, and the fix."""
    if isinstance(exc, FileNotFoundError) and not _no_bucket(str(exc).lower()):
        return FileNotFoundError(errno.ENOENT, "No such file or directory", target)
    fix, code, permanent = _fix(str(exc))
    message = f"cannot {what} {target} ({_first_line(exc)}): {fix}"
    error: OSError = UriStorageError(code, message) if permanent else UriError(code, message)
    error.filename = None  # the message names it already
    return error


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime: float


class UriPath:
    """A file or folder in object storage, addressed by URI; a small, picklable, `Path`-like
    value. It pickles as its URI: a Ray worker resolves it (and finds credentials) itself."""

    __slots__ = ("_p",)
    _p: _Parts

    def __init__(self, uri: str | UriPath) -> None:
        self._p = uri._p if isinstance(uri, UriPath) else _split(uri)

    @classmethod
    def _of(cls, parts: _Parts) -> UriPath:
        out = cls.__new__(cls)
        out._p = parts
        return out

    # --- names ---------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """The URI as given, credentials included: for code that opens it, never for display."""
        p = self._p
        tail = f"/{p.path}" if p.path else ""
        return f"{p.scheme}://{p.userinfo}{p.netloc}{tail}" + (f"?{p.query}" if p.query else "")

    def __str__(self) -> str:
        return redact(self.uri)

    def __repr__(self) -> str:
        return f"UriPath({str(self)!r})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (UriPath, (self.uri,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UriPath) and other._p == self._p

    def __hash__(self) -> int:
        return hash(self._p)

    def __lt__(self, other: UriPath) -> bool:
        return self.uri < other.uri

    def __truediv__(self, name: str | PurePath) -> UriPath:
        rel = str(name).strip("/")
        parts = [s for s in (self._p.path, rel) if s]
        return UriPath._of(_Parts(**{**self._p.__dict__, "path": "/".join(parts)}))

    def joinpath(self, *names: str) -> UriPath:
        out = self
        for n in names:
            out = out / n
        return out

    @property
    def name(self) -> str:
        return PurePosixPath(self._p.path).name if self._p.path else self._p.netloc

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> UriPath:
        parent = str(PurePosixPath(self._p.path).parent) if self._p.path else ""
        return UriPath._of(_Parts(**{**self._p.__dict__, "path": "" if parent == "." else parent}))

    @property
    def parts(self) -> tuple[str, ...]:
        return (f"{self._p.scheme}://{self._p.netloc}", *PurePosixPath(self._p.path).parts)

    def with_name(self, name: str) -> UriPath:
        return self.parent / name

    def relative_to(self, other: object) -> PurePosixPath:
        base = other if isinstance(other, UriPath) else UriPath(str(other))
        if not self.is_relative_to(base):
            raise ValueError(f"{self} is not inside {base}")
        return PurePosixPath(self._p.path[len(base._p.path) :].lstrip("/") or ".")

    def is_relative_to(self, other: object) -> bool:
        base = other if isinstance(other, UriPath) else UriPath(str(other))
        same = (base._p.scheme, base._p.netloc) == (self._p.scheme, self._p.netloc)
        inside = (
            not base._p.path
            or self._p.path == base._p.path
            or self._p.path.startswith(base._p.path + "/")
        )
        return same and inside

    def as_posix(self) -> str:
        return str(self)

    def expanduser(self) -> UriPath:
        return self

    def resolve(self) -> UriPath:
        return self

    def absolute(self) -> UriPath:
        return self

    def is_absolute(self) -> bool:
        return True

    def check_store(self) -> None:
        """Raise UriStorageError (naming the URI and the fix) when the bucket (or file system
        root) this URI lives in is not there or refuses these credentials: a job or an ingest
        fails at once instead of after its work."""
        root = UriPath._of(_Parts(**{**self._p.__dict__, "path": ""}))
        if root._info().type == pafs.FileType.NotFound:
            raise UriStorageError(
                errno.ENOENT,
                f"cannot use {self}: the bucket {root} does not exist: create it, or fix the URI",
            )

    # --- the file system -----------------------------------------------------------------------
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        """(the file system, this object's path in it)."""
        p = self._p
        key = (p.scheme, p.userinfo, p.netloc, p.query)
        with _FS_LOCK:
            found = _FILESYSTEMS.get(key)
            if found is None:
                root = UriPath._of(_Parts(**{**p.__dict__, "path": ""}))
                try:
                    fs, base = pafs.FileSystem.from_uri(root.uri)
                except (OSError, pa.ArrowException, ValueError) as exc:
                    raise _failure("open", str(root), exc) from None
                found = _FILESYSTEMS[key] = (fs, base.rstrip("/"))
        fs, base = found
        if not p.path:
            return fs, base or "/"
        return fs, f"{base}/{p.path}"

    @contextmanager
    def _calling(self, what: str) -> Iterator[tuple[pafs.FileSystem, str]]:
        """(the file system, this object's path in it) for a call whose pyarrow failure becomes
        one line: `cannot <what> <uri>` (_failure)."""
        fs, path = self._fs()
        try:
            yield fs, path
        except (OSError, pa.ArrowException) as exc:
            raise _failure(what, str(self), exc) from None

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs()[0]

    @property
    def fs_path(self) -> str:
        return self._fs()[1]

    def _info(self) -> pafs.FileInfo:
        with self._calling("look up") as (fs, path):
            return fs.get_file_info(path)

    def exists(self) -> bool:
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_file(self) -> bool:
        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        return bool(self._info().type == pafs.FileType.Directory)

    def stat(self) -> _Stat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return _Stat(st_size=int(info.size or 0), st_mtime=mtime)

    def _list(self, recursive: bool) -> list[pafs.FileInfo]:
        with self._calling("list") as (fs, path):
            return list(
                fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
            )

    def _child(self, info: pafs.FileInfo) -> UriPath:
        base = self.fs_path.rstrip("/")
        path = str(info.path)
        rel = path[len(base) :].lstrip("/") if path.startswith(base) else str(info.base_name)
        return self / rel

    def iterdir(self) -> Iterator[UriPath]:
        for info in sorted(self._list(False), key=lambda i: i.path):
            yield self._child(info)

    def glob(self, pattern: str) -> Iterator[UriPath]:
        """The entries of this folder whose names match `pattern` (one level, as Path.glob of a
        pattern without a slash)."""
        for info in sorted(self._list(False), key=lambda i: i.path):
            if fnmatch.fnmatchcase(info.base_name, pattern):
                yield self._child(info)

    def rglob(self, pattern: str) -> Iterator[UriPath]:
        for info in sorted(self._list(True), key=lambda i: i.path):
            if fnmatch.fnmatchcase(info.base_name, pattern):
                yield self._child(info)

    def walk_files(self) -> list[tuple[UriPath, _Stat]]:
        """Every file below this folder with its size and mtime, from one recursive listing."""
        out = []
        for info in sorted(self._list(True), key=lambda i: i.path):
            if info.type == pafs.FileType.File:
                mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
                out.append((self._child(info), _Stat(int(info.size or 0), mtime)))
        return out

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders (a key's prefix is one): nothing to create there;
        HDFS and the like get one."""
        if self._p.scheme in ("s3", "gs", "gcs"):
            return
        with self._calling("create") as (fs, path):
            fs.create_dir(path, recursive=parents)

    # --- bytes ---------------------------------------------------------------------------------
    def open_input_file(self) -> pa.NativeFile:
        """A seekable reader (what pq.ParquetFile takes)."""
        with self._calling("read") as (fs, path):
            return fs.open_input_file(path)

    def open(self, mode: str = "rb") -> pa.NativeFile:
        if mode not in ("r", "rb"):
            raise ValueError(f"{self}: only reading is opened; write with write_bytes")
        return self.open_input_file()

    def read_bytes(self) -> bytes:
        with self._calling("read") as (fs, path), fs.open_input_stream(path) as fh:
            return bytes(fh.read())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes | memoryview) -> None:
        """The whole object in one upload: it becomes visible complete when the stream closes,
        or not at all (a process killed while uploading leaves nothing)."""
        with self._calling("write") as (fs, path):
            stream = fs.open_output_stream(path)
            stream.write(data)
            stream.close()

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: Path, block: int = 8 << 20) -> None:
        """A local file as this object (streamed; complete or absent, as write_bytes)."""
        with self._calling("write") as (fs, path):
            stream = fs.open_output_stream(path)
            with local.open("rb") as src:
                while chunk := src.read(block):
                    stream.write(chunk)
            stream.close()

    def unlink(self, missing_ok: bool = False) -> None:
        fs, path = self._fs()
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise FileNotFoundError(errno.ENOENT, "No such file", str(self)) from None
        except (OSError, pa.ArrowException) as exc:
            raise _failure("delete", str(self), exc) from None

    def delete_tree(self) -> None:
        """This folder and everything below it."""
        fs, path = self._fs()
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            raise _failure("delete", str(self), exc) from None
