"""Section 4 of the device benchmark: how fast the CPUs alone decode and preprocess the original
photos (threads of one process, and as many processes as cores)."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.accelerator.config import PROTOCOL, Config, log
from benchmarks.accelerator.inputs import image_pairs
from modnet_batch.execution.resources import available_cpus
from modnet_batch.pipeline import ImagePipeline


def _decode_one(pipeline: ImagePipeline, image: bytes, matte: bytes | None) -> None:
    from modnet_batch.data.decode import decode_image, decode_matte

    rgb = decode_image(image, name="feed")
    pipeline.protocol.preprocess(rgb)
    if matte is not None:
        pipeline.protocol.ground_truth(decode_matte(matte, name="feed"))


def _decode_share(args: tuple[list[tuple[bytes, bytes | None]], int]) -> int:
    import cv2

    cv2.setNumThreads(1)
    items, repeat = args
    pipeline = ImagePipeline(PROTOCOL)
    for _ in range(repeat):
        for image, matte in items:
            _decode_one(pipeline, image, matte)
    return repeat * len(items)


def feed(cfg: Config, seconds: float) -> dict[str, Any]:
    """Images/s the CPUs decode and preprocess (with ground truth) from the original files."""
    import cv2

    cv2.setNumThreads(1)
    items = [
        (p.read_bytes(), m.read_bytes() if m else None)
        for p, m in image_pairs(Path(cfg.src), cfg.images)
    ]
    pipeline = ImagePipeline(PROTOCOL)
    t = time.perf_counter()
    _decode_one(pipeline, *items[0])
    per_image = max(time.perf_counter() - t, 1e-4)
    cpus = available_cpus()
    counts = sorted({1, *(n for n in (2, 4, 8, 16, 32, 64) if n < cpus), cpus})
    threads: dict[str, float] = {}
    for n in counts:
        total = max(n, int(seconds * n / per_image))
        work = [items[i % len(items)] for i in range(total)]
        with ThreadPoolExecutor(n) as pool:
            t = time.perf_counter()
            list(pool.map(lambda it: _decode_one(pipeline, *it), work))
            threads[str(n)] = round(total / (time.perf_counter() - t), 2)
        log(f"feed: {n} thread(s) {threads[str(n)]:.1f} img/s")
    repeat = max(1, int(seconds / (per_image * len(items))))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cpus) as pool:
        pool.map(_decode_share, [(items[:1], 1)] * cpus)  # imports and warm-up, not timed
        t = time.perf_counter()
        done = sum(pool.map(_decode_share, [(items, repeat)] * cpus))
        processes = round(done / (time.perf_counter() - t), 2)
    log(f"feed: {cpus} processes {processes:.1f} img/s")
    best_threads = max(threads.values())
    return {
        "cpus": cpus,
        "threads_images_per_s": threads,
        "processes": cpus,
        "processes_images_per_s": processes,
        "threads_vs_processes": round(best_threads / processes, 3) if processes else None,
        "bound_images_per_s": max(best_threads, processes),
    }
