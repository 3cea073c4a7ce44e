"""The engine registry and the packaging hints: a missing engine package names the extra that
installs it, on one line."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from modnet_batch.engine import EngineSpec, get_engine, open_session
from modnet_batch.errors import ModnetBatchError


def _without(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(ModnetBatchError, match=r"unknown engine 'tensorflow'; use one of: .*onnx"):
        get_engine("tensorflow")


def test_missing_onnxruntime_names_the_extras(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    _without(monkeypatch, "onnxruntime")
    with pytest.raises(ModnetBatchError) as info:
        open_session(EngineSpec(str(tiny_model)))
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'modnet-batch[cpu]'" in message and "'modnet-batch[gpu]'" in message


def test_build_without_onnxruntime_says_so_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modnet_batch.model.build import build_variant

    _without(monkeypatch, "onnxruntime")
    with pytest.raises(ModnetBatchError, match=r"modnet-batch\[cpu\]"):
        build_variant(tmp_path / "missing-config.yaml")
