"""Batches sized by pixels, not by count (issue 15's device decode): decoding a batch of 24 MP
photos on a GPU must not exhaust its memory, so a batch holds images until their decoded pixels
(from the headers' sizes) reach a budget; an image larger than the budget is a batch alone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from modnet_batch.errors import ModnetBatchError


def pixel_batches(
    sizes: Iterable[tuple[int, int]], budget_pixels: int, max_images: int
) -> Iterator[list[int]]:
    """Indices of `sizes` ((height, width) each, in order) cut into consecutive batches of at
    most `max_images` images whose pixels sum to at most `budget_pixels` (or one image)."""
    if budget_pixels < 1 or max_images < 1:
        raise ModnetBatchError(
            f"pixel batches need a budget >= 1 pixel and >= 1 image, got {budget_pixels} "
            f"pixels and {max_images} images"
        )
    batch: list[int] = []
    held = 0
    for i, (h, w) in enumerate(sizes):
        pixels = h * w
        if batch and (held + pixels > budget_pixels or len(batch) >= max_images):
            yield batch
            batch, held = [], 0
        batch.append(i)
        held += pixels
    if batch:
        yield batch
