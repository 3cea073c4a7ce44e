"""Batches sized by pixels, not by count (`--decoding device`): decoding a batch of 24 MP photos
on a GPU must not exhaust its memory, so a batch holds images until their decoded pixels (from
the headers' sizes) reach a budget; an image larger than the budget is a batch alone."""

from __future__ import annotations

from modnet_batch.errors import ModnetBatchError


class PixelBudget:
    """The images of one batch being filled: at most `max_images`, at most `budget_pixels`
    pixels together (or one image)."""

    def __init__(self, budget_pixels: int, max_images: int) -> None:
        if budget_pixels < 1 or max_images < 1:
            raise ModnetBatchError(
                f"pixel batches need a budget >= 1 pixel and >= 1 image, got {budget_pixels} "
                f"pixels and {max_images} images"
            )
        self.budget_pixels = budget_pixels
        self.max_images = max_images
        self.held = 0
        self.images = 0

    def full_for(self, pixels: int) -> bool:
        """Whether an image of `pixels` must start the next batch."""
        return self.images > 0 and (
            self.held + pixels > self.budget_pixels or self.images >= self.max_images
        )

    def add(self, pixels: int) -> None:
        self.held += pixels
        self.images += 1

    def clear(self) -> None:
        self.held = self.images = 0
