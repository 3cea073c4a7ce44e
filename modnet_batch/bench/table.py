"""The bench document as terminal tables: one row per measurement, then the derived figures."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _foreign(r: dict[str, Any]) -> str:
    """CPU cores other processes used meanwhile: a figure taken on a busy machine is suspect."""
    return _f(r.get("machine_load", {}).get("foreign_cores"))


def print_bench(doc: dict[str, Any], console: Console) -> None:
    table = Table(title=f"modnet-batch bench: {doc['model']['name']} ({doc['model']['precision']})")
    for col in (
        "kind",
        "round",
        "batch",
        "dev x thr",
        "img/s",
        "per device img/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "stable",
        "others' cores",
    ):
        table.add_column(col, justify="left" if col in {"kind", "per device img/s"} else "right")
    for r in doc["model_only"]:
        lat = r["latency"]
        table.add_row(
            "model-only",
            str(r["round"]),
            str(r["batch_size"]),
            f"{r['devices']}x{r['threads_per_device']}",
            _f(r["images_per_s"]),
            " ".join(f"{k}={v['images_per_s']:.2f}" for k, v in r["per_device"].items()),
            _f(lat.get("p50_ms"), ".1f"),
            _f(lat.get("p90_ms"), ".1f"),
            _f(lat.get("p99_ms"), ".1f"),
            "yes" if r["stability"]["stable"] else "no",
            _foreign(r),
        )
    for r in doc["end_to_end"]:
        threads = r["job"].get("threads")
        table.add_row(
            f"end-to-end ({r['job']['backend']})",
            str(r["round"]),
            str(r["batch_size"]),
            f"{r['devices']}x{threads if threads else '-'}",
            _f(r["images_per_s"]),
            " ".join(
                f"{k.split('@')[0]}={v['images_per_processing_s']:.2f}"
                for k, v in r["per_device"].items()
            ),
            "",
            "",
            "",
            "yes" if r["stability"]["stable"] else "no",
            _foreign(r),
        )
    for r in doc["naive"]:
        table.add_row(
            "naive loop",
            str(r["round"]),
            "1",
            f"1x{r['threads']}",
            _f(r["images_per_s"]),
            "",
            "",
            "",
            "",
            "",
            _foreign(r),
        )
    console.print(table)
    for r in doc["end_to_end"][-1:]:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_wall_s"].items())
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["pool_cpu_s"].items())
        console.print(
            f"end-to-end (last run): {r['images']} images in {r['processing_s']:.2f} s after "
            f"{r['startup_s']:.2f} s start-up; first result {_f(r['time_to_first_result_s'])} s "
            f"after the workers were ready\n  shard loop (s per worker): {stages}\n"
            f"  pool threads CPU (s): {cpu}",
            highlight=False,
        )
    derived = doc["summary"]["derived"]
    for key, values in derived.items():
        if key.endswith("_note"):
            continue
        shown = ", ".join(f"{k}: {v:.3f}" for k, v in values.items())
        note = derived.get(f"{key}_note")
        console.print(f"derived {key}: {shown}" + (f"  ({note})" if note else ""), highlight=False)
