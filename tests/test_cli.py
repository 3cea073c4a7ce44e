"""The command line: exit codes and the one line that matters, through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnet_batch.cli import app

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "model",
        "ingest",
        "build",
        "submit",
        "status",
        "logs",
        "stop",
        "bench",
        "report",
    ):
        assert command in result.output


def test_model_fetch_prints_cached_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modnet_batch.model import fetch

    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    cached = fetch.reference_model_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")  # present: no download, no re-hash of a file we already verified
    result = runner.invoke(app, ["model", "fetch"])
    assert result.exit_code == 0 and result.output.strip() == str(cached)


def test_ingest_then_submit_inline(tiny_model: Path, tmp_path: Path) -> None:
    from modnet_batch.data.synthetic import make_synthetic

    src = make_synthetic(tmp_path / "src", n=4, height=96, width=64)
    result = runner.invoke(app, ["ingest", str(src), str(tmp_path / "ds"), "--shard-size", "2"])
    assert result.exit_code == 0, result.output
    assert "4 images (4 with matte) in 2 shard(s)" in result.output
    result = runner.invoke(
        app,
        [
            "submit",
            "--dataset",
            str(tmp_path / "ds"),
            "--out",
            str(tmp_path / "run"),
            "--model",
            str(tiny_model),
            "--backend",
            "inline",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 work unit(s) processed" in result.output  # a row group per image: 4 units
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"]["scored"] == 4
    page = tmp_path / "report.html"
    args = ["report", str(tmp_path / "run"), "--worst", "2", "--html", str(page), "--panels", "1"]
    report = runner.invoke(app, args)
    assert report.exit_code == 0, report.output
    assert "worst 2 by mse" in report.output and f"wrote {page}" in report.output
    assert page.read_text().count("<h3 class='image'") == 2  # the worst and the best


def test_worst_images_are_ranked(tmp_path: Path) -> None:
    from modnet_batch.metrics import ImageMetrics, ImageRow
    from modnet_batch.reporting.html import worst_images
    from modnet_batch.results import RunDir

    rows = [
        ImageRow(i, 4, 4, None if m is None else ImageMetrics(m, m, m, m, m, 1, 0, 0, 1))
        for i, m in (("a", 0.1), ("b", None), ("c", 0.3), ("d", 0.2))
    ]
    RunDir(tmp_path).write_rows(rows)
    assert [r.image_id for r in worst_images(tmp_path, "mse", 2)] == ["c", "d"]


def test_errors_are_one_line_with_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["submit", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "ingest" in result.output
    result = runner.invoke(app, ["status", "raysubmit_x"], env={"RAY_ADDRESS": ""})
    assert result.exit_code == 1 and "--address" in result.output
    result = runner.invoke(app, ["submit", "--dataset", "d", "--out", "r", "--protocol", "nope"])
    assert result.exit_code == 1 and "seed-area" in result.output


def test_the_cluster_entrypoint_runs_a_job_file_as_submit_does(
    tiny_model: Path, synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m modnet_batch.entrypoint job.yaml` (what a cluster runs) shares submit's
    run_and_report: the same closing lines, the job's exit status, one line per error."""
    from modnet_batch.entrypoint import main

    job = tmp_path / "job.yaml"
    job.write_text(
        f"dataset: {synth_dataset}\nout: {tmp_path / 'run'}\nmodel: {tiny_model}\nbackend: inline\n"
    )
    assert main([str(job)]) == 0
    assert "3 work unit(s) processed" in capsys.readouterr().out
    assert main([str(tmp_path / "none.yaml")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "none.yaml" in lines[0]
    assert main([]) == 2


def test_pyarrow_does_not_import_pandas_at_start_up() -> None:
    """Where pandas is installed, pyarrow imports it at its first conversion (0.3-0.4 s); the
    command line spares that, and pandas still works when asked for."""
    pytest.importorskip("pandas")
    convert = (
        "import pyarrow as pa; t = pa.Table.from_pylist([{'a': 1}]); "
        "seen = 'pandas' in sys.modules; print(seen, type(t.to_pandas()).__name__); "
        # from then on pyarrow converts pandas objects as pandas objects: nulls, index
        "import pandas as pd; s = pd.Series([1.0, None], index=[10, 20]); "
        "print(pa.array(s).null_count, pa.Table.from_pandas(pd.DataFrame({'s': s})).num_rows)"
    )
    command = (  # what `modnet-batch --version` runs before it prints and exits
        "from modnet_batch.cli import main; sys.argv = ['modnet-batch', '--version']\n"
        "try: main()\nexcept SystemExit: pass\n"
    )

    def run(code: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import sys\n{code}"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()

    assert run(convert) == ["True DataFrame", "1 2"]  # what pyarrow does on its own
    assert run(command + convert)[-2:] == ["False DataFrame", "1 2"]
