"""Evaluation protocols: how an image becomes a network input and an output becomes a scored alpha.

A registry keyed by name; `get_protocol("seed-area")` returns a frozen, picklable protocol object.
"""

import cv2

from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol.base import Protocol, ScoredAlpha
from modnet_batch.protocol.paper import PaperProtocol
from modnet_batch.protocol.seed import SeedProtocol

PROTOCOLS: dict[str, Protocol] = {
    "seed-area": SeedProtocol(name="seed-area", interpolation=cv2.INTER_AREA),
    "seed-linear": SeedProtocol(name="seed-linear", interpolation=cv2.INTER_LINEAR),
    "paper": PaperProtocol(name="paper"),
}
DEFAULT_PROTOCOL = "seed-area"


def get_protocol(name: str) -> Protocol:
    """Look a protocol up by name; the error lists the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        known = ", ".join(sorted(PROTOCOLS))
        raise ModnetBatchError(f"unknown protocol {name!r}; use one of: {known}") from None


__all__ = ["DEFAULT_PROTOCOL", "PROTOCOLS", "Protocol", "ScoredAlpha", "get_protocol"]
