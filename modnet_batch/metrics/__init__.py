"""Matting metrics per image and their exact, mergeable dataset-level reduction."""

from modnet_batch.metrics.accumulator import ExactSum, MetricAccumulator
from modnet_batch.metrics.matting import (
    CONFUSION,
    DATASET,
    PER_IMAGE,
    ImageMetrics,
    confusion,
    connectivity_error,
    gradient_error,
    image_metrics,
    mad,
    mse,
    sad,
)
from modnet_batch.metrics.row import COLUMNS, ImageRow

__all__ = [
    "COLUMNS",
    "CONFUSION",
    "DATASET",
    "PER_IMAGE",
    "ExactSum",
    "ImageMetrics",
    "ImageRow",
    "MetricAccumulator",
    "confusion",
    "connectivity_error",
    "gradient_error",
    "image_metrics",
    "mad",
    "mse",
    "sad",
]
