"""The options of `report` and of the commands that talk to a job on a cluster."""

from __future__ import annotations

from dataclasses import dataclass

from modnet_batch.metrics import PER_IMAGE
from modnet_batch.options.spec import option


@dataclass(frozen=True)
class ReportConfig:
    worst: int = option(10, "List this many worst images (one run).", min=0)
    metric: str = option(
        "mse", "Rank images by mse, mad, sad, grad or conn.", choices=lambda: PER_IMAGE
    )
    html: str | None = option(
        None,
        "Also write one self-contained HTML page: the run's report, or the comparison of several "
        "runs; none = the terminal only.",
        metavar="FILE",
    )
    panels: int = option(
        6,
        "--html: picture the worst and the best this many images (a comparison: half as many "
        "per direction of change).",
        min=0,
    )


@dataclass(frozen=True)
class ClusterConfig:
    """`status`, `logs`, `stop` (and `submit --follow`): a job on a Ray cluster."""

    address: str | None = option(
        None,
        "Ray Jobs API address, e.g. http://HEAD:8265; none = $RAY_ADDRESS.",
        envvar="RAY_ADDRESS",
        metavar="URL",
        commands=("status", "logs", "stop"),
    )
    follow: bool = option(
        False,
        "Stream the job's logs until it ends (a job sent to a cluster with --address).",
        commands=("submit", "logs"),
    )
