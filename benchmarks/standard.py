"""`make bench`: the standard benchmark set, on the shared ppm100-dev data when present (else the
synthetic demo data), written as JSON under `bench/`. Every figure is measured side by side in
interleaved rounds; ratios are taken per round and quoted as medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.memory import peak_submit_memory
from benchmarks.stamp import stamp, write_results
from benchmarks.tiny import make_tiny_model
from modnet_batch.bench.devices import Device
from modnet_batch.bench.end_to_end import run_end_to_end
from modnet_batch.bench.environment import LoadMonitor, load_average
from modnet_batch.bench.model_only import measure
from modnet_batch.bench.naive import run_naive
from modnet_batch.bench.run import dataset_samples
from modnet_batch.bench.stats import median
from modnet_batch.data.ingest import ingest
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import CpuSplit, available_cpus, cpu_split
from modnet_batch.model.variants import VARIANTS, resolve_model, variant_info
from modnet_batch.options.bench import BenchConfig
from modnet_batch.pipeline import DecodeMode
from modnet_batch.protocol import get_protocol

PROTOCOL = "seed-area"
SHARD_SIZE = 4  # 41 ppm100-dev images -> 11 shards, enough for two workers to share evenly
METRICS = ("mse", "mad", "miou")
MEMORY_SIZES = (200, 2000)


@dataclass(frozen=True)
class Inputs:
    """One way to feed a job: which dataset and which decode mode."""

    name: str
    prepared: bool
    decode_reduce: DecodeMode


INPUTS = (
    # original files, --decode-reduce auto (reduced; `submit` scores exactly unless asked)
    Inputs("default", False, DecodeMode.AUTO),
    Inputs("exact", False, DecodeMode.EXACT),  # original files, --decode-reduce off
    Inputs("prepared", True, DecodeMode.EXACT),  # `ingest --prepare seed-area`
)


def inputs_for(precision: str) -> tuple[Inputs, ...]:
    """The inputs worth timing: where `auto` already decodes exactly for this precision (int8),
    "exact" would repeat "default"."""
    auto = DecodeMode.AUTO.resolve(get_protocol(PROTOCOL), precision)
    return tuple(i for i in INPUTS if not (auto is DecodeMode.EXACT and i.name == "exact"))


def layouts(cores: int) -> list[CpuSplit]:
    """Ways to spend the cores (`workers` sessions of `threads` intra-op threads each):
    `submit`'s default first (resources.cpu_split), then one session on every core."""
    default = cpu_split(None, None, cores)
    every = CpuSplit(workers=1, threads=cores)
    return [default] if every == default else [default, every]


def layout_name(split: CpuSplit) -> str:
    return f"{split.workers}x{split.threads}"


def prepare_data(out: Path, log: Console) -> dict[str, Any]:
    """Ingest the source twice (as is, and prepared for the protocol), timing both."""
    shared = os.environ.get("MODNET_SHARED_DIR")
    src = Path(shared) / "datasets" / "ppm100-dev" if shared else None
    if src is None or not (src / "image").is_dir():
        src = out / "synthetic-src"
        if not src.exists():
            log.print(f"no shared data (MODNET_SHARED_DIR); making synthetic portraits in {src}")
            make_synthetic(src, n=16)
        name = "synthetic"
    else:
        name = "ppm100-dev"
    info: dict[str, Any] = {"name": name, "source": str(src)}
    for label, prepare in (("plain", None), ("prepared", PROTOCOL)):
        dest = out / f"{name}-{label}"
        shutil.rmtree(dest, ignore_errors=True)
        rep = ingest(src, dest, shard_size=SHARD_SIZE, prepare=prepare)
        info[label] = {
            "path": str(dest),
            "images": rep.images,
            "shards": rep.shards,
            "ingest_s": rep.seconds,
            "prepare_cpu_s": rep.prepare_cpu_seconds,
            "prepared_mib": rep.prepared_bytes / 2**20,
            "dataset_mib": sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 2**20,
        }
    return info


def _reference(shared: str | None) -> dict[str, Any] | None:
    if not shared:
        return None
    path = Path(shared) / "reference" / "ppm100-dev.json"
    if not path.is_file():
        return None
    results: dict[str, Any] = json.loads(path.read_text())["results"][PROTOCOL]
    return results


def bench_model(
    model: str,
    precision: str,
    data: dict[str, Any],
    args: argparse.Namespace,
    out: Path,
    log: Console,
) -> dict[str, Any]:
    """Each end-to-end run (layout x inputs) between two model-only runs of the same layout
    (M E M E M ...), and the naive loop right after the default job: ratios come from adjacent
    measurements (the model-only side is the mean of the runs before and after), so a
    neighbour's load or the host's drifting speed hits both sides alike. Repeated for
    args.rounds."""
    cores = available_cpus()
    plain, prepared = data["plain"]["path"], data["prepared"]["path"]
    samples = dataset_samples(plain, PROTOCOL)
    batch = args.batch[0]
    records: list[dict[str, Any]] = []

    def record(kind: str, rnd: int, fn: Any, **keys: Any) -> dict[str, Any]:
        with LoadMonitor() as load:
            rec = fn()
        rec = {"kind": kind, "round": rnd, **keys, **rec, "machine_load": load.result}
        records.append(rec)
        log.print(
            f"  round {rnd + 1}: {kind} {keys}: {rec['images_per_s']:.2f} img/s "
            f"(others used {load.result['foreign_cores']:.2f} cores)",
            highlight=False,
        )
        return rec

    def model_only(rnd: int, lay: CpuSplit, b: int, pair: str, after: str = "") -> None:
        """`pair`: the end-to-end run this one precedes; `after`: the one it follows."""
        cfg = BenchConfig(mode="model", model=model, duration_s=args.duration, warmup=2)
        devs = [Device(f"cpu{i}", "cpu", 0, lay.threads) for i in range(lay.workers)]
        record(
            "model_only",
            rnd,
            lambda: measure(cfg, model, devs, samples, b),
            layout=layout_name(lay),
            batch_size=b,
            pair=pair,
            after=after,
        )

    default = layouts(cores)[0]  # what `submit` uses without --workers/--threads
    for rnd in range(args.rounds):
        for lay in layouts(cores):
            for b in args.batch[1:]:  # other batch sizes: model-only, for information
                model_only(rnd, lay, b, "")
            runs = inputs_for(precision)
            model_only(rnd, lay, batch, f"{layout_name(lay)}/{runs[0].name}")
            for k, inp in enumerate(runs):
                pair = f"{layout_name(lay)}/{inp.name}"
                cfg = BenchConfig(
                    mode="e2e",
                    dataset=prepared if inp.prepared else plain,
                    protocol=PROTOCOL,
                    decode_reduce=inp.decode_reduce,
                )
                run_dir = out / "runs" / pair.replace("/", "-")
                record(
                    "end_to_end",
                    rnd,
                    lambda cfg=cfg, lay=lay, run_dir=run_dir: run_end_to_end(
                        cfg, model, batch, lay.workers, lay.threads, run_dir
                    ),
                    layout=layout_name(lay),
                    inputs=inp.name,
                    batch_size=batch,
                    pair=pair,
                )
                if lay == default and inp.name == "default":
                    record(
                        "naive",
                        rnd,
                        lambda: run_naive(plain, model, PROTOCOL, cores, out / "runs" / "naive"),
                        layout=f"1x{cores}",
                        pair=pair,
                    )
                following = f"{layout_name(lay)}/{runs[k + 1].name}" if k + 1 < len(runs) else ""
                model_only(rnd, lay, batch, following, after=pair)
    summary = summarize_model(records)
    summary["default_layout"] = layout_name(default)
    summary["precision"] = precision
    return {"records": records, "summary": summary}


CLEAN_CORES = 0.25  # a pair is "clean" when other processes used at most this many cores


def _ratios(
    e2e: list[dict[str, Any]],
    peers: dict[tuple[int, str], dict[str, Any]],
    field: str = "images_per_s",
) -> dict[str, Any]:
    """Each end-to-end run over its peer of the same round, per pair: the median over all
    rounds, and over the clean ones."""
    out: dict[str, Any] = {}
    for pair in sorted({r["pair"] for r in e2e}):
        vals, clean = [], []
        for r in (r for r in e2e if r["pair"] == pair):
            peer = peers.get((r["round"], pair))
            if peer is None or peer["images_per_s"] <= 0 or not r.get(field):
                continue
            v = r[field] / peer["images_per_s"]
            vals.append(v)
            load = max(r["machine_load"]["foreign_cores"], peer["machine_load"]["foreign_cores"])
            if load <= CLEAN_CORES:
                clean.append(v)
        if vals:
            out[pair] = {
                "median": median(vals),
                "per_round": vals,
                "clean_median": median(clean) if clean else None,
                "clean_rounds": len(clean),
            }
    return out


def summarize_model(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds; each ratio per round from its adjacent pair, then the median (over
    all rounds, and over the clean ones where nobody else used the machine)."""
    e2e = [r for r in records if r["kind"] == "end_to_end"]
    # model-only peers of each end-to-end run: the run just before and the run just after
    neighbours: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["kind"] == "model_only":
            for key in (r.get("pair"), r.get("after")):
                if key:
                    neighbours[(r["round"], key)].append(r)
    mo = {
        key: {
            "images_per_s": sum(r["images_per_s"] for r in rs) / len(rs),
            "machine_load": {"foreign_cores": max(r["machine_load"]["foreign_cores"] for r in rs)},
        }
        for key, rs in neighbours.items()
    }
    nv = {(r["round"], r["pair"]): r for r in records if r["kind"] == "naive"}

    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r["kind"] == "model_only":
            groups[f"model_only/{r['layout']}/b{r['batch_size']}"].append(r["images_per_s"])
        elif r["kind"] == "end_to_end":
            groups[f"end_to_end/{r['pair']}"].append(r["images_per_s"])
        else:
            groups["naive"].append(r["images_per_s"])
    pairs = sorted({r["pair"] for r in e2e})
    first = {r["pair"]: r for r in reversed(e2e)}
    return {
        "images_per_s": {k: median(v) for k, v in sorted(groups.items())},
        "pipeline_efficiency_derived": _ratios(e2e, mo),
        # the same over the steady part of each job (between its 10% and 90% results): the
        # pipeline's own cost, without the start (first decode) and the tail (one worker left)
        "steady_efficiency_derived": _ratios(e2e, mo, "steady_images_per_s"),
        "speedup_vs_naive_derived": _ratios(e2e, nv),
        "metrics": {p: first[p]["metrics"] for p in pairs},
        "ray_startup_s": median([r["startup_s"] for r in e2e]),
        "ray_startup_max_s": max(r["startup_s"] for r in e2e),
        "end_to_end_breakdown": {
            p: {
                "processing_s": median([r["processing_s"] for r in e2e if r["pair"] == p]),
                "stages_wall_s": _median_dicts([r["stages_wall_s"] for r in e2e if r["pair"] == p]),
                "pool_cpu_s": _median_dicts([r["pool_cpu_s"] for r in e2e if r["pair"] == p]),
                "time_to_first_result_s": median(
                    [r["time_to_first_result_s"] or 0.0 for r in e2e if r["pair"] == p]
                ),
            }
            for p in pairs
        },
        "foreign_cores_max": max(r["machine_load"]["foreign_cores"] for r in records),
    }


def _median_dicts(items: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([d[k] for d in items]) for k in items[0]} if items else {}


def memory_bench(out: Path, log: Console) -> dict[str, Any]:
    """Peak RSS of `submit` (tiny model, small synthetic images) on 200 and on 2,000 images."""
    base = out / "memory"
    shutil.rmtree(base, ignore_errors=True)
    model = make_tiny_model(base / "tiny.onnx")
    src_all = make_synthetic(base / "src", n=max(MEMORY_SIZES), height=96, width=64, seed=3)
    result: dict[str, Any] = {"model": "tiny (benchmarks/tiny.py)", "image_size": "64x96"}
    for n in MEMORY_SIZES:
        src = base / f"src-{n}"
        for sub in ("image", "matte"):
            (src / sub).mkdir(parents=True)
            for p in sorted((src_all / sub).iterdir())[:n]:
                os.link(p, src / sub / p.name)
        ingest(src, base / f"ds-{n}")
        log.print(f"  memory: submit on {n} images", highlight=False)
        result[str(n)] = peak_submit_memory(
            [
                "--dataset",
                str(base / f"ds-{n}"),
                "--model",
                str(model),
                "--out",
                str(base / f"run-{n}"),
            ],
            base / f"submit-{n}.log",
        )
    small, large = (result[str(n)]["peak_rss_bytes"] for n in MEMORY_SIZES)
    result["ratio"] = large / small
    shutil.rmtree(base / "src", ignore_errors=True)
    return result


def acceptance(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets next to what was measured (ratios: median over rounds)."""
    rows: list[dict[str, Any]] = []
    for name, res in doc["models"].items():
        s = res["summary"]
        default = f"{s['default_layout']}/default"
        for pair, r in s["speedup_vs_naive_derived"].items():
            rows.append(_target(f"{name}: e2e {pair} / naive", r, ">=", 1.5))
        goals = {"default": 0.80, "exact": 0.80, "prepared": 0.95}
        for pair, r in s["pipeline_efficiency_derived"].items():
            rows.append(_target(f"{name}: efficiency {pair}", r, ">=", goals[pair.split("/")[1]]))
        for pair, r in s.get("steady_efficiency_derived", {}).items():
            goal = goals[pair.split("/")[1]]
            rows.append(_target(f"{name}: (info) steady-part efficiency {pair}", r, ">=", goal))
        ref = doc.get("reference")
        metrics = s["metrics"]
        if ref and default in metrics and res.get("model", {}).get("reference_model"):
            # the reference numbers are the fetched fp32 model's
            worst = max(abs(metrics[default][x] - ref[x]) for x in ("mse", "mad"))
            rows.append(_target(f"{name}: default |MSE/MAD - reference|", worst, "<=", 1e-4))
        for pair, m in metrics.items():
            lay, inp = pair.split("/")
            # the exactly decoded run of this layout (int8: "default" decodes exactly)
            base = "exact" if f"{lay}/exact" in metrics else "default"
            exact = metrics.get(f"{lay}/{base}")
            if exact and inp != base:
                worst = max(abs(m[x] - exact[x]) for x in ("mse", "mad"))
                goal = 0.0 if inp == "prepared" else 1e-4
                rows.append(_target(f"{name}: {pair} |MSE/MAD - {base}|", worst, "<=", goal))
        rows.append(_target(f"{name}: Ray start-up s (max)", s["ray_startup_max_s"], "<=", 15.0))
    mem = doc.get("memory")
    if mem:
        rows.append(_target("peak RSS 2000 / 200 images", mem["ratio"], "<=", 1.2))
    return rows


def _target(what: str, value: Any, op: str, goal: float) -> dict[str, Any]:
    clean = None
    if isinstance(value, dict):
        clean = value.get("clean_median")
        value = value["median"]
    ok = value is not None and (value >= goal if op == ">=" else value <= goal)
    return {
        "what": what,
        "value": value,
        "clean_value": clean,
        "target": f"{op} {goal:g}",
        "met": ok,
    }


def print_standard(doc: dict[str, Any], console: Console) -> None:
    for name, res in doc["models"].items():
        table = Table(title=f"{name}: images/s (medians of {doc['rounds']} rounds)")
        table.add_column("measurement")
        table.add_column("img/s", justify="right")
        s = res["summary"]
        for key, value in s["images_per_s"].items():
            table.add_row(key, f"{value:.2f}")
        console.print(table)
    table = Table(title="acceptance (derived ratios: median of rounds; clean: no foreign load)")
    for col in ("target", "measured", "clean rounds", "goal", "met"):
        table.add_column(col)
    for row in doc["acceptance"]:
        v, c = row["value"], row["clean_value"]
        table.add_row(
            row["what"],
            "-" if v is None else f"{v:.4g}",
            "-" if c is None else f"{c:.4g}",
            row["target"],
            "yes" if row["met"] else "NO",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.standard", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="s per model-only run")
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[1, 4],
        help="the first is used end to end; the others model-only, for information",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(VARIANTS),
        help="fp32 = the reference model; fp16/int8 when built (else skipped); or .onnx paths",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--keep-data", action="store_true", help="keep the ingested datasets")
    args = parser.parse_args(argv)
    console = Console()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "schema": 1,
        **stamp(),
        "protocol": PROTOCOL,
        "rounds": args.rounds,
        "models": {},
        "skipped_models": {},
    }
    console.print("ingesting the benchmark data", highlight=False)
    doc["data"] = prepare_data(out / "data", console)
    doc["reference"] = _reference(os.environ.get("MODNET_SHARED_DIR"))
    for spec in args.models:
        name = Path(spec).stem if spec.endswith(".onnx") else spec
        try:
            path = resolve_model(None if spec == "fp32" else spec)
            if not path.is_file():
                raise ModnetBatchError(f"model {path} does not exist")
        except ModnetBatchError as exc:  # a variant not built: say so, measure the others
            doc["skipped_models"][name] = str(exc)
            console.print(f"skipping {name}: {exc}", highlight=False)
            continue
        console.print(f"model {name}: {path}", highlight=False)
        info = variant_info(path)
        res = bench_model(str(path), info["precision"], doc["data"], args, out, console)
        res["model"] = {"path": str(path), "reference_model": spec == "fp32", **info}
        res["model"].pop("build", None)
        doc["models"][name] = res
    if not args.no_memory:
        console.print("peak memory of submit", highlight=False)
        doc["memory"] = memory_bench(out, console)
    doc["acceptance"] = acceptance(doc)
    doc["load_average_after"] = load_average()
    doc["seconds"] = time.perf_counter() - started
    if not args.keep_data:  # re-ingested on every run; only the JSON is worth keeping
        for sub in ("runs", "data", "memory"):
            shutil.rmtree(out / sub, ignore_errors=True)
    write_results(out / "standard.json", doc)
    print_standard(doc, console)
    console.print(f"wrote {out / 'standard.json'}", highlight=False)


if __name__ == "__main__":
    main()
