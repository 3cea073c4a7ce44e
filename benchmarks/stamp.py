"""Every lab result says where it came from: the commit, the UTC date and the machine (CPU model,
cores, memory, GPUs, package versions), written by one function."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modnet_batch.bench.environment import environment
from modnet_batch.storage import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str | None:
    """The checkout's commit (`+dirty` when files differ from it); None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def stamp() -> dict[str, Any]:
    """The keys every results JSON of the lab starts with: commit, date (UTC) and environment."""
    return {
        "commit": commit(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }


def write_results(path: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` as JSON at `path` (atomically), stamped unless it already is."""
    stamped = doc if "commit" in doc else {**stamp(), **doc}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json.loads(json.dumps(stamped, default=str)))
    return path
