"""`modnet-batch bench`: the JSON document's fields, the stage breakdown, statistics, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modnet_batch.bench.environment import LoadMonitor
from modnet_batch.bench.run import run_bench
from modnet_batch.bench.stats import latency_summary, stability, window_rates
from modnet_batch.cli import app
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.stages import LOOP_STAGES, POOL_STAGES
from modnet_batch.options.bench import BenchConfig


@pytest.fixture(scope="module")
def doc(
    synth_dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A short bench of everything: 1 and 2 CPU workers, batches 1 and 2, inline e2e, naive."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cfg = BenchConfig(
        mode="both",
        model=str(tiny_model),
        dataset=str(synth_dataset),
        workers=(1, 2),
        threads=1,
        batch_sizes=(1, 2),
        iterations=6,
        warmup=1,
        backend="inline",
        naive=True,
        out=str(out),
    )
    result = run_bench(cfg)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_model_only_has_totals_per_device_latency_warmup_and_stability(
    doc: dict[str, Any],
) -> None:
    runs = doc["model_only"]
    assert [(r["batch_size"], r["devices"]) for r in runs] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in runs:
        assert r["images"] == 6 * r["batch_size"] * r["devices"]
        assert r["images_per_s"] > 0 and r["threads_total"] == r["devices"]
        assert len(r["per_device"]) == r["devices"]
        assert all(d["images_per_s"] > 0 for d in r["per_device"].values())
        assert {"p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms"} <= set(r["latency"])
        assert set(r["warmup"]["session_seconds"]) == set(r["per_device"])
        assert all(v > 0 for v in r["warmup"]["first_result_s"].values())
        assert isinstance(r["stability"]["stable"], bool) and r["stability"]["margin"] > 0
        assert {"busy_cores", "own_cores", "foreign_cores"} <= set(r["machine_load"])
    derived = doc["summary"]["derived"]
    assert set(derived["scaling_efficiency"]) == {"b1/d2", "b2/d2"}
    assert set(derived["pipeline_efficiency"]) == {"b1", "b2"}
    assert set(derived["speedup_vs_naive"]) == {"b1", "b2"}


def test_end_to_end_has_the_job_view_and_a_breakdown_that_adds_up(doc: dict[str, Any]) -> None:
    for r in doc["end_to_end"]:
        assert r["images"] == 12 and r["failed"] == 0 and r["images_per_s"] > 0
        assert r["devices"] == 2 and r["job"]["backend"] == "inline"
        assert r["startup_s"] >= 0 and r["time_to_first_result_s"] is not None
        assert set(r["per_device"]) == {"inline:cpu0", "inline:cpu1"}
        stages = r["stages_wall_s"]
        assert set(stages) == {*LOOP_STAGES, "outside_shard_loops"}
        assert set(r["pool_cpu_s"]) == set(POOL_STAGES)
        assert sum(stages.values()) == pytest.approx(r["processing_s"], rel=1e-9)
        # the shard loops' own clocks never claim more than the job's wall time
        assert stages["outside_shard_loops"] >= -0.03 * r["processing_s"]
        assert stages["infer"] > 0 and r["pool_cpu_s"]["score"] > 0
        assert isinstance(r["stability"]["stable"], bool)
        assert r["steady_images_per_s"] is None or r["steady_images_per_s"] > 0
        assert r["metrics"]["mse"] is not None


def test_naive_peer_and_environment(doc: dict[str, Any]) -> None:
    (naive,) = doc["naive"]
    assert naive["images"] == 12 and naive["images_per_s"] > 0
    assert set(naive["stages_s"]) >= {"decode", "preprocess", "infer", "score", "write"}
    # the same images and model: the same metrics as the pipeline
    assert naive["metrics"]["mse"] == pytest.approx(doc["end_to_end"][0]["metrics"]["mse"])
    env = doc["environment"]
    assert env["packages"]["onnxruntime"] and "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["cpu"]["usable_cores"] >= 1 and "load_average" in env
    assert doc["config"]["workers"] == [1, 2] and doc["model"]["sha256"]


def test_latency_percentiles_and_windows() -> None:
    lat = latency_summary([0.001 * k for k in range(1, 101)])
    assert lat["n"] == 100 and lat["p50_ms"] == pytest.approx(50.5)
    assert lat["p99_ms"] == pytest.approx(99.01) and lat["mean_ms"] == pytest.approx(50.5)
    assert latency_summary([]) == {"n": 0}
    events = [(0.5, 2), (1.5, 2), (2.5, 2), (3.5, 2), (4.0, 4)]
    assert window_rates(events, 0.0, 4.0, windows=4) == [2.0, 2.0, 2.0, 6.0]


@pytest.mark.parametrize(
    ("rates", "stable"),
    [([1.0, 5.0, 10.0, 10.2, 9.9], True), ([10.0, 10.0, 10.0, 10.0, 8.0], False), ([3.0], False)],
)
def test_stability_verdict_on_the_last_windows(rates: list[float], stable: bool) -> None:
    verdict = stability(rates, last=3, margin=0.05)
    assert verdict["stable"] is stable and verdict["margin"] == 0.05


def test_bad_options_are_refused(tiny_model: Path) -> None:
    with pytest.raises(ModnetBatchError, match="needs --dataset"):
        run_bench(BenchConfig(mode="e2e", model=str(tiny_model)))
    with pytest.raises(ModnetBatchError, match="batch_sizes"):
        run_bench(BenchConfig(mode="model", model=str(tiny_model), batch_sizes=(0,)))


def test_load_monitor_reports_cores() -> None:
    with LoadMonitor(interval=0.01) as load:
        # 0.2 s of CPU, well above the 10 ms clock tick that process CPU times are counted in
        # (200,000 squares took ~10 ms and sometimes counted as 0)
        start = time.thread_time()
        while time.thread_time() - start < 0.2:
            sum(i * i for i in range(10_000))
    assert load.result["own_cores"] > 0 and load.result["foreign_cores"] >= 0


def test_cli_bench_model_only(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--mode",
            "model",
            "--model",
            str(tiny_model),
            "--batch-size",
            "2",
            "--iterations",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["model_only"][0]["batch_size"] == 2 and doc["end_to_end"] == []


@pytest.mark.slow
@pytest.mark.ray
def test_bench_end_to_end_on_ray_per_device(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A real embedded-Ray submit with two CPU workers: per-device figures and a breakdown."""
    doc = run_bench(
        BenchConfig(
            mode="e2e",
            model=str(tiny_model),
            dataset=str(synth_dataset),
            workers=(2,),
            threads=1,
            batch_sizes=(2,),
            out=str(tmp_path / "b.json"),
        )
    )
    (run,) = doc["end_to_end"]
    assert run["images"] == 12 and run["devices"] == 2 and len(run["per_device"]) == 2
    assert sum(d["images"] for d in run["per_device"].values()) == 12
    assert run["startup_s"] > 0 and run["teardown_s"] >= 0
    assert sum(run["stages_wall_s"].values()) == pytest.approx(run["processing_s"], rel=1e-9)
    assert run["machine_load"]["own_by_role_cores"]["ray_workers"] > 0


def _rec(kind: str, rnd: int, ips: float, foreign: float = 0.0, **keys: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": kind, "round": rnd, "images_per_s": ips, **keys}
    rec["machine_load"] = {"foreign_cores": foreign}
    if kind == "end_to_end":
        rec.update(
            startup_s=5.0,
            processing_s=10.0,
            time_to_first_result_s=0.5,
            stages_wall_s={"infer": 9.0, "other": 1.0},
            pool_cpu_s={"score": 0.5},
            metrics={"mse": 0.01, "mad": 0.02, "miou": 0.9},
        )
    return rec


def test_standard_summary_pairs_each_run_with_its_neighbours() -> None:
    from benchmarks.standard import acceptance, summarize_model

    records = []
    # per round: model-only before, e2e, naive, model-only after (M E M): the e2e is compared
    # with the mean of its two model-only neighbours
    for rnd, (before, after, e2e, naive, foreign) in enumerate(
        [(8.0, 8.0, 6.0, 3.0, 0.0), (3.0, 5.0, 4.0, 2.0, 1.0)]
    ):
        records += [
            _rec(
                "model_only", rnd, before, foreign, layout="2x1", batch_size=1, pair="2x1/default"
            ),
            _rec(
                "end_to_end", rnd, e2e, foreign, layout="2x1", inputs="default", pair="2x1/default"
            ),
            _rec("naive", rnd, naive, foreign, layout="1x2", pair="2x1/default"),
            _rec(
                "model_only",
                rnd,
                after,
                0.0,
                layout="2x1",
                batch_size=1,
                pair="",
                after="2x1/default",
            ),
        ]
        records[-3]["steady_images_per_s"] = e2e * 1.1
    summary = summarize_model(records)
    eff = summary["pipeline_efficiency_derived"]["2x1/default"]
    assert eff["per_round"] == [0.75, 1.0] and eff["median"] == pytest.approx(0.875)
    assert eff["clean_median"] == 0.75 and eff["clean_rounds"] == 1  # round 2 had a neighbour
    steady = summary["steady_efficiency_derived"]["2x1/default"]
    assert steady["per_round"] == pytest.approx([0.825, 1.1])
    assert summary["speedup_vs_naive_derived"]["2x1/default"]["per_round"] == [2.0, 2.0]
    assert summary["images_per_s"]["naive"] == pytest.approx(2.5)
    summary["default_layout"] = "2x1"
    rows = acceptance({"models": {"fp32": {"summary": summary}}, "reference": None})
    met = {r["what"]: r["met"] for r in rows}
    assert met["fp32: e2e 2x1/default / naive"] is True
    assert met["fp32: efficiency 2x1/default"] is True  # 0.875 >= 0.80
    assert met["fp32: Ray start-up s (max)"] is True


def test_steady_rate_leaves_out_start_and_tail() -> None:
    from modnet_batch.bench.stats import steady_rate

    # 20 results: a slow start (first at 2 s), then one every 0.1 s, then a straggler at 10 s
    finishes = [2.0] + [2.0 + 0.1 * i for i in range(1, 19)] + [10.0]
    assert steady_rate(finishes) == pytest.approx(10.0)  # results 2..17: 15 in 1.5 s
    assert steady_rate(finishes, trim=0.0) == pytest.approx(19 / 8.0)
    assert steady_rate([1.0, 2.0]) is None


def test_profile_summary_groups_samples_by_stage() -> None:
    from benchmarks.profile import OTHER, summarize

    raw = "\n".join(
        [
            "thread (1);run_job (driver.py:1);UnitProcessor.process (p.py:2);"
            "Session.run (modnet_batch/model/session.py:9) 60",
            "thread (2);_worker (x);UnitProcessor._prepare (p.py:3);"
            "decode_image (modnet_batch/data/decode.py:5) 25",
            "thread (2);UnitProcessor._finish (p.py:4);image_metrics (m.py:1);"
            "connectivity_error (modnet_batch/metrics/matting.py:9) 10",
            "thread (1);<module> (x.py:1);_find_and_load (<frozen>:1) 4",
            "thread (1);finalize (driver.py:9) 1",
            "",
        ]
    )
    doc = summarize(raw)
    assert doc["samples"] == 100
    shares = {k: v["share"] for k, v in doc["stages"].items()}
    assert shares == {
        "infer": 0.6,
        "decode": 0.25,
        "score: conn": 0.1,
        "start-up: imports": 0.04,
        OTHER: 0.01,
    }


def test_standard_set_skips_exact_where_auto_is_exact() -> None:
    from benchmarks.standard import inputs_for

    assert [i.name for i in inputs_for("fp32")] == ["default", "exact", "prepared"]
    assert [i.name for i in inputs_for("int8")] == ["default", "prepared"]
