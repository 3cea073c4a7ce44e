"""The prepare stage, on a pool thread: decode one image and make its network input (or, under
`--decoding device`, decode only its matte and leave the photo to the device), or find that an
earlier attempt already wrote its files (Writes.keep_existing)."""

from __future__ import annotations

import time

from modnet_batch.data.dataset import Record
from modnet_batch.data.jpeg_header import device_fallback_reason
from modnet_batch.execution.stages import Item
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.results import RunDir
from modnet_batch.results.outputs import OutputKind, OutputSpec


class Preparer:
    """`prepare(record)` -> Item; `on_device`: photos the device's decoder takes are left to it."""

    def __init__(
        self,
        pipeline: ImagePipeline,
        run: RunDir,
        outputs: OutputSpec,
        *,
        keep_existing: bool = False,
        on_device: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.run = run
        self.outputs = outputs
        self.keep_existing = keep_existing
        self.on_device = on_device

    def prepare(self, record: Record, cpu_only: str | None = None) -> Item:
        """Decode and preprocess one image; `cpu_only`: why the device must not decode it."""
        item = Item(record=record)
        if cpu_only is not None:
            item.decoded_by = f"cpu: {cpu_only}"
        try:
            self.run.alpha_path(record.image_id)  # an id from a shard is checked before any use
            if self.keep_existing and self.outputs_exist(record):
                item.kept = True  # a resumed job without metrics: this image is already done
                return item
            t0 = time.thread_time()
            if self.on_device and cpu_only is None and self._leave_to_device(item):
                item.cpu = {"decode": time.thread_time() - t0}
                return item
            decoded = self.pipeline.decode(record)
            if self.outputs.needs_pixels:
                item.rgb = decoded.rgb
            t1 = time.thread_time()
            item.inputs = self.pipeline.preprocess(decoded)
            item.cpu = {"decode": t1 - t0, "preprocess": time.thread_time() - t1}
        except Exception as exc:  # one bad image becomes an error row; the unit goes on
            item.error = exc
        return item

    def _leave_to_device(self, item: Item) -> bool:
        """Whether the device decodes this photo (its matte is decoded here); if not, why not
        is noted in `item.decoded_by`."""
        record = item.record
        if record.prepared is not None:
            item.decoded_by = "cpu: prepared by ingest --prepare (nothing to decode)"
            return False
        if record.read_error is not None:  # its file or its row could not be read
            raise record.read_error
        reason = device_fallback_reason(record.image)
        if reason is not None:
            item.decoded_by = f"cpu: {reason}"
            return False
        matte = self.pipeline.decode_matte(record)
        item.gt = None if matte is None else self.pipeline.ground_truth(matte)
        item.encoded = record.image  # only once its matte is decoded
        return True

    def outputs_exist(self, record: Record) -> bool:
        """Whether every file this job writes for `record` exists (complete or absent)."""
        spec = self.outputs
        paths = [
            self.run.output_path(spec, kind, record.image_id, record.output_name)
            for kind in spec.files
        ]
        if OutputKind.NPZ in spec.kinds:
            paths.append(self.run.alpha_path(record.image_id))
        return bool(paths) and all(p.is_file() for p in paths)
