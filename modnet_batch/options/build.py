"""The options of `build` (what the build YAML says is model.build_config's)."""

from __future__ import annotations

from dataclasses import dataclass

from modnet_batch.options.spec import option


@dataclass(frozen=True)
class BuildOptions:
    calibration: tuple[str, ...] = option(
        (),
        "Calibration/check images instead of the config's: a dataset dir or an image folder "
        "(PPM layout or flat); repeat for several; none = the config's datasets.",
        metavar="DIR",
    )
    force: bool = option(False, "Replace an existing output.")
