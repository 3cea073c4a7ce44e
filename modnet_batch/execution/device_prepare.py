"""The prepare stage on the engine's device (`--decoding device`): photos gather into groups
bounded by their decoded pixels (execution.pixel_batches) and are decoded and made network
inputs there together; a photo the device refuses is prepared on the CPU instead, its reason
counted."""

from __future__ import annotations

import time
from collections.abc import Callable

from modnet_batch.data.dataset import Record
from modnet_batch.data.decode import EncodedBytes
from modnet_batch.engine.device_work import (
    DeviceFallback,
    DeviceOutcome,
    DevicePreparer,
    EncodedPhoto,
)
from modnet_batch.errors import is_storage_error
from modnet_batch.execution.pixel_batches import PixelBudget
from modnet_batch.execution.stages import Item, StageClock
from modnet_batch.pipeline import ImagePipeline, NetworkInput

MIN_GROUP = 16  # photos a group may hold at least (more with larger batches)


class DeviceGroups:
    """The photos waiting for the device's decoder, at most `preparer.group_pixels` pixels
    and `max_images` photos at a time (a larger photo is a group alone)."""

    def __init__(
        self,
        preparer: DevicePreparer,
        pipeline: ImagePipeline,
        prepare_on_cpu: Callable[[Record, str], Item],
        *,
        max_images: int,
        keep_rgb: bool,
    ) -> None:
        self.preparer = preparer
        self.pipeline = pipeline
        self.prepare_on_cpu = prepare_on_cpu
        self.keep_rgb = keep_rgb
        self.budget = PixelBudget(preparer.group_pixels, max(max_images, MIN_GROUP))
        self.group: list[Item] = []

    def full_for(self, item: Item) -> bool:
        """Whether `item` must start the next group (decode this one first)."""
        return self.budget.full_for(item.record.height * item.record.width)

    def add(self, item: Item) -> None:
        self.group.append(item)
        self.budget.add(item.record.height * item.record.width)

    def decode(self, clock: StageClock) -> list[Item]:
        """The group decoded and prepared (on the device, or on the CPU where it refused), in
        order; its wall time counted as `device_decode`, the CPU's fallbacks as pool seconds."""
        todo, self.group = self.group, []
        self.budget.clear()
        t = time.perf_counter()
        photos = [EncodedPhoto(_encoded(i), i.record.height, i.record.width) for i in todo]
        outcomes = self.preparer.prepare(photos, self.pipeline.protocol, self.keep_rgb)
        ready = [self._settled(i, o, clock) for i, o in zip(todo, outcomes, strict=True)]
        clock.add("device_decode", t)
        return ready

    def _settled(self, item: Item, outcome: DeviceOutcome, clock: StageClock) -> Item:
        item.encoded = None
        if isinstance(outcome, DeviceFallback):
            fallback = self.prepare_on_cpu(item.record, outcome.reason)
            clock.add_cpu(fallback.cpu)
            return fallback
        item.decoded_by = "device"
        if isinstance(outcome, Exception):  # an error row for this photo; the group goes on
            if is_storage_error(outcome) or isinstance(outcome, MemoryError):
                raise outcome
            item.error = outcome
        else:
            item.inputs = NetworkInput(None, item.gt, on_device=outcome.network_input)
            if self.keep_rgb:
                item.rgb = outcome.rgb
        return item


def _encoded(item: Item) -> EncodedBytes:
    assert item.encoded is not None  # the prepare stage left this photo to the device
    return item.encoded
