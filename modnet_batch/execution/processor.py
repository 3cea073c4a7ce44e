"""The shard loop every backend runs: read -> decode -> preprocess -> infer (batched)
-> postprocess -> score -> write npz. Decoding and scoring run on a small thread pool while the
shard loop's thread infers, so the network waits only when the pool cannot keep up.

Each step is the job's ImagePipeline (modnet_batch.pipeline) and the engine's session; this
module only schedules them (threads, batching, overlap).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import Record
from modnet_batch.data.jpeg_header import device_fallback_reason
from modnet_batch.engine import DEFAULT_ENGINE, EngineSpec, Session, open_session
from modnet_batch.errors import ModnetBatchError, is_storage_error, storage_error
from modnet_batch.execution import signals
from modnet_batch.execution.batching import tune_batch
from modnet_batch.execution.pixel_batches import PixelBudget
from modnet_batch.metrics import ImageMetrics, ImageRow, MetricAccumulator, connectivity_error
from modnet_batch.model.variants import resolve_model
from modnet_batch.pipeline import DecodeMode, ImagePipeline, NetworkInput, error_text, is_transient
from modnet_batch.protocol import ScoredAlpha
from modnet_batch.results import ReturnedFile, RunDir, UnitResult, WorkUnit
from modnet_batch.results.alpha import encode_alpha
from modnet_batch.results.outputs import OutputKind, OutputSize, OutputSpec
from modnet_batch.storage import AnyPath, is_uri, location, sha256, shown

# UnitResult.stages holds two views. The shard loop's thread, whose parts add up to
# UnitResult.seconds: reading the shard, waiting for decoded inputs, decoding and resizing on
# the engine's device (`--decoding device`; 0 otherwise), inferring, waiting for
# scoring/writing to catch up, and the rest (batching, bookkeeping). And, as `cpu_<stage>`, the
# CPU seconds the pool threads spent per pipeline stage (time.thread_time: work, not waiting for
# a core). When shards queue in one actor, `read_ahead` (reading before the loop was free) and
# `drain_overlapped` (waiting for the last scores after handing the loop over) overlap another
# shard's seconds, so they are reported but not part of this shard's.
LOOP_STAGES = ("read", "wait_decode", "device_decode", "infer", "wait_write", "other")
POOL_STAGES = ("decode", "preprocess", "postprocess", "score", "write")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker needs; small and picklable (it travels to Ray actors)."""

    engine: EngineSpec
    protocol: str
    run_dir: str
    decode: DecodeMode = DecodeMode.EXACT  # resolved for the job (DecodeMode.resolve)
    batch_size: int = 4  # 0: measured when the session opens (execution/batching.py)
    tune_hw: tuple[int, int] = (1080, 1920)  # the (H, W) of a photo to measure batches with
    # normalise and score on the engine's device (the torch engine, seed protocols): uint8
    # pixels travel, the metrics but Conn are computed there, Conn stays on the pool threads
    device_scoring: bool = False
    decode_threads: int = 1
    cpus: float = 1.0  # the CPUs Ray holds for this worker (decode_threads feed from them)
    label: str = "cpu:0"
    engine_name: str = DEFAULT_ENGINE
    # what to write per image (by default npz at the scoring size); frozen, so shared safely
    outputs: OutputSpec = field(default_factory=OutputSpec)
    outputs_dir: str | None = None  # where image files go; None = <run_dir>/outputs
    # a resumed job without ground truth: an image whose every output file exists is done (files
    # are complete or absent, and the run owns its output folder), so it is not matted again
    keep_existing: bool = False
    # per-image files go back to the driver with the unit's result instead of being written
    # here (a worker that cannot see the run directory: --results-via)
    return_files: bool = False
    # where photos are decoded and resized: "cpu" (the pool threads), or "device" (the torch
    # engine's device: engine/torch/decode.py), in groups of at most `decode_pixels` pixels
    decoding: str = "cpu"
    decode_pixels: int = 128_000_000


@dataclass
class _Item:
    """One image between the pool and the shard loop: its input, or the error that stopped it."""

    record: Record
    inputs: NetworkInput | None = None
    rgb: npt.NDArray[np.uint8] | None = None  # kept only for outputs that need the photo
    kept: bool = False  # done by an earlier attempt (WorkerSpec.keep_existing)
    error: BaseException | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    # `--decoding device`: the photo's bytes, for the shard loop to decode on the device (its
    # ground truth, if any, is already decoded here: `gt`), or why it was decoded on the CPU
    encoded: Any = None
    gt: npt.NDArray[np.float64] | None = None
    # "device", or "cpu: <why>"; empty for an image that was not decoded (unreadable, kept)
    decoded_by: str = ""


class ShardUnreadable(ModnetBatchError):
    """A shard that cannot be read as ingested (changed or damaged): retrying cannot help."""


class ShardReadError(ModnetBatchError):
    """Reading a shard that was intact failed (an I/O error): a retry may succeed."""


def _check_shard(task: WorkUnit) -> None:
    """The shard is the file dataset.json recorded: hashing it costs ~1 ms per MB, read once
    more from the page cache, against seconds of work per shard."""
    if task.sha256 is None:
        return
    try:
        actual = sha256(location(task.path))
    except FileNotFoundError:
        raise ShardUnreadable(
            f"shard {task.name} ({shown(task.path)}) does not exist; re-create the dataset"
        ) from None
    except OSError as exc:  # the storage failed, not the shard: a retry may pass
        raise ShardReadError(
            f"reading shard {task.name} ({shown(task.path)}) failed: {shown(exc)}"
        ) from None
    if actual != task.sha256:
        raise ShardUnreadable(
            f"shard {task.name} ({shown(task.path)}) changed after ingest (SHA-256 "
            f"{actual[:12]}..., "
            f"dataset.json records {task.sha256[:12]}...); re-create the dataset"
        )


class _Checked:
    """The shard files this worker has hashed: each work unit is a part of a file, and a file
    is hashed once per worker (again only when its size or mtime changed since)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}

    def check(self, task: WorkUnit) -> None:
        if task.sha256 is None:
            return
        key = (task.path, task.sha256)
        with self._lock:  # units of one file queued together wait for one hash
            try:
                st = location(task.path).stat()
                stamp = (st.st_size, int(st.st_mtime * 1e9))
            except OSError:
                stamp = None
            if stamp is not None and self._seen.get(key) == stamp:
                return
            _check_shard(task)
            if stamp is not None:
                self._seen[key] = stamp


class _Clock:
    """Wall time of the shard loop's thread per LOOP_STAGES entry."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(LOOP_STAGES, 0.0)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.totals[stage] += now - since
        return now


class UnitProcessor:
    """Loads the model once and turns shards into alpha files and metric rows."""

    def __init__(self, spec: WorkerSpec, session: Session | None = None) -> None:
        self.spec = spec
        self.pipeline = ImagePipeline(spec.protocol, spec.decode, device_inputs=spec.device_scoring)
        self.run = RunDir(spec.run_dir, spec.outputs_dir)
        if not spec.return_files:  # else the driver's run directory may not exist here
            self.run.alpha.mkdir(parents=True, exist_ok=True)
        cv2.setNumThreads(1)  # the pool below is the parallelism; never oversubscribe the cores
        t0 = time.perf_counter()
        # spinning CPU threads would take the cores from the decode/score pool
        engine = replace(spec.engine, spin=spec.engine.provider != "cpu")
        if is_uri(engine.model):  # fetched by this worker into its own node's cache
            engine = replace(engine, model=str(resolve_model(engine.model)))
        self.session = session or open_session(engine, spec.engine_name)
        self.session_seconds = time.perf_counter() - t0
        if spec.device_scoring and not hasattr(self.session, "run_scored"):
            raise ModnetBatchError(
                f"engine {spec.engine_name} cannot score on its device; run without device "
                "scoring (only the torch engine has it)"
            )
        self._group_pixels = 1  # of a device decode group: set where the decoder opens
        self.decoder: Any = None
        self.batch_size = spec.batch_size
        self.batch_tuning: dict[str, Any] | None = None
        if not self.batch_size:
            h, w = self.pipeline.protocol.network_size(*spec.tune_hw)
            choice = tune_batch(self.session.run, (3, h, w))
            self.batch_size, self.batch_tuning = choice.batch_size, choice.to_dict()
        # after the batch is measured: the group budget reads the device's free memory
        self.decoder = self._open_decoder() if spec.decoding == "device" else None
        self._pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="pipeline")
        self.images_done = 0  # read by progress polls from another thread
        self.running: str | None = None  # the shard holding the loop (progress polls read it)
        self._lock = threading.Lock()
        # A threaded Ray actor may call process() for a queued shard while one runs: the loops
        # take turns (one session, one pool), but the queued one starts decoding first.
        self._loop_lock = threading.Lock()
        self._waiting = 0  # process() calls waiting for the loop
        self._checked = _Checked()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _open_decoder(self) -> Any:
        """The device's JPEG decoder (engine.torch.decode), checked against the job."""
        if self.spec.decoding != "device":
            return None
        device = getattr(self.session, "device", None)
        if device is None or not hasattr(self.session, "infer_tensor"):
            raise ModnetBatchError(
                f"--decoding device needs the torch engine (this job: {self.spec.engine_name}); "
                "use --engine torch or --decoding cpu"
            )
        if self.spec.device_scoring:
            raise ModnetBatchError(
                "--decoding device scores on the CPU threads; use --scoring cpu with it"
            )
        from modnet_batch.engine.torch import decode as device_decode

        decoder = device_decode.open_decoder(device)
        self._group_pixels = device_decode.group_pixels(device, self.spec.decode_pixels)
        return decoder

    @property
    def decoder_name(self) -> str | None:
        """What decodes photos on the device (None: the CPU threads decode)."""
        return None if self.decoder is None else str(self.decoder.name)

    # --- stages run in the pool -------------------------------------------------------------
    def _prepare(self, record: Record, cpu_only: str | None = None) -> _Item:
        """Decode and preprocess one image on a pool thread (under `--decoding device`, only
        its matte, unless the device cannot decode it or `cpu_only` says why it must not)."""
        item = _Item(record=record)
        if cpu_only is not None:
            item.decoded_by = f"cpu: {cpu_only}"
        try:
            self.run.alpha_path(record.image_id)  # an id from a shard is checked before any use
            if self.spec.keep_existing and self._outputs_exist(record):
                item.kept = True  # a resumed job without metrics: this image is already done
                return item
            t0 = time.thread_time()
            if self.decoder is not None and cpu_only is None and record.prepared is None:
                if record.read_error is not None:  # its file or its row could not be read
                    raise record.read_error
                reason = device_fallback_reason(record.image)
                if reason is None:  # the shard loop decodes it on the device; its matte here
                    matte = self.pipeline.decode_matte(record)
                    item.gt = None if matte is None else self.pipeline.ground_truth(matte)
                    item.cpu = {"decode": time.thread_time() - t0}
                    item.encoded = record.image  # only once its matte is decoded
                    return item
                item.decoded_by = f"cpu: {reason}"
            elif self.decoder is not None and record.prepared is not None:
                item.decoded_by = "cpu: prepared by ingest --prepare (nothing to decode)"
            decoded = self.pipeline.decode(record)
            if self.spec.outputs.needs_pixels:
                item.rgb = decoded.rgb
            t1 = time.thread_time()
            item.inputs = self.pipeline.preprocess(decoded)
            item.cpu = {"decode": t1 - t0, "preprocess": time.thread_time() - t1}
        except Exception as exc:  # one bad image becomes an error row; the shard goes on
            item.error = exc
        return item

    def _outputs_exist(self, record: Record) -> bool:
        spec = self.spec.outputs
        paths = [
            self.run.output_path(spec, kind, record.image_id, record.output_name)
            for kind in spec.files
        ]
        if OutputKind.NPZ in spec.kinds:
            paths.append(self.run.alpha_path(record.image_id))
        return bool(paths) and all(p.is_file() for p in paths)

    def _finish(
        self,
        item: _Item,
        output: npt.NDArray[np.float32],
        device: dict[str, float | int] | None = None,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> tuple[ImageRow, dict[str, float], list[ReturnedFile]]:
        """Postprocess, score and write one image (or return its files: `return_files`);
        `device`: its metrics but Conn as the engine's device computed them (Conn, a CPU
        algorithm, is computed here); `resized`: the output at the photo's size, resized on
        the device (`--decoding device`)."""
        assert item.inputs is not None  # only images with inputs reach the network
        t0 = time.thread_time()
        metrics = None
        try:
            alpha = self.pipeline.postprocess(output, item.record, resized)
            t1 = time.thread_time()
            gt = item.inputs.gt
            if gt is None:
                metrics = None
            elif device is not None:
                conn = connectivity_error(alpha.score, gt)
                metrics = ImageMetrics(conn=conn, **device)  # type: ignore[arg-type]
            else:
                metrics = self.pipeline.score(alpha, gt)
            t2 = time.thread_time()
            files = self._write_outputs(item, output, alpha, resized)
            cpu = {"postprocess": t1 - t0, "score": t2 - t1, "write": time.thread_time() - t2}
            return self.pipeline.row(item.record, metrics), cpu, files
        except Exception as exc:  # the metrics computed so far stay beside the error
            if is_storage_error(exc):  # the run dir is full or read-only: stop, not one row each
                raise storage_error(exc) from None
            return self.pipeline.row(item.record, metrics, exc), {}, []

    def _write_outputs(
        self,
        item: _Item,
        output: npt.NDArray[np.float32],
        alpha: ScoredAlpha,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> list[ReturnedFile]:
        """The job's per-image files; npz is always at the scoring size (the evaluation
        artefact), image files at the size the job asked for. Written here, or returned for the
        driver to write (`return_files`)."""
        spec, record = self.spec.outputs, item.record
        files: list[tuple[AnyPath, bytes]] = (
            self._image_files(item, output, alpha, resized) if spec.files else []
        )
        if self.spec.return_files:
            if OutputKind.NPZ in spec.kinds:
                npz = encode_alpha(alpha.stored)
                files.insert(0, (self.run.alpha_path(record.image_id), npz))
            return [self.run.returned(path, data) for path, data in files]
        if OutputKind.NPZ in spec.kinds:
            self.run.write_alpha(record.image_id, alpha.stored)
        for path, data in files:
            self.run.write_output(path, data)
        return []

    def _image_files(
        self,
        item: _Item,
        output: npt.NDArray[np.float32],
        alpha: ScoredAlpha,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> list[tuple[AnyPath, bytes]]:
        spec, record = self.spec.outputs, item.record
        rgb = item.rgb
        if spec.size is OutputSize.SOURCE:
            values = self.pipeline.source_alpha(output, alpha, record, resized)
        else:
            values = alpha.score
            if rgb is not None and rgb.shape[:2] != values.shape:
                h, w = values.shape
                rgb = np.asarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
        # the scored alpha's 8-bit form where it is the one written (paper, or --output-size
        # scored): every protocol stores round(score * 255) or the score is exactly k/255
        alpha8 = alpha.stored if values is alpha.score else None
        return [
            (
                self.run.output_path(spec, kind, record.image_id, record.output_name),
                spec.encode(kind, values, rgb, alpha8),
            )
            for kind in spec.files
        ]

    # --- on the device (`--decoding device`; called by the shard loop's thread) -------------
    def _decode_on_device(self, items: list[_Item], cpu: dict[str, float]) -> list[_Item]:
        """Decode a group of photos on the device and make their network inputs there; a photo
        the device decoder refuses (or decodes at another size than its header's) is decoded
        on the CPU here instead, its reason counted."""
        import torch

        from modnet_batch.engine.torch import decode as device_decode

        assert self.decoder is not None
        out: list[_Item] = []

        def on_cpu(reason: str) -> _Item:  # the photo decoded on the CPU, its time counted
            fallback = self._prepare(record, cpu_only=reason)
            for k, v in fallback.cpu.items():
                cpu[k] += v
            return fallback

        with torch.inference_mode():
            decoded = self.decoder.decode([item.encoded for item in items])
            for item, rgb in zip(items, decoded, strict=True):
                record = item.record
                item.encoded = None
                if isinstance(rgb, Exception):
                    reason = f"the device decoder failed ({error_text(rgb)})"
                elif rgb.dim() != 3 or rgb.shape[0] != 3 or rgb.dtype != torch.uint8:
                    reason = f"the device decoded {rgb.dtype} {list(rgb.shape)}, not RGB"
                elif tuple(rgb.shape[1:]) != (record.height, record.width):
                    reason = f"the device decoded {rgb.shape[2]}x{rgb.shape[1]}"
                else:
                    reason = None
                if reason is not None:
                    out.append(on_cpu(reason))
                    continue
                try:
                    x = device_decode.network_input(self.pipeline.protocol, rgb)
                    if self.spec.outputs.needs_pixels:
                        item.rgb = device_decode.host_rgb(rgb)
                except torch.cuda.OutOfMemoryError:  # a photo too large for what is free
                    out.append(on_cpu("the device ran out of memory"))
                    continue
                except Exception as exc:  # an error row for this image; the group goes on
                    if is_storage_error(exc) or isinstance(exc, MemoryError):
                        raise
                    item.error = exc
                else:
                    item.inputs = NetworkInput(None, item.gt, on_device=x)
                item.decoded_by = "device"
                out.append(item)
            del decoded  # the group's full-size pixels: freed before the next group
        return out

    def _infer_on_device(
        self, batch: list[_Item], clock: _Clock
    ) -> tuple[npt.NDArray[np.float32], tuple[int, ...], list[npt.NDArray[np.float32] | None]]:
        """Infer a batch whose inputs are on the device (or, fallbacks, on the host) and resize
        each output back to its photo's size there where that size is written or scored."""
        import torch

        from modnet_batch.engine.torch import decode as device_decode

        session: Any = self.session
        t = time.perf_counter()
        with torch.inference_mode():
            xs = [
                b.inputs.on_device
                if b.inputs.on_device is not None
                else torch.from_numpy(b.inputs.tensor).to(session.device)
                for b in batch
                if b.inputs is not None
            ]
            x = torch.stack(xs)
            out_t = session.infer_tensor(x)
            out = np.ascontiguousarray(out_t.cpu().numpy())
            t = clock.add("infer", t)
            resized: list[npt.NDArray[np.float32] | None] = [None] * len(batch)
            if tuple(out_t.shape[-2:]) == tuple(x.shape[-2:]):
                source = bool(self.spec.outputs.files) and (
                    self.spec.outputs.size is OutputSize.SOURCE
                )
                for i, item in enumerate(batch):
                    size = (item.record.height, item.record.width)
                    at_source = self.pipeline.protocol.scoring_size(*size) == size
                    if size != tuple(out_t.shape[-2:]) and (source or at_source):
                        try:
                            resized[i] = device_decode.to_source(out_t[i, 0], *size)
                        except torch.cuda.OutOfMemoryError:  # _finish resizes it on the CPU
                            resized[i] = None
            clock.add("device_decode", t)
        return out, tuple(x.shape[-2:]), resized

    # --- the shard loop (one thread: reads, batches, infers) --------------------------------
    def process(self, task: WorkUnit, on_image: Callable[[int], None] | None = None) -> UnitResult:
        self._checked.check(task)
        clock = _Clock()
        cpu = dict.fromkeys(POOL_STAGES, 0.0)
        rows: list[ImageRow] = []
        prefetch = max(2 * self.batch_size, 2 * self.spec.decode_threads)
        pending: deque[Future[_Item]] = deque()
        finishing: deque[Future[tuple[ImageRow, dict[str, float], list[ReturnedFile]]]] = deque()
        returned: list[ReturnedFile] = []
        # outputs that need the photo read the original bytes, not stored network inputs
        records = self.pipeline.records(
            task.path,
            prepared=not self.spec.outputs.needs_pixels,
            row_groups=None if task.row_groups is None else list(task.row_groups),
            reader=task.reader,
        )
        only = None if task.only is None else set(task.only)
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            t = time.perf_counter()
            while not exhausted and len(pending) < prefetch:
                try:
                    rec = next(records, None)
                except Exception as exc:  # pyarrow on a damaged file: name the shard, not a trace
                    if is_transient(exc):  # the bytes were checked: the storage failed
                        raise ShardReadError(
                            f"reading shard {task.name} ({shown(task.path)}) failed: "
                            f"{error_text(exc)}"
                        ) from None
                    raise ShardUnreadable(
                        f"shard {task.name} ({shown(task.path)}) is unreadable: {error_text(exc)}; "
                        "re-create the dataset (`modnet-batch verify` checks every shard)"
                    ) from None
                if rec is None:
                    exhausted = True
                elif only is not None and rec.image_id not in only:
                    continue  # a resume retrying some images of a finished shard
                else:
                    pending.append(self._pool.submit(self._prepare, rec))
            clock.add("read", t)

        def collect(block: bool, keep: int = 0) -> None:
            while len(finishing) > keep and (block or finishing[0].done()):
                t = time.perf_counter()
                row, spent, files = finishing.popleft().result()
                returned.extend(files)
                clock.add("wait_write", t)
                for k, v in spent.items():
                    cpu[k] += v
                rows.append(row)
                self._count(on_image)

        def flush(batch: list[_Item]) -> None:
            inputs = [b.inputs for b in batch if b.inputs is not None]
            device: list[dict[str, float | int]] | None = None
            resized: list[npt.NDArray[np.float32] | None] = [None] * len(batch)
            t = time.perf_counter()
            if self.decoder is not None:  # inputs on the device; outputs resized back there
                out, x_shape, resized = self._infer_on_device(batch, clock)
            elif self.spec.device_scoring:
                pixels = np.stack([i.pixels for i in inputs if i.pixels is not None])
                gts = [i.gt_pixels for i in inputs if i.gt_pixels is not None]
                # a batch where every image has ground truth is scored on the device
                gt = np.stack(gts) if len(gts) == len(inputs) else None
                scored = self.session.run_scored(pixels, gt, self.pipeline.protocol)  # type: ignore[attr-defined]
                out, device = scored
                x_shape = pixels.shape[1:3]
            else:
                tensors = [i.tensor for i in inputs if i.tensor is not None]
                x = tensors[0][None] if len(tensors) == 1 else np.stack(tensors)  # no copy
                out = self.session.run(x)
                x_shape = x.shape[-2:]
            if self.decoder is None:
                clock.add("infer", t)
            if out.shape[-2:] != x_shape:  # not MODNet: each image says so, named
                (h, w), (ih, iw) = out.shape[-2:], x_shape
                wrong = ModnetBatchError(
                    f"the model's output is {w}x{h} for a {iw}x{ih} input (MODNet's alpha has "
                    f"its input's size); check the model {self.spec.engine.model}"
                )
                for item in batch:
                    rows.append(self.pipeline.row(item.record, error=wrong))
                    self._count(on_image)
                return
            for i, (item, o) in enumerate(zip(batch, out, strict=True)):
                if item.inputs is not None and item.inputs.on_device is not None:
                    item.inputs = replace(item.inputs, on_device=None)  # device memory freed
                on_device = None if device is None else device[i]
                finishing.append(self._pool.submit(self._finish, item, o[0], on_device, resized[i]))
            collect(block=False)
            collect(block=True, keep=prefetch)  # bounded memory when scoring lags inference

        extra: dict[str, float] = {}
        kept = 0
        if self._loop_lock.acquire(blocking=False):
            start, started = time.perf_counter(), time.time()
        else:
            # Another shard holds the loop (a threaded Ray actor runs the queued one): start
            # decoding now so that our first images are ready when it ends. This reading
            # overlaps the other shard's time, so it is kept out of ours (read_ahead).
            fill()
            extra["read_ahead"], clock.totals["read"] = clock.totals["read"], 0.0
            with self._lock:
                self._waiting += 1
            self._loop_lock.acquire()
            with self._lock:
                self._waiting -= 1
            start, started = time.perf_counter(), time.time()
        held = True
        self.running = task.name
        decoded: dict[str, int] = {}  # images per decoder (`--decoding device`)
        group: list[_Item] = []  # to decode on the device together, bounded by pixels
        budget = PixelBudget(self._group_pixels, max(self.batch_size, 16))
        batch: list[_Item] = []
        shape: tuple[int, ...] = ()

        def settle(item: _Item) -> None:
            """An image out of decoding: kept, an error row, or into the inference batch."""
            nonlocal kept, batch, shape
            if item.kept:  # its files were written by an earlier attempt of this job
                rows.append(self.pipeline.row(item.record))
                kept += 1
                self._count(on_image)
                return
            if self.decoder is not None and item.decoded_by:
                decoded[item.decoded_by] = decoded.get(item.decoded_by, 0) + 1
            if item.inputs is None:
                rows.append(self.pipeline.row(item.record, error=item.error))
                self._count(on_image)
                return
            if batch and item.inputs.shape != shape:  # sizes differ (paper): one batch each
                flush(batch)
                batch = []
            shape = item.inputs.shape
            batch.append(item)
            if len(batch) >= self.batch_size:
                flush(batch)
                batch = []

        def decode_group() -> None:
            nonlocal group
            todo, group = group, []
            budget.clear()
            t = time.perf_counter()
            ready = self._decode_on_device(todo, cpu)
            clock.add("device_decode", t)
            for item in ready:
                settle(item)

        try:
            while True:
                signals.check()  # inline: a SIGTERM or Ctrl-C stops between images
                fill()
                if not pending:
                    break
                t = time.perf_counter()
                item = pending.popleft().result()
                clock.add("wait_decode", t)
                for k, v in item.cpu.items():
                    cpu[k] += v
                if item.encoded is not None:  # decoded on the device, a group at a time
                    pixels = item.record.height * item.record.width
                    if budget.full_for(pixels):
                        decode_group()
                    group.append(item)
                    budget.add(pixels)
                    continue
                settle(item)
            if group:
                decode_group()
            if batch:
                flush(batch)
            if self._waiting:
                # the next shard infers while our last images are scored: hand the loop over
                seconds = time.perf_counter() - start
                self.running = None
                self._loop_lock.release()
                held = False
                before = clock.totals["wait_write"]
                collect(block=True)
                extra["drain_overlapped"] = clock.totals["wait_write"] - before
                clock.totals["wait_write"] = before
            else:
                collect(block=True)
                seconds = time.perf_counter() - start
        finally:
            if held:
                self.running = None
                self._loop_lock.release()

        acc = MetricAccumulator()
        for row in rows:
            if row.scored and row.metrics is not None:
                acc.update(row.metrics)
        rows.sort(key=lambda r: r.image_id)
        stages = dict(clock.totals)
        stages["other"] = max(0.0, seconds - sum(stages.values()))
        stages.update({f"cpu_{k}": v for k, v in cpu.items()})
        stages.update(extra)
        return UnitResult(
            decoded=decoded,
            unit=task.name,
            rows=rows,
            accumulator=acc.to_dict(),
            images=len(rows) - kept,  # the work of this attempt: kept images cost nothing
            failed=sum(r.error is not None for r in rows),
            seconds=seconds,
            stages=stages,
            worker=self.spec.label,
            node=socket.gethostname(),
            pid=os.getpid(),
            attempt=task.attempt,
            started=started,
            finished=started + seconds,
            files=returned,
        )

    def _count(self, on_image: Callable[[int], None] | None) -> None:
        with self._lock:
            self.images_done += 1
        if on_image is not None:
            on_image(1)
