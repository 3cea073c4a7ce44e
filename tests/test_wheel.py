"""The first five minutes from a wheel, as a new user has them.

Builds the wheel, installs it with `[cpu]` into a fresh virtual environment outside the checkout
(dependencies from the package index; pip may reuse its local cache), and from a folder that is
not the checkout runs `modnet-batch --version`, `model fetch`, `matte` on a few synthetic photos
and `ingest` + `submit` + `report --html` on a tiny dataset. Each step's time is printed (`-s`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - start
    shown = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))
    print(f"[wheel] {took:6.1f} s  {shown[:120]}", flush=True)
    assert proc.returncode == 0, (
        f"{shown} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _build_wheel(dist: Path, env: dict[str, str]) -> Path:
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        cwd=dist,
        env=env,
    )
    (wheel,) = dist.glob("modnet_batch-*.whl")
    return wheel


def test_wheel_first_five_minutes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["MODNET_BATCH_CACHE"] = str(tmp_path / "cache")
    env["COLUMNS"] = "200"
    start = time.monotonic()
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = _build_wheel(dist, env)

    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    py = home / "bin" / "python"
    cli = str(home / "bin" / "modnet-batch")
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[cpu]"], cwd=tmp_path, env=env)

    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    version = _run([cli, "--version"], cwd=work, env=env)
    assert "0." in version or "1." in version
    model = _run([cli, "model", "fetch"], cwd=work, env=env).strip().splitlines()[-1]
    assert Path(model).is_file() and model.endswith(".onnx")

    # the installed package, not the checkout, makes the photos
    _run(
        [
            str(py),
            "-c",
            "import modnet_batch, pathlib, shutil; "
            "from modnet_batch.data.synthetic import make_synthetic; "
            f"assert not pathlib.Path(modnet_batch.__file__).is_relative_to({str(ROOT)!r}); "
            "make_synthetic(pathlib.Path('PPM-100'), n=4, height=320, width=256); "
            "shutil.copytree('PPM-100/image', 'photos')",
        ],
        cwd=work,
        env=env,
    )
    _run([cli, "matte", "photos", "mattes"], cwd=work, env=env)
    assert len(list((work / "mattes").rglob("*.png"))) == 4

    _run([cli, "ingest", "PPM-100", "data/tiny"], cwd=work, env=env)
    _run([cli, "submit", "--dataset", "data/tiny", "--out", "runs/tiny"], cwd=work, env=env)
    _run([cli, "report", "runs/tiny", "--html", "tiny.html"], cwd=work, env=env)
    page = (work / "tiny.html").read_text()
    assert "<html" in page.lower() and len(page) > 10_000
    print(f"[wheel] {time.monotonic() - start:6.1f} s  in all", flush=True)
