"""The real images the device benchmark measures: paired as `ingest` pairs them, preprocessed as
its protocol does, scored as a job scores them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.accelerator.config import PROTOCOL, Config
from modnet_batch.data.sources import pair_source
from modnet_batch.engine import Session
from modnet_batch.metrics import DATASET, ImageMetrics, MetricAccumulator
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.protocol import get_protocol


@dataclass(frozen=True)
class RealImages:
    ids: list[str]
    inputs: npt.NDArray[np.float32]  # N x 3 x 288 x 480, the protocol's network inputs
    gts: list[npt.NDArray[np.float64] | None]  # at the scoring size
    heights: list[int]
    widths: list[int]


def image_pairs(src: Path, limit: int) -> list[tuple[Path, Path | None]]:
    """The first `limit` (image, matte or None) of `src`, paired as `ingest` pairs them."""
    items = pair_source(src).items[:limit]
    return [(src / i.image, src / i.matte if i.matte else None) for i in items]


def load_real_images(src: Path, limit: int) -> RealImages:
    """The first `limit` photos of `src` (PPM layout or a folder) as the protocol sees them."""
    from modnet_batch.data.decode import decode_image, decode_matte

    protocol = get_protocol(PROTOCOL)
    ids, inputs, gts, hs, ws = [], [], [], [], []
    for image, matte in image_pairs(src, limit):
        rgb = decode_image(image.read_bytes(), name=image.name)
        ids.append(image.stem)
        inputs.append(protocol.preprocess(rgb))
        hs.append(rgb.shape[0])
        ws.append(rgb.shape[1])
        gt = None
        if matte is not None:
            gt = protocol.ground_truth(decode_matte(matte.read_bytes(), name=matte.name))
        gts.append(gt)
    return RealImages(ids, np.stack(inputs), gts, hs, ws)


def infer_all(session: Session, x: npt.NDArray[np.float32], batch: int) -> npt.NDArray[np.float32]:
    outs = [session.run(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def dataset_metrics(
    outputs: npt.NDArray[np.float32], real: RealImages
) -> dict[str, float | int | None] | None:
    """Dataset-level metrics of network outputs [N,1,h,w] under the bench's protocol."""
    if any(gt is None for gt in real.gts):
        return None
    pipeline = ImagePipeline(PROTOCOL)
    acc = MetricAccumulator()
    protocol = pipeline.protocol
    for out, gt, h, w in zip(outputs, real.gts, real.heights, real.widths, strict=True):
        assert gt is not None
        alpha = protocol.postprocess(out[0], h, w)
        m: ImageMetrics = pipeline.score(alpha, gt)
        acc.update(m)
    return acc.summary()


def metric_deltas(
    metrics: dict[str, Any] | None, reference: dict[str, Any] | None
) -> dict[str, float] | None:
    if metrics is None or reference is None:
        return None
    return {k: float(metrics[k]) - float(reference[k]) for k in DATASET if k in metrics}


def replicated_source(cfg: Config, dest: Path, n: int, mattes: bool = True) -> Path:
    """A PPM-layout folder of `n` images: the real ones repeated under new ids (links); without
    `mattes`, the photos alone (a matting job)."""
    pairs = image_pairs(Path(cfg.src), cfg.images)
    (dest / "image").mkdir(parents=True)
    if mattes and all(m is not None for _, m in pairs):
        (dest / "matte").mkdir()
    for i in range(n):
        image, matte = pairs[i % len(pairs)]
        name = f"{image.stem}-{i:05d}"
        os.symlink(image.resolve(), dest / "image" / f"{name}{image.suffix.lower()}")
        if matte is not None and (dest / "matte").is_dir():
            os.symlink(matte.resolve(), dest / "matte" / f"{name}{matte.suffix.lower()}")
    return dest
