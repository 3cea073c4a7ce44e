"""The cluster definitions shipped in cluster/: what deleting them deletes, and what the guide
lists. Parsed, not deployed (no cluster here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from modnet_batch import __version__
from modnet_batch.cli import app

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def _kinds(path: Path) -> list[str]:
    return [d.get("kind", "") for d in yaml.safe_load_all(path.read_text()) if d]


def test_deleting_a_cluster_or_a_job_keeps_the_shared_data() -> None:
    for manifest in ("raycluster.yaml", "rayjob.yaml"):
        text = (CLUSTER / "kuberay" / manifest).read_text()
        assert "PersistentVolumeClaim" not in _kinds(CLUSTER / "kuberay" / manifest), manifest
        assert "claimName: modnet-data" in text  # it mounts the claim defined apart
    assert _kinds(CLUSTER / "kuberay" / "data-volume.yaml") == ["PersistentVolumeClaim"]


def test_the_cluster_guide_lists_only_files_that_exist() -> None:
    listed = re.findall(r"^\| `([^`]+)` \|", (CLUSTER / "README.md").read_text(), re.M)
    assert listed and all((CLUSTER / name).is_file() for name in listed), listed


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"modnet-batch {__version__}"
