"""Inference engines behind one interface, chosen by name from a registry."""

import importlib.util

from modnet_batch.engine.base import Engine, EngineSpec, Session
from modnet_batch.engine.device_work import DeviceOutOfMemory, DeviceWork
from modnet_batch.engine.onnxruntime import OnnxRuntimeEngine
from modnet_batch.errors import ModnetBatchError

TORCH_MISSING = "the torch engine needs PyTorch: pip install 'modnet-batch[torch]'"


class LazyTorchEngine:
    """The torch engine (engine/torch/session.py) behind a name: torch is optional and takes
    seconds to import, so it is imported by the first open(), never by this registry."""

    name = "torch"

    def open(self, spec: EngineSpec) -> Session:
        if importlib.util.find_spec("torch") is None:
            raise ModnetBatchError(TORCH_MISSING)
        from modnet_batch.engine.torch.session import TorchEngine

        return TorchEngine().open(spec)


ENGINES: dict[str, Engine] = {"onnxruntime": OnnxRuntimeEngine(), "torch": LazyTorchEngine()}
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
    "TORCH_MISSING",
    "DeviceOutOfMemory",
    "DeviceWork",
    "Engine",
    "EngineSpec",
    "LazyTorchEngine",
    "Session",
    "default_provider",
    "get_engine",
    "open_session",
]
