"""Matting throughput: `modnet-batch matte` against the loop a user writes, and the CPU bound.

In one sitting, on the same photos:
- stages: each step of matting one photo, single-threaded, on the photos themselves (ms per
  image, medians): read, decode, preprocess (the product's, and the hand-written numpy one for
  comparison), the network at 1 thread and at every core, postprocess (resize back, 8-bit),
  PNG encode, write; as CPU time (core-ms), which a busy machine inflates less than wall time;
- the bound: on N cores with every stage overlapping, images/s <= N * 1000 / (CPU ms of all
  stages per image), each stage timed while N copies of them run side by side (cores that
  share caches and memory each run slower when all are busy); from the stages timed alone too,
  the network at its cheaper thread count, for comparison; and for a whole command on the
  folder, that rate after the start-up no program skips (Python, numpy, OpenCV and onnxruntime
  imported, the model opened: timed as a subprocess);
- rounds, alternating: the whole `modnet-batch matte SRC OUT` command (subprocess, start-up
  included; `matte-inline`, `matte-ray`: with that --backend) and the hand-written loop
  (subprocess too: decode, MODNet's own preprocessing, one onnxruntime session on every core,
  resize back, PNG alpha at source size), medians reported as the ratio to the loop and the
  fraction of the bound.

    python -m benchmarks.matting PHOTOS [--images N] [--rounds 2] [--out JSON]
    python -m benchmarks.matting --synthetic 1920x1080 --images 8     # synthetic photos
    python -m benchmarks.matting loop SRC OUT --model M [--png-level L]   # the loop alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PEERS = ("matte", "matte-inline", "matte-ray", "loop")
DEFAULT_PEERS = ("matte", "matte-ray", "loop")
BACKEND_OF = {"matte-inline": "inline", "matte-ray": "ray"}


# --- the loop a user writes (only cv2, numpy and onnxruntime, as a script would) --------------
def hand_loop(src: Path, out: Path, model: Path, level: int) -> int:
    """One photo at a time, MODNet's inference_onnx.py steps in float32, one session on every
    core, the alpha resized back to the photo's size and written as PNG. Returns the count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTENSIONS)
    for path in files:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise SystemExit(f"{path}: not an image OpenCV reads")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        x = (rgb.astype(np.float32) - 127.5) / 127.5
        if max(h, w) < 512 or min(h, w) > 512:  # ref_size 512: the short side becomes 512
            rh, rw = (512, int(w / h * 512)) if w >= h else (int(h / w * 512), 512)
        else:
            rh, rw = h, w
        small = cv2.resize(x, (rw - rw % 32, rh - rh % 32), interpolation=cv2.INTER_AREA)
        y = session.run(None, {"input": small.transpose(2, 0, 1)[None]})[0][0, 0]
        alpha = cv2.resize(y, (w, h), interpolation=cv2.INTER_AREA)
        target = out / path.relative_to(src).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        png = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
        cv2.imwrite(str(target), png, [cv2.IMWRITE_PNG_COMPRESSION, level])
    return len(files)


# --- the peers, each a subprocess timed from outside -----------------------------------------
def run_peer(name: str, src: Path, out: Path, model: Path, level: int) -> dict[str, Any]:
    """Time one peer on `src` into the empty folder `out`, start-up included."""
    if name == "loop":
        cmd = [sys.executable, "-m", "benchmarks.matting", "loop", str(src), str(out)]
        cmd += ["--model", str(model)]
    else:
        cmd = [sys.executable, "-m", "modnet_batch", "matte", str(src), str(out)]
        cmd += ["--model", str(model)]
        cmd += ["--backend", BACKEND_OF[name]] if name in BACKEND_OF else []
    cmd += ["--png-level", str(level)]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time of the command and the processes it waited for (Ray's daemons may escape it)
    cpu = now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime
    images = sum(1 for p in out.rglob("*.png") if ".modnet-batch" not in p.parts)
    row: dict[str, Any] = {"images": images, "seconds": seconds, "images_per_s": images / seconds}
    row.update(cpu_s=cpu, cpu_ms_per_image=1000 * cpu / max(1, images))
    summary = out / ".modnet-batch" / "run" / "summary.json"
    if summary.is_file():
        doc = json.loads(summary.read_text())
        row["startup_s"] = doc.get("startup_seconds")
        row["steady_images_per_s"] = doc["throughput"]["steady_images_per_s"]
    return row


def rounds(
    src: Path, model: Path, level: int, peers: list[str], n: int, tmp: Path
) -> dict[str, list[dict[str, Any]]]:
    """`n` rounds, the peers alternating (their order reversed every other round)."""
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in peers}
    for r in range(n):
        for name in peers if r % 2 == 0 else peers[::-1]:
            out = tmp / f"{name}-{r}"
            got[name].append(run_peer(name, src, out, model, level))
            shutil.rmtree(out)
            print(name, r, json.dumps(got[name][-1]), flush=True)
    return got


# --- stages, single-threaded, on the photos ---------------------------------------------------
def _ms(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """The value and the CPU ms that this process (every thread of it) spent on it: core-ms,
    which a busy machine does not inflate as it does wall time."""
    t0 = time.process_time()
    value = fn(*args)
    return value, (time.process_time() - t0) * 1000


def _numpy_normalise(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) - 127.5) / 127.5


def _photo_stages(
    path: Path, sessions: tuple[Any, Any], level: int, tmp: Path
) -> tuple[dict[str, float], np.ndarray]:
    """Each step of matting one photo, timed (ms); and its alpha."""
    from modnet_batch.data.decode import decode_image
    from modnet_batch.protocol import get_protocol

    protocol = get_protocol("paper")
    t: dict[str, float] = {}
    data, t["read"] = _ms(path.read_bytes)
    rgb, t["decode"] = _ms(lambda: decode_image(data, name=path.name))
    x, t["preprocess"] = _ms(protocol.preprocess, rgb)
    _, t["preprocess_numpy_normalise"] = _ms(_numpy_normalise, rgb)
    y, t["network_1_thread"] = _ms(sessions[0].run, x[None])
    if sessions[1] is not None:
        _, t["network_all_threads"] = _ms(sessions[1].run, x[None])
    scored, t["postprocess"] = _ms(protocol.postprocess, y[0, 0], *rgb.shape[:2])
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    (_ok, png), t["png"] = _ms(cv2.imencode, ".png", scored.stored, params)
    _, t["write"] = _ms((tmp / "a.png").write_bytes, png.tobytes())
    return t, scored.stored


def stages(
    files: list[Path], model: Path, level: int, cores: int, keep: int = 0
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Median CPU ms per image of each step of `matte` (paper protocol, alpha PNG at source
    size), one thread each; the network also at `cores` threads (core-ms, all its threads).
    Also the first `keep` alphas."""
    from modnet_batch.engine import EngineSpec, open_session

    sessions = (
        open_session(EngineSpec(model=str(model), threads=1, spin=False)),
        open_session(EngineSpec(model=str(model), threads=cores, spin=False)),
    )
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    ms: dict[str, list[float]] = {}
    alphas: list[np.ndarray] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for path in files:
                took, alpha = _photo_stages(path, sessions, level, Path(tmp))
                for key, value in took.items():
                    ms.setdefault(key, []).append(value)
                if len(alphas) < keep:
                    alphas.append(alpha)
    finally:
        cv2.setNumThreads(previous)
    return {key: statistics.median(values) for key, values in ms.items()}, alphas


def png_levels(alphas: list[np.ndarray]) -> dict[str, Any]:
    """Encode each source-size alpha at every level: median ms and KiB (one core)."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    out: dict[str, Any] = {"megapixels_median": statistics.median(a.size for a in alphas) / 1e6}
    for level in range(10):
        ms, kib = [], []
        for a in alphas:
            (_ok, buf), took = _ms(cv2.imencode, ".png", a, [cv2.IMWRITE_PNG_COMPRESSION, level])
            ms.append(took)
            kib.append(len(buf) / 1024)
        out[str(level)] = {"ms": statistics.median(ms), "kib": statistics.median(kib)}
    cv2.setNumThreads(previous)
    return out


def _loaded_copy(files: list[Path], model: Path, level: int) -> dict[str, list[float]]:
    """One of the copies `stages_loaded` runs side by side: the stages of every photo, one
    thread, each timed (process CPU ms)."""
    from modnet_batch.engine import EngineSpec, open_session

    session = open_session(EngineSpec(model=str(model), threads=1, spin=False))
    cv2.setNumThreads(1)
    ms: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            took, _alpha = _photo_stages(path, (session, None), level, Path(tmp))
            for key, value in took.items():
                ms.setdefault(key, []).append(value)
    return ms


def stages_loaded(files: list[Path], model: Path, level: int, cores: int) -> dict[str, float]:
    """Median CPU ms per image of each stage while every core runs the stages too: `cores`
    processes side by side, each over all the photos (started at different ones). Cores that
    share caches and memory bandwidth each run slower when all are busy, so this, not the
    stages timed alone, is what a pipeline that fills every core can reach."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    shifted = [
        files[k * len(files) // cores :] + files[: k * len(files) // cores] for k in range(cores)
    ]
    with ProcessPoolExecutor(cores, mp_context=get_context("spawn")) as pool:
        copies = list(pool.map(_loaded_copy, shifted, [model] * cores, [level] * cores))
    keys = copies[0].keys()
    return {key: statistics.median(v for c in copies for v in c[key]) for key in keys}


STEPS = ("read", "decode", "preprocess", "postprocess", "png", "write")

# What every program that mattes with MODNet does before its first photo: start Python, import
# numpy, OpenCV and onnxruntime, open the model.
_START = (
    "import cv2, numpy, onnxruntime as ort, sys; "
    "o = ort.SessionOptions(); o.intra_op_num_threads = 1; "
    "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])"
)


def least_startup(model: Path, repeat: int = 3) -> float:
    """Median seconds of the start-up no program can skip (_START), as a subprocess."""
    took = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _START, str(model)], check=True)
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def folder_bound(per_image_s: float, startup_s: float, images: int) -> float:
    """Images/s of a whole command on `images` photos at the bound, after the least start-up."""
    return images / (startup_s + images / per_image_s)


def bound(per_stage: dict[str, float], loaded: dict[str, float], cores: int) -> dict[str, float]:
    """Images/s that `cores` cores reach when every stage overlaps and none waits: from the
    stages timed alone (unreachable where busy cores slow each other) and from the stages
    timed with every core busy (`images_per_s`, the bound the peers are held to)."""
    network = min(per_stage["network_1_thread"], per_stage["network_all_threads"])
    core_ms = network + sum(per_stage[k] for k in STEPS)
    at_all = per_stage["network_all_threads"] + sum(per_stage[k] for k in STEPS)
    loaded_ms = loaded["network_1_thread"] + sum(loaded[k] for k in STEPS)
    return {
        "images_per_s_network_on_all_cores": cores * 1000 / at_all,
        "core_ms_per_image_alone": core_ms,
        "network_core_ms_alone": network,
        "images_per_s_alone": cores * 1000 / core_ms,
        "core_ms_per_image": loaded_ms,
        "network_core_ms": loaded["network_1_thread"],
        "images_per_s": cores * 1000 / loaded_ms,
    }


# --- the sitting ------------------------------------------------------------------------------
def stamp() -> dict[str, Any]:
    """Commit, UTC date and machine, for a results file read later."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip()

    model = ""
    if Path("/proc/cpuinfo").is_file():
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        model = names[0].split(":", 1)[1].strip() if names else ""
    return {
        "commit": git("rev-parse", "--short", "HEAD")
        + (" (dirty)" if git("status", "--porcelain", "-uno") else ""),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "host": platform.node(),
            "cpu": model,
            "cores": len(os.sched_getaffinity(0)),
            "load_1m": os.getloadavg()[0],
        },
    }


def photos(args: argparse.Namespace, tmp: Path) -> Path:
    """The folder the peers read: SRC's first --images photos, or synthetic ones."""
    folder = tmp / "photos"
    folder.mkdir()
    if args.synthetic:
        from modnet_batch.data.synthetic import make_synthetic

        w, h = (int(v) for v in args.synthetic.lower().split("x"))
        make_synthetic(tmp / "synthetic", n=args.images or 8, height=h, width=w)
        for p in sorted((tmp / "synthetic" / "image").iterdir()):
            shutil.copyfile(p, folder / p.name)
        return folder
    files = sorted(p for p in args.src.rglob("*") if p.suffix.lower() in EXTENSIONS)
    for p in files[: args.images or None]:
        shutil.copyfile(p, folder / p.name)
    return folder


def sitting(args: argparse.Namespace) -> dict[str, Any]:
    from modnet_batch.model.variants import resolve_model
    from modnet_batch.results.outputs import DEFAULT_PNG_LEVEL

    level = DEFAULT_PNG_LEVEL if args.png_level is None else args.png_level
    model = resolve_model(args.model)
    cores = len(os.sched_getaffinity(0))
    doc: dict[str, Any] = {**stamp(), "src": args.synthetic or str(args.src), "png_level": level}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        src = photos(args, tmp)
        files = sorted(src.iterdir())
        per_stage, alphas = stages(files, model, level, cores, keep=5)
        print("stages (ms/image, 1 thread):", json.dumps(per_stage), flush=True)
        loaded = stages_loaded(files, model, level, cores)
        print(f"stages, {cores} cores busy:", json.dumps(loaded), flush=True)
        doc.update(images=len(files), stages_ms=per_stage, stages_ms_all_cores_busy=loaded)
        doc["bound"] = bound(per_stage, loaded, cores)
        startup = least_startup(model)
        doc["bound"]["least_startup_s"] = startup
        doc["bound"]["images_per_s_whole_command"] = folder_bound(
            doc["bound"]["images_per_s"], startup, len(files)
        )
        doc["png_levels"] = png_levels(alphas)
        del alphas
        doc["rounds"] = rounds(src, model, level, args.peers, args.rounds, tmp)
    med = {k: statistics.median(r["images_per_s"] for r in v) for k, v in doc["rounds"].items()}
    doc["median_images_per_s"] = med
    top = doc["bound"]["images_per_s"]
    doc["fraction_of_bound"] = {k: v / top for k, v in med.items()}
    whole = doc["bound"]["images_per_s_whole_command"]
    doc["fraction_of_bound_whole_command"] = {k: v / whole for k, v in med.items()}
    steady = {
        k: statistics.median(r["steady_images_per_s"] for r in v)
        for k, v in doc["rounds"].items()
        if all(r.get("steady_images_per_s") for r in v)
    }
    doc["fraction_of_bound_steady"] = {k: v / top for k, v in steady.items()}
    alone = doc["bound"]["images_per_s_alone"]
    doc["fraction_of_bound_alone"] = {k: v / alone for k, v in med.items()}
    # load-independent: what each peer spends per image, against the stages' sum
    doc["median_cpu_ms_per_image"] = {
        k: statistics.median(r["cpu_ms_per_image"] for r in v) for k, v in doc["rounds"].items()
    }
    # the bound's core-ms over each peer's: how close its work is to the stages' sum
    core_ms = doc["bound"]["core_ms_per_image"]
    doc["cpu_efficiency"] = {k: core_ms / v for k, v in doc["median_cpu_ms_per_image"].items()}
    if "loop" in med:
        doc["over_loop"] = {k: v / med["loop"] for k, v in med.items() if k != "loop"}
    return doc


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loop"]:
        loop = argparse.ArgumentParser(prog="benchmarks.matting loop")
        loop.add_argument("src", type=Path)
        loop.add_argument("out", type=Path)
        loop.add_argument("--model", type=Path, required=True)
        loop.add_argument("--png-level", type=int, default=5)
        a = loop.parse_args(argv[1:])
        hand_loop(a.src, a.out, a.model, a.png_level)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path, nargs="?", help="a folder of photos (recursive)")
    parser.add_argument("--synthetic", metavar="WxH", help="synthetic photos of this size instead")
    parser.add_argument("--images", type=int, help="use the first N photos (synthetic: make N)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peers", type=lambda s: s.split(","), default=list(DEFAULT_PEERS))
    parser.add_argument("--png-level", type=int)
    parser.add_argument("--model", help="an ONNX path; none = the reference model")
    stamp_now = datetime.now(UTC).strftime("%Y%m%dT%H%M")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / f"matting-{stamp_now}.json"
    )
    args = parser.parse_args(argv)
    if (args.src is None) == (args.synthetic is None):
        parser.error("give a photo folder or --synthetic WxH")
    if unknown := set(args.peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(unknown)}; use {', '.join(PEERS)}")
    doc = sitting(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    keys: tuple[str, ...] = ("bound", "median_images_per_s", "over_loop", "fraction_of_bound")
    keys += ("median_cpu_ms_per_image", "cpu_efficiency")
    print(json.dumps({k: doc.get(k) for k in keys}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
