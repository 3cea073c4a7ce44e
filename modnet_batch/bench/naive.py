"""The peer: the obvious sequential loop (decode, resize, infer, score, write; one image at a
time, library defaults) on the same images and cores, to show what the pipeline buys."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import cv2

from modnet_batch.data.dataset import Dataset
from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.metrics import DATASET, MetricAccumulator
from modnet_batch.pipeline import STAGES, ImagePipeline
from modnet_batch.results import RunDir


def run_naive(
    dataset: str, model: str, protocol_name: str, threads: int, out: Path
) -> dict[str, Any]:
    """Time the sequential loop over every image of `dataset`, decoding the original files."""
    pipeline = ImagePipeline(protocol_name)  # exact decode, the originals (no prepared inputs)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(-1)  # OpenCV's default, as a plain script has it
    t = time.perf_counter()
    # onnxruntime's defaults for a script: spinning on, one thread per core
    session = open_session(EngineSpec(model=model, threads=threads, spin=True))
    session_s = time.perf_counter() - t
    run = RunDir(out)
    stages = dict.fromkeys(STAGES, 0.0)  # the pipeline's stages, timed one after another
    acc = MetricAccumulator()
    images = 0
    try:
        start = time.perf_counter()
        records = Dataset.open(dataset).records()
        while True:
            t0 = time.perf_counter()
            rec = next(records, None)
            t1 = time.perf_counter()
            stages["read"] += t1 - t0
            if rec is None:
                break
            decoded = pipeline.decode(rec)
            t2 = time.perf_counter()
            inputs = pipeline.preprocess(decoded)
            assert inputs.tensor is not None  # a host pipeline: float inputs
            t3 = time.perf_counter()
            y = session.run(inputs.tensor[None])[0, 0]
            t4 = time.perf_counter()
            alpha = pipeline.postprocess(y, rec)
            t5 = time.perf_counter()
            if inputs.gt is not None:
                acc.update(pipeline.score(alpha, inputs.gt))
            t6 = time.perf_counter()
            run.write_alpha(rec.image_id, alpha.stored)
            t7 = time.perf_counter()
            for k, a, b in (
                ("decode", t1, t2),
                ("preprocess", t2, t3),
                ("infer", t3, t4),
                ("postprocess", t4, t5),
                ("score", t5, t6),
                ("write", t6, t7),
            ):
                stages[k] += b - a
            images += 1
        seconds = time.perf_counter() - start
    finally:
        cv2.setNumThreads(previous)
        shutil.rmtree(out, ignore_errors=True)
    stats = acc.summary()
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "session_seconds": session_s,
        "threads": threads,
        "stages_s": stages,
        "outside_network_fraction": 1.0 - stages["infer"] / seconds if seconds > 0 else 0.0,
        "metrics": {k: stats[k] for k in DATASET},
    }
