"""The finish stage, on a pool thread: postprocess one network output, score it against the
ground truth, and write the job's per-image files (or hand them back: Writes.return_files)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.errors import is_storage_error, storage_error
from modnet_batch.execution.stages import Finished, Item
from modnet_batch.metrics import ImageMetrics, connectivity_error
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.protocol import ScoredAlpha
from modnet_batch.results import ReturnedFile, RunDir
from modnet_batch.results.alpha import encode_alpha
from modnet_batch.results.outputs import OutputKind, OutputSize, OutputSpec
from modnet_batch.storage import AnyPath

# outputs encoded from the float alpha (the others from its 8-bit form)
_FROM_FLOATS = {OutputKind.ALPHA_PNG16, OutputKind.COMPOSITE}


class Finisher:
    """`finish(item, output, ...)` -> Finished: the image's row, seconds and returned files."""

    def __init__(
        self,
        pipeline: ImagePipeline,
        run: RunDir,
        outputs: OutputSpec,
        *,
        return_files: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.run = run
        self.outputs = outputs
        self.return_files = return_files

    def finish(
        self,
        item: Item,
        output: npt.NDArray[np.float32],
        device: dict[str, float | int] | None = None,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> Finished:
        """`output`: the hxw network output; `device`: its metrics but Conn as the engine's
        device computed them (Conn, a CPU algorithm, is computed here); `resized`: the output
        at the photo's size, resized on the device (`--decoding device`)."""
        assert item.inputs is not None  # only images with inputs reach the network
        t0 = time.thread_time()
        metrics = None
        try:
            alpha = self.pipeline.postprocess(output, item.record, resized)
            t1 = time.thread_time()
            gt = item.inputs.gt
            if gt is not None and device is not None:
                conn = connectivity_error(alpha.score, gt)
                metrics = ImageMetrics(conn=conn, **device)  # type: ignore[arg-type]
            elif gt is not None:
                metrics = self.pipeline.score(alpha, gt)
            t2 = time.thread_time()
            files = self.write(item, output, alpha, resized)
            cpu = {"postprocess": t1 - t0, "score": t2 - t1, "write": time.thread_time() - t2}
            return Finished(self.pipeline.row(item.record, metrics), cpu, files)
        except Exception as exc:  # the metrics computed so far stay beside the error
            if is_storage_error(exc):  # the run dir is full or read-only: stop, not one row each
                raise storage_error(exc) from None
            return Finished(self.pipeline.row(item.record, metrics, exc))

    def write(
        self,
        item: Item,
        output: npt.NDArray[np.float32],
        alpha: ScoredAlpha,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> list[ReturnedFile]:
        """The job's per-image files; npz is always at the scoring size (the evaluation
        artefact), image files at the size the job asked for. Written here, or returned for the
        driver to write (`return_files`)."""
        spec, record = self.outputs, item.record
        files: list[tuple[AnyPath, bytes]] = (
            self._image_files(item, output, alpha, resized) if spec.files else []
        )
        if self.return_files:
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
        item: Item,
        output: npt.NDArray[np.float32],
        alpha: ScoredAlpha,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> list[tuple[AnyPath, bytes]]:
        spec, record = self.outputs, item.record
        values: npt.NDArray[np.float32] | npt.NDArray[np.float64]
        rgb = item.rgb
        at_source = spec.size is OutputSize.SOURCE
        if at_source and alpha.values.shape != (record.height, record.width):
            values = self.pipeline.source_alpha(output, record, resized)
            alpha8 = None
        else:
            # the scored alpha is the one written (paper, or --output-size scored): every
            # protocol stores round(score * 255), so its 8-bit form is `stored`; the float64
            # copy only for the outputs computed from floats
            alpha8 = alpha.stored
            values = alpha.score if _FROM_FLOATS & set(spec.files) else alpha.values
            if rgb is not None and rgb.shape[:2] != values.shape:
                h, w = values.shape
                rgb = np.asarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
        return [
            (
                self.run.output_path(spec, kind, record.image_id, record.output_name),
                spec.encode(kind, values, rgb, alpha8),
            )
            for kind in spec.files
        ]
