"""What a report says about a run besides pictures: what each metric means, the job's facts.

Everything is read through `results` (summary.json, job.yaml, metrics.parquet); nothing is
recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modnet_batch.metrics import DATASET, ImageRow
from modnet_batch.reporting.table import DIGITS, TITLES, fmt
from modnet_batch.results import RunDir, Share, Summary
from modnet_batch.results.throughput import OVERALL, STEADY
from modnet_batch.storage import AnyPath, resolved


@dataclass(frozen=True)
class MetricInfo:
    title: str
    meaning: str
    lower_is_better: bool

    @property
    def direction(self) -> str:
        return "lower is better" if self.lower_is_better else "higher is better"


# One line per metric, in the CLI's order (metrics.DATASET), then throughput.
METRICS: dict[str, MetricInfo] = {
    "mse": MetricInfo(
        TITLES["mse"],
        "mean squared error of the alpha (0..1) per pixel, averaged over images",
        True,
    ),
    "mad": MetricInfo(
        TITLES["mad"], "mean absolute difference of the alpha per pixel, averaged over images", True
    ),
    "sad": MetricInfo(
        TITLES["sad"],
        "sum of absolute alpha differences over the image / 1000 (grows with the scoring size)",
        True,
    ),
    "grad": MetricInfo(
        TITLES["grad"],
        "gradient error / 1000: blurred or jagged edges and hair (Rhemann et al. 2009)",
        True,
    ),
    "conn": MetricInfo(
        TITLES["conn"],
        "connectivity error / 1000: alpha cut off from the main foreground (Rhemann et al. 2009)",
        True,
    ),
    "miou": MetricInfo(
        TITLES["miou"],
        "mean of foreground and background IoU of the thresholded alpha, over all pixels pooled",
        False,
    ),
}
# The two rates (results.throughput.Throughput defines them), after the metrics.
RATES = (
    MetricInfo(
        STEADY,
        "images per second while workers run work units (first unit's start to last unit's "
        "finish), start-up excluded",
        False,
    ),
    MetricInfo(
        OVERALL, "images per second over the job's whole wall time, start-up included", False
    ),
)
assert tuple(METRICS) == DATASET

# What a backend's start-up time covers.
STARTUP = {"ray": "Ray up, workers started, models loaded", "inline": "the model loaded"}

# How each protocol makes its numbers (the README's table, one line each).
PROTOCOLS = {
    "seed-area": "input resized to 480x288 (INTER_AREA), scored at 480x288 against the GT "
    "resized with INTER_AREA; foreground = 8-bit alpha >= 128",
    "seed-linear": "as seed-area, the input resized with INTER_LINEAR",
    "paper": "MODNet's inference_onnx.py: short side 512, sides multiples of 32, the output "
    "resized back and scored at full resolution; foreground = alpha >= 0.5",
}


@dataclass
class RunView:
    """One run as a report reads it: its directory, summary, job.yaml and metric rows."""

    name: str
    run: RunDir
    summary: Summary
    job: dict[str, Any]
    rows: list[ImageRow]

    @classmethod
    def open(cls, path: str | AnyPath) -> RunView:
        run = RunDir.find(path)
        where = resolved(path)
        name = where.name or str(where)
        return cls(name, run, run.read_summary(), run.read_job(), run.read_rows())

    @property
    def scored(self) -> list[ImageRow]:
        return [r for r in self.rows if r.scored]

    @property
    def failed(self) -> list[ImageRow]:
        return [r for r in self.rows if r.error is not None]

    @property
    def has_ground_truth(self) -> bool:
        return self.summary.images.scored > 0

    @property
    def dataset_name(self) -> str:
        return Path(self.summary.job.dataset).name

    @property
    def rates(self) -> tuple[float, float]:
        """Its steady and overall img/s, in the order of RATES."""
        rates = self.summary.throughput
        return rates.steady_images_per_s, rates.overall_images_per_s

    def rates_text(self) -> str:
        """ "2.10 steady img/s, 1.50 overall img/s"."""
        return ", ".join(f"{fmt(r, 2)} {i.title}" for i, r in zip(RATES, self.rates, strict=True))

    def metric_title(self) -> str:
        """As the terminal table titles it: a mean over survivors never passes for the whole."""
        images = self.summary.images
        text = f"{self.summary.job.protocol} on {self.dataset_name}"
        if images.failed:
            text += (
                f": metrics over {images.scored} of {images.total} images, {images.failed} failed"
            )
        return text

    def metric_value(self, key: str) -> str:
        return fmt(self.summary.metrics.get(key), DIGITS[key])


def _short(value: Any, limit: int = 12) -> Any:
    """Long lists (calibration ids, node names) shortened to their first items and a count."""
    if isinstance(value, list) and len(value) > limit:
        return [*value[:limit], f"... {len(value) - limit} more ({len(value)} in all)"]
    return value


def model_facts(summary: Summary) -> list[tuple[str, Any]]:
    """The model and, for a built variant, its build record (what summary.json records)."""
    variant = summary.job.variant
    facts: list[tuple[str, Any]] = [
        ("model", variant.get("name", Path(summary.job.model).stem)),
        ("precision", variant.get("precision", "?")),
        ("file", summary.job.model),
        ("sha256", variant.get("sha256", "?")),
        ("engine", summary.job.engine),
    ]
    if variant.get("stale"):
        facts.append(("warning", "the build record names another file hash (rebuilt since?)"))
    build = variant.get("build")
    if isinstance(build, dict):
        for key, value in build.items():
            if key in ("name", "precision"):
                continue
            facts.append((f"build: {key}", _flatten(value)))
    return facts


def _flatten(value: Any) -> Any:
    """A build record's value, readable: a kept node as `name (op): why`, long lists cut."""
    if isinstance(value, dict):
        if "node" in value and "reason" in value:
            op = f" ({value['op_type']})" if value.get("op_type") else ""
            return f"{value['node']}{op}: {value['reason']}"
        return {k: _flatten(v) for k, v in value.items()}
    if isinstance(value, list):
        return _short([_flatten(v) for v in value])
    return value


def job_facts(view: RunView) -> list[tuple[str, Any]]:
    """Dataset, protocol, decode, devices and workers: how the numbers were made."""
    s = view.summary
    job = view.job
    images = s.images
    workers = s.workers
    providers = sorted({str(w.get("provider", "?")) for w in workers})
    threads = sorted({str(w.get("threads", "?")) for w in workers})
    nodes = sorted({str(w.get("node", s.driver)) for w in workers})
    facts: list[tuple[str, Any]] = [
        ("dataset", s.job.dataset),
        (
            "images",
            f"{images.total} ({images.scored} scored, {images.unscored} without ground truth, "
            f"{images.failed} failed)",
        ),
        ("protocol", f"{s.job.protocol}: {PROTOCOLS.get(s.job.protocol, '')}".rstrip(": ")),
        ("decode", s.job.decode),
        ("backend", s.job.backend + (f" at {s.job.address}" if s.job.address else "")),
        ("device", job.get("device", "?")),
        (
            "workers",
            f"{len(workers)} on {len(nodes)} node(s); threads {', '.join(threads) or '?'}; "
            f"provider {', '.join(providers) or '?'}",
        ),
        ("batch size", s.job.batch_size if s.job.batch_size is not None else "?"),
        ("start-up", f"{s.startup_seconds:.1f} s ({STARTUP.get(s.job.backend, STARTUP['ray'])})"),
        ("wall", f"{s.throughput.wall_s:.1f} s, start-up included"),
        (
            "work units",
            f"{s.units.total} ({s.units.processed} this attempt, "
            f"{s.units.skipped_done} earlier, {len(s.units.failed)} failed)",
        ),
        ("finished", f"{s.finished} on {s.driver}, modnet-batch {s.version}"),
    ]
    if job.get("output_dir"):
        facts.append(("outputs", job["output_dir"]))
    if not s.complete:
        facts.append(
            ("incomplete", "some work units failed every retry: run the same command again")
        )
    return facts


def worker_rows(summary: Summary) -> list[dict[str, Any]]:
    """One entry per worker: label, node, threads, provider, images, steady s, both rates."""
    rates = summary.throughput
    rows = []
    for w in summary.workers:
        label = str(w.get("label", "?"))
        share = rates.per_device.get(label, Share(0, 0.0))
        rows.append(
            {
                "worker": label,
                "node": w.get("node", summary.driver),
                "threads": w.get("threads", "?"),
                "provider": w.get("provider", "?"),
                "session load s": fmt(w.get("session_seconds"), 2),
                "images": share.images,
                "steady s": fmt(share.steady_s, 1),
                STEADY: fmt(share.steady_images_per_s, 2),
                OVERALL: fmt(rates.overall_of(share), 2),
            }
        )
    return rows
