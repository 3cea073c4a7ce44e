"""`modnet-batch bench`: the throughput test."""

from __future__ import annotations

from typing import Any

from modnet_batch.cli.common import one_line_errors, term
from modnet_batch.cli.params import parse, with_options
from modnet_batch.options.bench import BenchConfig


@with_options(BenchConfig, command="bench")
def bench(*, options: dict[str, Any]) -> None:
    """Throughput test: model-only and end-to-end images/s, per device and in total."""
    from modnet_batch.bench.run import run_bench
    from modnet_batch.bench.table import print_bench

    with one_line_errors():
        cfg = parse(BenchConfig, options)
        doc = run_bench(cfg, log=term.note)
    print_bench(doc, term.out)
    term.note(f"wrote {cfg.out}")
