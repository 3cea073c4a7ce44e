"""Matting metrics per image and their exact, mergeable dataset-level reduction."""

from modnet_batch.metrics.accumulator import ExactSum, MetricAccumulator
from modnet_batch.metrics.matting import (
    ImageMetrics,
    confusion,
    connectivity_error,
    gradient_error,
    image_metrics,
    mad,
    mse,
    sad,
)

__all__ = [
    "ExactSum",
    "ImageMetrics",
    "MetricAccumulator",
    "confusion",
    "connectivity_error",
    "gradient_error",
    "image_metrics",
    "mad",
    "mse",
    "sad",
]
