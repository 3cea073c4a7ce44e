"""The model shipped with a job (model/shipped.py) and the files a worker sends back
(RunDir.returned / write_returned): no file system shared with the driver needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.shipped import SHIPPED_DIR, ShippedModel, materialize
from modnet_batch.results import ReturnedFile, RunDir


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODNET_BATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_node_holding_the_same_file_opens_it_in_place(tiny_model: Path, cache: Path) -> None:
    shipped = ShippedModel.read(tiny_model)
    assert materialize(shipped, tiny_model) == tiny_model
    assert not cache.exists()


def test_a_node_without_the_file_writes_one_copy_named_by_content(
    tiny_model: Path, cache: Path, tmp_path: Path
) -> None:
    shipped = ShippedModel.read(tiny_model)
    elsewhere = tmp_path / "gone" / tiny_model.name  # the driver's path, absent on this node
    copy = materialize(shipped, elsewhere)
    assert copy.parent == cache / SHIPPED_DIR and copy.name.startswith(shipped.sha256[:16])
    assert copy.read_bytes() == tiny_model.read_bytes()
    stamp = copy.stat().st_mtime_ns
    assert materialize(shipped, elsewhere) == copy and copy.stat().st_mtime_ns == stamp  # reused


def test_a_damaged_copy_is_replaced(tiny_model: Path, cache: Path, tmp_path: Path) -> None:
    shipped = ShippedModel.read(tiny_model)
    copy = materialize(shipped, tmp_path / "absent.onnx")
    copy.write_bytes(b"\0" * len(shipped.data))  # same size, other bytes
    assert materialize(shipped, tmp_path / "absent.onnx").read_bytes() == shipped.data


def test_a_different_file_at_the_same_path_is_not_used(
    tiny_model: Path, cache: Path, tmp_path: Path
) -> None:
    other = tmp_path / tiny_model.name
    other.write_bytes(b"not this model")
    copy = materialize(ShippedModel.read(tiny_model), other)
    assert copy != other and copy.read_bytes() == tiny_model.read_bytes()


def test_an_unwritable_cache_is_one_line_naming_the_fix(
    tiny_model: Path, cache: Path, tmp_path: Path
) -> None:
    cache.write_text("a file where the cache folder should be")
    with pytest.raises(ModnetBatchError, match="MODNET_BATCH_CACHE"):
        materialize(ShippedModel.read(tiny_model), tmp_path / "absent.onnx")


def test_an_unreadable_model_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModnetBatchError, match=r"cannot read model .*missing.onnx.*--model"):
        ShippedModel.read(tmp_path / "missing.onnx")


def test_returned_files_land_where_the_worker_would_have_written_them(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", tmp_path / "elsewhere")
    files = [
        run.returned(run.alpha_path("a"), b"npz"),
        run.returned(tmp_path / "elsewhere" / "sub" / "b.png", b"png"),
    ]
    assert files == [
        ReturnedFile("run", "alpha/a.npz", b"npz"),
        ReturnedFile("outputs", "sub/b.png", b"png"),
    ]
    run.write_returned(files)
    assert run.alpha_path("a").read_bytes() == b"npz"
    assert (tmp_path / "elsewhere" / "sub" / "b.png").read_bytes() == b"png"
    with pytest.raises(ModnetBatchError, match="outside run"):
        run.returned(tmp_path / "x.png", b"")


@pytest.mark.parametrize(
    "bad",
    [
        ReturnedFile("run", "../escape.npz", b""),
        ReturnedFile("run", "/etc/passwd", b""),
        ReturnedFile("somewhere", "a.npz", b""),
        ReturnedFile("outputs", "", b""),
    ],
)
def test_a_returned_file_cannot_leave_the_run(tmp_path: Path, bad: ReturnedFile) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(ModnetBatchError, match="not a run file"):
        run.write_returned([bad])
    assert not (tmp_path / "escape.npz").exists()
