"""The registry of execution backends; each is imported only when a job uses it (Ray is big)."""

from __future__ import annotations

import importlib

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.backend import Backend

# name -> "module:class"; the names are options.BACKENDS, the values a job can choose.
BACKENDS = {
    "inline": "modnet_batch.execution.inline:InlineBackend",
    "ray": "modnet_batch.execution.ray_backend:RayBackend",
}


def get_backend(name: str) -> Backend:
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ModnetBatchError(f"backend {name!r} is unknown; use one of: {known}") from None
    backend: Backend = getattr(importlib.import_module(module), cls)()
    return backend
