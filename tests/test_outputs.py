"""Per-image outputs: alpha PNG (8/16-bit), npz, RGBA cutout, composite, none; at the source
size or the scoring size. The metrics never depend on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from modnet_batch.data.dataset import Dataset, iter_records
from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job
from modnet_batch.pipeline import ImagePipeline


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> Any:
    return load_job(
        None,
        {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline", **kw},
    )


@pytest.fixture(scope="module")
def expected(synth_dataset: Path, tiny_model: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per image, computed here independently of the job: the photo and the source-size alpha
    (the network output resized back with INTER_AREA, as MODNet's inference_onnx.py)."""
    pipe = ImagePipeline("seed-area")
    session = open_session(EngineSpec(model=str(tiny_model)))
    ds = Dataset.open(synth_dataset)
    out: dict[str, dict[str, np.ndarray]] = {}
    for shard in ds.shards:
        for rec in iter_records(ds.shard_path(shard)):
            decoded = pipe.decode(rec)
            y = session.run(pipe.preprocess(decoded).tensor[None])[0, 0]
            full = cv2.resize(y, (rec.width, rec.height), interpolation=cv2.INTER_AREA)
            out[rec.image_id] = {"rgb": decoded.rgb, "alpha": full, "network": y}
    return out


@pytest.fixture(scope="module")
def default_run(synth_dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("default") / "run"
    run_job(_job(synth_dataset, out, tiny_model))
    return out


@pytest.mark.parametrize(
    ("output", "size"),
    [
        ("alpha-png", "source"),
        ("alpha-png16", "source"),
        ("cutout", "source"),
        ("composite", "scored"),
        ("alpha-png,cutout,composite,npz", "scored"),
        ("none", None),
    ],
)
def test_metrics_do_not_depend_on_the_outputs(
    synth_dataset: Path,
    tiny_model: Path,
    tmp_path: Path,
    default_run: Path,
    output: str,
    size: str | None,
) -> None:
    kw: dict[str, object] = {"output": output}
    if size:
        kw["output_size"] = size
    run_job(_job(synth_dataset, tmp_path / "run", tiny_model, **kw))
    got = pq.read_table(tmp_path / "run" / "metrics.parquet")
    assert got.equals(pq.read_table(default_run / "metrics.parquet"))
    if output == "none":
        assert not list((tmp_path / "run" / "alpha").iterdir())
        assert not (tmp_path / "run" / "outputs").exists()


def test_source_size_alpha_png_is_the_output_resized_back(
    synth_dataset: Path,
    tiny_model: Path,
    tmp_path: Path,
    expected: dict[str, dict[str, np.ndarray]],
) -> None:
    run_job(_job(synth_dataset, tmp_path / "run", tiny_model, output="alpha-png,alpha-png16"))
    for image_id, want in expected.items():
        a8 = cv2.imread(str(tmp_path / "run" / "outputs" / "alpha-png" / f"{image_id}.png"), -1)
        a16 = cv2.imread(str(tmp_path / "run" / "outputs" / "alpha-png16" / f"{image_id}.png"), -1)
        assert a8.dtype == np.uint8 and a8.shape == want["rgb"].shape[:2]  # the photo's size
        assert a16.dtype == np.uint16 and a16.shape == a8.shape
        np.testing.assert_array_equal(a8, np.clip(np.rint(want["alpha"] * 255), 0, 255))
        np.testing.assert_array_equal(a16, np.clip(np.rint(want["alpha"] * 65535), 0, 65535))
    assert not list((tmp_path / "run" / "alpha").iterdir())  # npz only when asked


def test_cutout_alpha_is_the_matte_and_its_colours_the_photo(
    synth_dataset: Path,
    tiny_model: Path,
    tmp_path: Path,
    expected: dict[str, dict[str, np.ndarray]],
) -> None:
    run_job(_job(synth_dataset, tmp_path / "run", tiny_model, output="cutout,alpha-png"))
    for image_id, want in expected.items():
        bgra = cv2.imread(str(tmp_path / "run" / "outputs" / "cutout" / f"{image_id}.png"), -1)
        alpha = cv2.imread(str(tmp_path / "run" / "outputs" / "alpha-png" / f"{image_id}.png"), -1)
        assert bgra.shape == (*want["rgb"].shape[:2], 4)
        np.testing.assert_array_equal(bgra[..., 3], alpha)
        np.testing.assert_array_equal(bgra[..., 2::-1], want["rgb"])


def test_composite_is_the_foreground_over_the_colour(
    synth_dataset: Path,
    tiny_model: Path,
    tmp_path: Path,
    expected: dict[str, dict[str, np.ndarray]],
) -> None:
    run_job(
        _job(synth_dataset, tmp_path / "run", tiny_model, output="composite", background="#00ff00")
    )
    for image_id, want in expected.items():
        bgr = cv2.imread(str(tmp_path / "run" / "outputs" / f"{image_id}.jpg"))
        a = want["alpha"][..., None].astype(np.float64)
        ideal = want["rgb"] * a + np.array([0, 255, 0]) * (1 - a)
        # JPEG at quality 95: a few levels off, never a wrong picture
        assert np.abs(bgr[..., ::-1].astype(np.float64) - ideal).mean() < 3.0


def test_a_dataset_without_ground_truth_gets_source_size_alpha_pngs(
    tiny_model: Path, tmp_path: Path
) -> None:
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    src = make_synthetic(tmp_path / "src", n=3, height=100, width=140, seed=4)
    for matte in (src / "matte").iterdir():
        matte.unlink()
    (src / "matte").rmdir()
    ingest(src / "image", tmp_path / "ds")
    outcome = run_job(_job(tmp_path / "ds", tmp_path / "run", tiny_model))
    pngs = sorted((tmp_path / "run" / "outputs").glob("*.png"))
    assert len(pngs) == 3 and outcome.summary.images.unscored == 3
    assert all(cv2.imread(str(p), -1).shape == (100, 140) for p in pngs)
    assert not list((tmp_path / "run" / "alpha").iterdir())


def test_a_resume_with_other_outputs_is_refused(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run_job(_job(synth_dataset, tmp_path / "run", tiny_model, output="alpha-png"))
    with pytest.raises(ModnetBatchError, match="differs in outputs"):
        run_job(_job(synth_dataset, tmp_path / "run", tiny_model, output="cutout"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("output", "jpeg", "output 'jpeg' is unknown"),
        ("output", "none,cutout", "`none` cannot be combined"),
        ("output_size", "huge", "expected one of source, scored"),
        ("background", "teal-ish", "is not a colour"),
        ("png_level", "12", "expected an integer from 0 to 9"),
    ],
)
def test_bad_output_options_are_one_line(
    key: str, value: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ModnetBatchError, match=message):
        load_job(None, {"dataset": "d", "out": "o", key: value}, cli=True)
