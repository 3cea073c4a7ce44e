"""The torch engine's device work (engine/torch/device_work.py) on torch's CPU, where the
decoder is the OpenCV stand-in: what it prepares, what it leaves to the CPU and why, and its
out-of-memory errors as the engine-neutral DeviceOutOfMemory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.engine.device_work import (
    DeviceFallback,
    DeviceOutOfMemory,
    DevicePrepared,
    EncodedPhoto,
)
from modnet_batch.protocol import get_protocol

torch = pytest.importorskip("torch", reason="the torch engine needs PyTorch (make install has it)")


def _jpeg(h: int, w: int) -> bytes:
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    return bytes(cv2.imencode(".jpg", img)[1])


@pytest.fixture(scope="module")
def work(tiny_model: Path) -> Any:
    session = open_session(EngineSpec(str(tiny_model)), "torch")
    assert session.device_work is not None
    return session.device_work


def test_the_torch_engine_prepares_a_group_and_names_what_it_cannot(work: Any) -> None:
    preparer = work.open_preparer(10**6)
    assert preparer.name == "opencv (cpu stand-in)" and preparer.group_pixels == 10**6
    photos = [
        EncodedPhoto(_jpeg(120, 90), 120, 90),
        EncodedPhoto(b"not a jpeg", 120, 90),
        EncodedPhoto(_jpeg(120, 90), 121, 90),  # the header said otherwise
    ]
    good, broken, moved = preparer.prepare(photos, get_protocol("seed-area"), keep_rgb=True)
    assert isinstance(good, DevicePrepared) and good.rgb is not None
    assert good.rgb.shape == (120, 90, 3) and tuple(good.network_input.shape) == (3, 480, 288)
    assert isinstance(broken, DeviceFallback)
    assert broken.reason.startswith("the device decoder failed (")
    assert moved == DeviceFallback("the device decoded 90x120")


def test_a_batch_is_inferred_and_resized_back_on_the_device(work: Any) -> None:
    x = np.zeros((3, 64, 48), np.float32)
    batch = work.infer([torch.from_numpy(x), x])  # prepared there, and a CPU fallback
    assert batch.output.shape == (2, 1, 64, 48) and batch.input_hw == (64, 48)
    assert work.resize_back(batch, 1, 100, 75).shape == (100, 75)


def test_out_of_device_memory_is_the_engine_neutral_error(
    work: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modnet_batch.engine.torch import decode

    def full(*args: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(decode, "to_source", full)
    batch = work.infer([np.zeros((3, 64, 48), np.float32)])
    with pytest.raises(DeviceOutOfMemory, match="100x200"):
        work.resize_back(batch, 0, 200, 100)
    monkeypatch.setattr(decode, "network_input", full)
    photo = EncodedPhoto(_jpeg(120, 90), 120, 90)
    preparer = work.open_preparer(10**6)
    assert preparer.prepare([photo], get_protocol("seed-area"), keep_rgb=False) == [
        DeviceFallback("the device ran out of memory")
    ]
