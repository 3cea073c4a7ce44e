"""Joining Ray, for a job and for ingest alike: an embedded Ray private to this process, or the
cluster at an address.

Ray's own lines never reach the terminal: its driver-side Python logger writes to a log file (the
run directory's `logs/ray.log` for a job, else Ray's session log folder), and an embedded Ray
does not forward its workers' output (it stays in that folder). `RaySession.where()` names both,
for the message of a run that failed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import TextIOWrapper
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import ray

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution import signals

RAY_LOG = "logs/ray.log"  # in a local run directory
DRIVER_LOG = "modnet-batch-driver.log"  # in Ray's session log folder, when no file is given
_RAY_LOGGER = "ray"
_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"  # Ray's own


@dataclass
class RaySession:
    """Where this session's Ray lines went."""

    log_file: Path | None  # Ray's driver-side Python log (written when it has something to say)
    session_logs: str | None = None  # the folder of Ray's processes' logs, on this machine

    def where(self) -> str:
        """Both places, in words, for a message that points a user at them."""
        places = [str(self.log_file)] if self.log_file and self.log_file.is_file() else []
        if self.session_logs:
            places.append(f"{self.session_logs} (its processes)")
        return "Ray's logs: " + (", ".join(places) or "none were written")


class _FileHandler(logging.FileHandler):
    """A file handler that creates its folder and file on the first line only."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True, encoding="utf-8")
        self.setFormatter(logging.Formatter(_FORMAT))

    def _open(self) -> TextIOWrapper:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextmanager
def ray_session(
    address: str | None,
    *,
    log_file: Path | None = None,
    runtime_env: dict[str, Any] | None = None,
    **local: Any,
) -> Iterator[RaySession]:
    """Ray for the block, shut down after it: the cluster at `address` (`runtime_env` for the
    workers there), else an embedded local Ray (`local`: num_cpus, num_gpus, resources,
    include_dashboard). Ray's log lines go to `log_file`, by default to DRIVER_LOG in Ray's
    session log folder (held in memory until Ray has started and that folder is known)."""
    logger = logging.getLogger(_RAY_LOGGER)
    to_file = _FileHandler(log_file) if log_file is not None else None
    held = MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1, target=to_file)
    saved = logger.handlers[:]
    logger.handlers[:] = [held]  # before ray.init: its start-up lines go there too
    try:
        if address:
            _join(address, runtime_env)
        else:
            start_local_ray(**local)
        signals.rearm()  # ray.init took SIGTERM over: a stop must still unwind through the job
        session = RaySession(log_file, _session_logs())
        if to_file is None and session.session_logs is not None:
            session.log_file = Path(session.session_logs) / DRIVER_LOG
            to_file = _FileHandler(session.log_file)
        held.setTarget(to_file)
        held.flush()
        if to_file is not None:
            logger.handlers[:] = [to_file]
        yield session
    finally:
        if ray.is_initialized():
            ray.shutdown()
        logger.handlers[:] = saved
        held.close()
        if to_file is not None:
            to_file.close()


def _join(address: str, runtime_env: dict[str, Any] | None) -> None:
    saved = {}
    if address != "auto" and "RAY_ADDRESS" in os.environ:
        # Ray lets RAY_ADDRESS override the address it is given; the option must win
        saved["RAY_ADDRESS"] = os.environ.pop("RAY_ADDRESS")
    try:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModnetBatchError(
            f"cannot join the Ray cluster at {address}: {first}; check the address (HOST:PORT "
            "of its GCS, or auto on a node) and, for token authentication, RAY_AUTH_MODE=token "
            "and RAY_AUTH_TOKEN(_PATH)"
        ) from None
    finally:
        os.environ.update(saved)


def start_local_ray(**kwargs: Any) -> None:
    """An embedded Ray private to this process, every Ray process bound to loopback, its workers'
    output kept in its session log folder (not forwarded to this terminal).

    Ray's single-machine mode (its default on macOS/Windows) keeps the node on 127.0.0.1 instead
    of the machine's network address; keyword arguments go to `ray.init` (num_cpus, num_gpus,
    resources for fake accelerators in tests, include_dashboard).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    kwargs.setdefault("include_dashboard", False)
    ray.init(address="local", logging_level=logging.WARNING, log_to_driver=False, **kwargs)


def _session_logs() -> str | None:
    node = getattr(ray._private.worker, "_global_node", None)
    try:
        return str(node.get_logs_dir_path()) if node is not None else None
    except Exception:  # a driver joined through ray:// has no local node
        return None
