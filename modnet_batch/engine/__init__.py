"""Inference engines behind one interface, chosen by name from a registry."""

from modnet_batch.engine.base import Engine, EngineSpec, Session
from modnet_batch.engine.onnxruntime import OnnxRuntimeEngine
from modnet_batch.errors import ModnetBatchError

ENGINES: dict[str, Engine] = {"onnxruntime": OnnxRuntimeEngine()}
DEFAULT_ENGINE = "onnxruntime"


def get_engine(name: str = DEFAULT_ENGINE) -> Engine:
    """Look an engine up by name; the error lists the known ones."""
    try:
        return ENGINES[name]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise ModnetBatchError(f"unknown engine {name!r}; use one of: {known}") from None


def default_provider(device: str, provider: str | None = None) -> str:
    """The provider a job or bench uses on `device` unless it names one: cuda on GPUs."""
    return provider or ("cuda" if device == "gpu" else "cpu")


def open_session(spec: EngineSpec, engine: str = DEFAULT_ENGINE) -> Session:
    return get_engine(engine).open(spec)


__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "Engine",
    "EngineSpec",
    "Session",
    "default_provider",
    "get_engine",
    "open_session",
]
