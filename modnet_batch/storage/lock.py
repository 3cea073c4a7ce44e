"""One writer per folder: a lock file naming the process that writes it (`host:pid:start time`).

A second process that finds the lock of a live holder is refused, in one line naming the holder
(host and pid) and the fix. A holder that is gone is taken over: on this host, a pid that no
longer runs, or runs a process started at another time (the pid was reused). A holder on another
host cannot be asked: it is refused, and the message says which file to delete once that job is
known to have stopped. The lock is released when its holder ends it (`release`, or leaving a
`with` block, on error and Ctrl-C too) and, at the latest, when the process exits normally.

Locally, the look at the lock and its creation (O_EXCL) happen under a flock of its folder
(which the kernel drops with its holder), so of two processes starting at once, or taking over
the same dead holder's lock, exactly one holds it (where the file system has no flock, O_EXCL
alone decides between two new ones). Object storage has no exclusive create: the lock there is
a best-effort marker, written and read back (a process whose marker was overwritten by a racing
one is refused), so two jobs started within the same second into one URI may still both run;
their writes are idempotent (every file complete or absent), so the result stays right.

Only the process that plans a job takes its lock (the Ray driver, never a worker).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import psutil

from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage.paths import AnyPath
from modnet_batch.storage.uri import UriPath

LOCK_FILE = "lock"


@dataclass(frozen=True)
class Holder:
    """The process holding a lock: its host, pid and start time (epoch seconds, 2 decimals)."""

    host: str
    pid: int
    started: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), _started(os.getpid()) or "")

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock file names (None: not a lock this tool wrote)."""
        host, _, rest = text.strip().partition(":")
        pid, _, started = rest.partition(":")
        if not host or not pid.isdigit() or not started:
            return None
        return cls(host, int(pid), started)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    def is_gone(self) -> bool:
        """Whether this holder surely runs no more: a process of this host that has ended (or
        whose pid now belongs to a process started at another time)."""
        return self.host == socket.gethostname() and _started(self.pid) != self.started


def _started(pid: int) -> str | None:
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None


class FolderLock:
    """The lock file `path`, held by this process while `job` writes `target` (both named in a
    refusal: `job` as "another ingest", "another job", ...)."""

    def __init__(self, path: AnyPath, *, job: str, target: object) -> None:
        self.path, self.job, self.target = path, job, target
        self._me: Holder | None = None  # set while held

    @property
    def held(self) -> bool:
        return self._me is not None

    def acquire(self) -> None:
        """Take the lock, or raise ModnetBatchError naming its live holder; a no-op when held."""
        if self._me is not None:
            return
        with _guarded(self.path):
            found = _read(self.path)
            if found == "":  # created this instant, its holder not yet written
                raise ModnetBatchError(self._starting())
            if found is not None:
                holder = Holder.parse(found)
                if holder is not None and not holder.is_gone():
                    raise ModnetBatchError(self._refusal(holder))
                self.path.unlink(missing_ok=True)  # its process is gone: a killed job, to go on
            me = Holder.this_process()
            if not _create(self.path, str(me)):
                raise ModnetBatchError(self._starting())
        self._me = me
        _HELD.add(self)

    def release(self) -> None:
        """Remove the lock file if it is still this process's own (idempotent)."""
        me, self._me = self._me, None
        _HELD.discard(self)
        if me is None or me.pid != os.getpid():  # a forked copy never releases its parent's
            return
        try:
            if _read(self.path) == str(me):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the storage failed: the lock stays, and is taken over once this process ends

    def _refusal(self, holder: Holder) -> str:
        fix = "wait for it to finish or stop it, then run this command again"
        if holder.host != socket.gethostname():
            fix += f" (if it no longer runs there, delete {self.path})"
        return (
            f"another {self.job} (pid {holder.pid}) is writing {self.target} now on host "
            f"{holder.host}; {fix}"
        )

    def _starting(self) -> str:
        return (
            f"another {self.job} is starting on {self.target} now; run this command again once "
            f"it ends (if none runs, delete {self.path})"
        )

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@contextmanager
def _guarded(path: AnyPath) -> Iterator[None]:
    """Look at and take the local lock `path` alone among this machine's processes: a flock of
    its folder, dropped when the descriptor closes (or its process dies). Object storage, and
    file systems without flock: unguarded."""
    if isinstance(path, UriPath):
        yield
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # no folder: the create says why
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: AnyPath) -> str | None:
    """The lock file's text, None when there is none."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _create(path: AnyPath, text: str) -> bool:
    """Create the lock file holding `text`; False when another process has one."""
    if isinstance(path, UriPath):  # no exclusive create: write, then see whose it is
        path.write_text(text)
        return _read(path) == text
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return True


# the locks this process holds: released at exit (a job that ended without releasing its own)
_HELD: set[FolderLock] = set()


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD):
        lock.release()
