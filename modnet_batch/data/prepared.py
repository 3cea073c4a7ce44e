"""Protocol inputs prepared at ingest (`ingest --prepare PROTOCOL`), like the seed's image2npz step:
the network input before normalisation and the matte at the scoring size, both uint8, checked at
ingest to give bit-identical tensors and ground truths to the exact decode-and-resize path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol, get_protocol

# Image sizes probed to tell a fixed-size protocol (seed) from one that follows the image (paper).
_PROBE_SIZES = ((480, 288), (1000, 1500), (4000, 3000))


def prepared_description(protocol_name: str) -> dict[str, Any]:
    """The PREPARED_KEY metadata for `protocol_name`: its name and the stored shapes.

    Raises ModnetBatchError for a protocol whose input or scoring size depends on the image
    (there is no one stored shape, and scoring at full resolution needs the full matte anyway).
    """
    protocol = get_protocol(protocol_name)
    inputs = {protocol.network_size(h, w) for h, w in _PROBE_SIZES}
    scores = {protocol.scoring_size(h, w) for h, w in _PROBE_SIZES}
    if len(inputs) != 1 or len(scores) != 1:
        raise ModnetBatchError(
            f"protocol {protocol_name!r} cannot be prepared at ingest: its network input or "
            "scoring size depends on each image; ingest without --prepare (jobs decode the "
            "original files) or prepare for a fixed-size protocol such as seed-area"
        )
    (nh, nw), (sh, sw) = inputs.pop(), scores.pop()
    return {"protocol": protocol_name, "image_shape": [nh, nw, 3], "matte_shape": [sh, sw]}


def prepare_pair(
    protocol: Protocol,
    rgb: npt.NDArray[np.uint8],
    matte: npt.NDArray[np.uint8] | None,
    *,
    name: str,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None]:
    """HxWx3 uint8 RGB (+ HxW uint8 matte) -> (hxwx3 uint8 network input, sxt uint8 matte).

    The stored input is the protocol's tensor mapped back to 8 bits, and the stored matte its
    ground truth times 255; each is accepted only if the protocol turns it into exactly the same
    tensor / ground truth (resizing to the size it already has is a copy), else this raises.
    """
    tensor = protocol.preprocess(rgb)
    image = _to_u8(tensor.transpose(1, 2, 0) * np.float32(127.5) + np.float32(127.5))
    if not np.array_equal(protocol.preprocess(image), tensor):
        raise ModnetBatchError(
            f"cannot prepare {name} for {protocol.name}: its network input is not an 8-bit "
            "image the protocol maps to the same tensor; ingest without --prepare"
        )
    if matte is None:
        return image, None
    gt = protocol.ground_truth(matte)
    small = _to_u8(gt * 255.0)
    if not np.array_equal(protocol.ground_truth(small), gt):
        raise ModnetBatchError(
            f"cannot prepare the matte of {name} for {protocol.name}: its ground truth is not "
            "8-bit at the scoring size; ingest without --prepare"
        )
    return image, small


def _to_u8(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
