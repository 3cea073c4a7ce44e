"""The package's metrics held to the Deep Image Matting MATLAB evaluation code's own figures.

`reference/dim-matlab/` (under MODNET_SHARED_DIR) holds 41 prediction / ground-truth pairs
(uint8 PNGs) and `values.csv`: SAD, MSE, Grad and Conn as the DIM MATLAB code computes them
under GNU Octave, over the whole image, / 1000 (its README tells how they were made).

Tolerances: SAD, MSE, Grad and Conn to 1e-6 relative. The reference computes Conn in single
precision and this package in double; on these pairs that leaves at most ~5e-7 (mean ~2e-7).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from modnet_batch.metrics.matting import connectivity_error, gradient_error, mse, sad

REL = 1e-6
METRICS = {"sad": sad, "mse": mse, "grad": gradient_error, "conn": connectivity_error}


@pytest.fixture(scope="module")
def dim_dir(shared: Path) -> Path:
    root = shared / "reference" / "dim-matlab"
    if not (root / "values.csv").is_file():
        pytest.skip(f"{root}/values.csv is missing: the shared data has no DIM reference figures")
    return root


@pytest.fixture(scope="module")
def rows(dim_dir: Path) -> list[dict[str, str]]:
    with (dim_dir / "values.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _alpha(path: Path) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert im is not None and im.dtype == np.uint8 and im.ndim == 2, path
    return im.astype(np.float64) / 255.0


def test_reference_holds_all_pairs(rows: list[dict[str, str]]) -> None:
    assert len(rows) == 41
    assert set(rows[0]) == {"image_id", *METRICS}


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_matches_dim_matlab_code(
    name: str, dim_dir: Path, rows: list[dict[str, str]]
) -> None:
    fn = METRICS[name]
    off = []
    for row in rows:
        pred = _alpha(dim_dir / f"{row['image_id']}.pred.png")
        gt = _alpha(dim_dir / f"{row['image_id']}.gt.png")
        want = float(row[name])
        got = fn(pred, gt)
        off.append((abs(got - want) / abs(want), row["image_id"], got, want))
    worst = max(off)
    assert worst[0] <= REL, f"{name}: {worst[1]} gives {worst[2]!r}, the DIM code {worst[3]!r}"
