"""Matting throughput, side by side in one run: `modnet-batch matte` (Ray, every core) against
the naive loop (decode, infer, resize back, encode, one image at a time), rounds alternating,
plus the cost and size of the alpha PNG at each compression level.

    python -m modnet_batch.bench.matting IMAGE_FOLDER --out bench/matting.json [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from modnet_batch.data.decode import IMAGE_EXTENSIONS, decode_image
from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.execution.resources import available_cpus
from modnet_batch.model.variants import resolve_model
from modnet_batch.protocol import get_protocol
from modnet_batch.results.outputs import to_uint8


def naive(src: Path, out: Path, model: Path, level: int) -> dict[str, Any]:
    """One image at a time, one session on every core: what a user writes by hand."""
    protocol = get_protocol("paper")
    session = open_session(EngineSpec(model=str(model), threads=available_cpus(), spin=False))
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    t0 = time.perf_counter()
    for path in files:
        rgb = decode_image(path.read_bytes(), name=path.name)
        y = session.run(protocol.preprocess(rgb)[None])[0, 0]
        alpha = cv2.resize(y, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
        _ok, buf = cv2.imencode(".png", to_uint8(alpha), [cv2.IMWRITE_PNG_COMPRESSION, level])
        target = out / path.relative_to(src).with_suffix(".png")  # mirrored, as matte does
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buf.tobytes())
    seconds = time.perf_counter() - t0
    return {"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds}


def matte(src: Path, out: Path, model: Path, level: int) -> dict[str, Any]:
    """The product's command, start-up included, as a user runs it."""
    cmd = [sys.executable, "-m", "modnet_batch", "matte", str(src), str(out), "--model", str(model)]
    cmd += ["--png-level", str(level)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 4):  # 4: some files could not be matted, the rest was
        raise SystemExit(f"matte failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads((out / ".modnet-batch" / "run" / "summary.json").read_text())
    images = int(summary["throughput"]["images"])
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "startup_s": summary["startup_seconds"],
        "steady_images_per_s": summary["throughput"]["steady_images_per_s"],
    }


def rembg(src: Path, out: Path, model: Path, exe: str) -> dict[str, Any]:
    """`rembg p` with the same ONNX through its custom-model session (`u2net_custom`, masks
    only). rembg loads custom models only from ~/.rembg, so the model is copied there; it runs
    the network with U2-Net's preprocessing (ImageNet mean/std, 320x320, min-max output), so
    its masks are not MODNet's protocol: a throughput peer, not a quality one."""
    home = Path.home() / ".rembg"
    home.mkdir(exist_ok=True)
    target = home / model.name
    if not target.exists():
        shutil.copyfile(model, target)
    cmd = [exe, "p", "-m", "u2net_custom", "-x", json.dumps({"model_path": str(target)}), "-om"]
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, str(src), str(out)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"rembg failed ({done.returncode}): {done.stderr[-2000:]}")
    written = len(list(out.glob("*.png")))
    return {
        "images": written,
        "of": len(files),
        "seconds": seconds,
        "images_per_s": written / seconds,
    }


def png_levels(folder: Path) -> dict[str, Any]:
    """Encode each source-size alpha at every level: median ms and KiB (one core)."""
    cv2.setNumThreads(1)
    alphas = [
        np.asarray(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in sorted(folder.glob("*.png"))
    ]
    out: dict[str, Any] = {"megapixels_median": statistics.median(a.size for a in alphas) / 1e6}
    for level in range(10):
        ms, kib = [], []
        for a in alphas:
            t = time.perf_counter()
            _, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, level])
            ms.append((time.perf_counter() - t) * 1000)
            kib.append(len(buf) / 1024)
        out[str(level)] = {"ms": statistics.median(ms), "kib": statistics.median(kib)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/matting.json"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--png-level", type=int, default=None)
    parser.add_argument("--rembg", help="the rembg executable, to measure `rembg p` too")
    args = parser.parse_args(argv)
    from modnet_batch.results.outputs import DEFAULT_PNG_LEVEL

    level = DEFAULT_PNG_LEVEL if args.png_level is None else args.png_level
    model = resolve_model(None)
    peers: list[tuple[str, Any]] = [
        ("matte", lambda s, o: matte(s, o, model, level)),
        ("naive", lambda s, o: naive(s, o, model, level)),
    ]
    if args.rembg:
        peers.append(("rembg", lambda s, o: rembg(s, o, model, args.rembg)))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in peers}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, fn in peers:
                out = Path(tmp) / f"{name}-{r}"
                out.mkdir()
                rounds[name].append(fn(args.src, out))
                print(name, r, json.dumps(rounds[name][-1]), flush=True)
        levels = png_levels(Path(tmp) / "naive-0")
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in rounds.items()}
    doc = {
        "src": str(args.src),
        "cpus": available_cpus(),
        "png_level": level,
        "rounds": rounds,
        "median_images_per_s": med,
        "matte_over_naive": med["matte"] / med["naive"],
        "matte_over_rembg": med["matte"] / med["rembg"] if "rembg" in med else None,
        "png_levels": levels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("median_images_per_s", "matte_over_naive")}))


if __name__ == "__main__":
    main()
