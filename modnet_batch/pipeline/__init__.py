"""The per-image pipeline of a job (decode policy, preprocessing, postprocessing, scoring)."""

from modnet_batch.pipeline.decode_mode import AUTO_MARGIN, DecodeMode, auto_reduce
from modnet_batch.pipeline.image import (
    STAGES,
    Decoded,
    ImagePipeline,
    NetworkInput,
    error_text,
    is_transient,
)

__all__ = [
    "AUTO_MARGIN",
    "STAGES",
    "DecodeMode",
    "Decoded",
    "ImagePipeline",
    "NetworkInput",
    "auto_reduce",
    "error_text",
    "is_transient",
]
