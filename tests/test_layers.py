"""The layering contract (pyproject.toml [tool.importlinter]) holds, and breaks when a forbidden
import is added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def _lint(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "modnet_batch", tmp_path / "modnet_batch")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "modnet_batch"


def test_the_package_keeps_every_contract(tmp_path: Path) -> None:
    _copy(tmp_path)
    result = _lint(tmp_path, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("metrics/matting.py", "import onnxruntime", "numeric core"),
        ("data/dataset.py", "import modnet_batch.execution.driver", "layers"),
        ("reporting/table.py", "import modnet_batch.execution.driver", "reporting reads runs"),
        ("results/rundir.py", "import modnet_batch.pipeline", "layers"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    package = _copy(tmp_path)
    path = package / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    result = _lint(tmp_path, tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and module.replace("/", ".").removesuffix(".py") in broken
