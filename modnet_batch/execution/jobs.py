"""Submit a job to a Ray cluster through the Ray Jobs API, and look after it (status, logs, stop).

The cluster gets the package through the job's runtime environment (`py_modules`); the job's
entrypoint runs the same driver as a local submit, joined to that cluster.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

import modnet_batch
from modnet_batch import storage
from modnet_batch.errors import ModnetBatchError
from modnet_batch.options import JobConfig
from modnet_batch.options.job import without_secrets

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# `python` of the cluster's PATH, not this machine's interpreter path: a laptop's venv does not
# exist on the cluster (ray up, KubeRay images); cluster/local.py puts its venv first on PATH
ENTRYPOINT = "python -m modnet_batch.entrypoint job.yaml"
AUTH_HINT = (
    "the cluster uses token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or "
    "RAY_AUTH_TOKEN) to its token; for cluster/local.py: "
    'eval "$(python cluster/local.py env --state DIR)"'
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Authentication" in text or any(f"status code {c}" in text for c in (401, 403))


def _explain(exc: BaseException) -> str:
    return f"{_first_line(exc)}; {AUTH_HINT}" if _is_auth_error(exc) else _first_line(exc)


@contextlib.contextmanager
def _explicit(address: str) -> Iterator[None]:
    """Ray's SDK lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is given; an
    explicit URL must win (CLI > environment). `auto` or HOST:PORT still resolve through them."""
    names = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    saved = {n: os.environ.pop(n) for n in names if "://" in address and n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _client(address: str) -> Any:
    """A Jobs API client: `http://HEAD:8265`, or `auto` / the GCS `HOST:6379` (looked up there)."""
    from ray.job_submission import JobSubmissionClient

    try:
        with _explicit(address):
            return JobSubmissionClient(address)
    except Exception as exc:
        if _is_auth_error(exc):
            raise ModnetBatchError(f"the Ray Jobs API at {address}: {_explain(exc)}") from None
        raise ModnetBatchError(
            f"cannot reach the Ray Jobs API at {address} ({_first_line(exc)}); give the dashboard "
            "address, e.g. --address http://HEAD:8265, or set RAY_ADDRESS"
        ) from None


def job_spec(job: JobConfig) -> dict[str, Any]:
    """The job as the cluster runs it: absolute paths (shared storage is assumed) and the
    address `auto`, i.e. the cluster the entrypoint runs in."""
    resolved = dict(job.to_dict())
    resolved["dataset"] = str(storage.resolved(job.dataset))
    resolved["out"] = str(storage.resolved(job.out))
    if job.model and not storage.is_uri(job.model) and Path(job.model).exists():
        resolved["model"] = str(Path(job.model).resolve())
    resolved["address"] = "auto"
    # never a credential in the file the cluster gets: its nodes find their own
    return dict(without_secrets(resolved))


def submit_job(job: JobConfig) -> str:
    """Send `job` to the cluster at `job.address`; returns the submission id."""
    if not job.address:
        raise ModnetBatchError("submit_job needs an address, e.g. http://HEAD:8265")
    if "working_dir" in job.runtime_env:
        raise ModnetBatchError(
            "runtime_env.working_dir is set by modnet-batch (it carries job.yaml); remove it from "
            "the job's runtime_env"
        )
    package_dir = str(Path(modnet_batch.__file__).parent)
    extra_modules = list(job.runtime_env.get("py_modules", []))
    client = _client(job.address)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "job.yaml").write_text(yaml.safe_dump(job_spec(job), sort_keys=False))
        runtime_env: dict[str, Any] = {
            **job.runtime_env,
            "py_modules": [package_dir, *extra_modules],
            "working_dir": tmp,  # uploaded now, so the directory may go once submit returns
        }
        try:
            job_id: str = client.submit_job(
                entrypoint=ENTRYPOINT,
                runtime_env=runtime_env,
                metadata={"tool": "modnet-batch", "out": job_spec(job)["out"]},
            )
        except Exception as exc:
            raise ModnetBatchError(
                f"the cluster at {job.address} refused the job: {_explain(exc)}"
            ) from None
    return job_id


def _call(address: str, job_id: str, what: str, method: str) -> Any:
    client = _client(address)
    try:
        return getattr(client, method)(job_id)
    except Exception as exc:
        raise ModnetBatchError(
            f"cannot get the {what} of job {job_id!r} from {address}: {_explain(exc)}; list the "
            "cluster's jobs with `ray job list --address ADDRESS`"
        ) from None


def job_status(address: str, job_id: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return status_name(_call(address, job_id, "status", "get_job_status"))


def job_exit_code(address: str, job_id: str) -> int | None:
    """The exit status of a finished job's entrypoint (see modnet_batch.entrypoint), if known."""
    info = _call(address, job_id, "info", "get_job_info")
    code = getattr(info, "driver_exit_code", None)
    return int(code) if code is not None else None


def job_logs(address: str, job_id: str) -> str:
    return str(_call(address, job_id, "logs", "get_job_logs"))


def stop_job(address: str, job_id: str) -> bool:
    """True when a stop was requested, False when the job had already ended."""
    return bool(_call(address, job_id, "stop", "stop_job"))


def follow_logs(address: str, job_id: str, poll_s: float = 0.5, settle_s: float = 30.0) -> str:
    """Stream a job's logs to stdout until it ends; returns its final status."""
    import asyncio
    import sys

    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception as exc:
        raise ModnetBatchError(
            f"cannot stream the logs of job {job_id!r} from {address}: {_explain(exc)}"
        ) from None
    # the log stream closes when the job ends; its status may lag behind by a moment
    deadline = time.monotonic() + settle_s
    status = job_status(address, job_id)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = job_status(address, job_id)
    return status


def status_name(status: Any) -> str:
    return str(getattr(status, "value", status)).split(".")[-1]
