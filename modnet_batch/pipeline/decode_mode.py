"""How a job decodes its JPEGs: exactly, reduced per image where that is safe, or at a fixed
DCT-domain factor. Parsed once from the job's option and resolved once per job."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol

# `auto` keeps the reduced image at least this many times the network input on each side, so the
# protocol's area resize still averages >= 2x2 decoded pixels and hides how libjpeg's scaled IDCT
# differs from a box filter. Measured on ppm100-dev (seed-area, fp32): margin 1 moves the mean MSE
# by -9.3e-4, margin 2 by +1.0e-5 (MAD +2.6e-5); MODNet flips a few images on sub-level changes.
# The matte (the ground truth) is reduced by the same rule against the scoring size: alone it
# moves MSE by -5.4e-6, MAD by +3.1e-6, mIoU by -2.4e-5 there.
AUTO_MARGIN = 2


class DecodeMode(StrEnum):
    """The value is what job.yaml and `--decode-reduce` say."""

    EXACT = "off"
    AUTO = "auto"  # requested: reduced where safe; resolved: reduced per image (JPEG only)
    REDUCE_2 = "2"
    REDUCE_4 = "4"
    REDUCE_8 = "8"

    @classmethod
    def parse(cls, value: object) -> DecodeMode:
        """`auto`, `off` (or 1), 2, 4, 8 as a string or an int."""
        text = str(value).strip().lower()
        if text == "1":
            return cls.EXACT
        try:
            return cls(text)
        except ValueError:
            raise ModnetBatchError(
                f"decode_reduce {value!r} is unknown; use auto, off, 2, 4 or 8"
            ) from None

    @classmethod
    def for_job(
        cls, requested: DecodeMode | None, protocol: Protocol, precision: str, scored: bool
    ) -> DecodeMode:
        """The mode a job runs: as requested, resolved; unrequested, exact for a job that scores
        against ground truth (MODNet flips regions on sub-level input changes, so no reduced
        decode is safe on unseen data) and `auto` for one that only mattes."""
        if requested is None:
            requested = cls.EXACT if scored else cls.AUTO
        return requested.resolve(protocol, precision)

    def resolve(self, protocol: Protocol, precision: str = "fp32") -> DecodeMode:
        """What `self` means for a job with this protocol and model precision.

        `auto` reduces only where that keeps the protocol's metrics within 1e-4 of an exact
        decode: protocols whose input resize averages areas (Protocol.reduced_decode), with
        float models. An int8 model turns the same sub-level input changes into a shift of ~1e-3
        in MSE on ppm100-dev (measured), so int8 decodes exactly unless a factor is asked for.
        """
        if self is DecodeMode.AUTO and not (protocol.reduced_decode and precision != "int8"):
            return DecodeMode.EXACT
        return self

    @property
    def factor(self) -> int:
        """The fixed image reduce factor (1 for exact and for auto, which picks per image)."""
        return int(self.value) if self.value.isdigit() else 1

    def describe(
        self, scored: bool = False, check: dict[str, Any] | None = None, device: bool = False
    ) -> str:
        """How a job decodes, for its summary; a scored job's reduced (or `device`: on the
        engine's device, `--decoding device`) decode says that its metrics are approximate, and
        by how much where `check` (decode_check) measured it."""
        if self is DecodeMode.EXACT and not device:
            return "exact"
        if self is DecodeMode.EXACT:
            text = ""
        elif self is DecodeMode.AUTO:
            text = "auto: JPEG images and mattes at 1/2..1/8, >= 2x the protocol's size"
        else:
            text = f"JPEG images at 1/{self.factor}"
        exact_flag = "--decode-reduce off"
        if device:
            text = (
                "device: baseline JPEGs decoded and resized on the engine's device, other "
                f"images on the CPU ({text or 'exact'})"
            )
            exact_flag = "--decoding cpu"
        if not scored:
            return text
        if not check:
            return text + "; metrics approximate (not compared with an exact decode in this run)"
        moved = ", ".join(f"{k} {v:+.2g}" for k, v in check["delta"].items() if v is not None)
        how = "an exact decode"
        if device:  # the check runs in the driver: the engine's device and precision differ too
            how = (
                "the exact CPU decode in the driver (fp32 on its CPU: device and precision "
                "differences included)"
            )
        return (
            f"{text}; metrics approximate: on {len(check['images'])} of its images re-run with "
            f"{how} they moved by {moved} (MSE by up to {check['max_abs_mse']:.2g} "
            f"on one image); {exact_flag} is exact"
        )


def auto_reduce(protocol: Protocol, height: int, width: int, *, matte: bool = False) -> int:
    """The largest JPEG reduce factor (8, 4, 2, else 1) for an image (or, with `matte`, its
    matte) of this size under `protocol`.

    The decoded image must stay at least AUTO_MARGIN times the network input on each side and
    give the protocol the same network input size; a matte likewise for the scoring size (so
    a protocol scoring at full resolution never reduces it).
    """
    size = protocol.scoring_size if matte else protocol.network_size
    nh, nw = size(height, width)
    for r in (8, 4, 2):
        h, w = -(-height // r), -(-width // r)
        if h >= AUTO_MARGIN * nh and w >= AUTO_MARGIN * nw and size(h, w) == (nh, nw):
            return r
    return 1
