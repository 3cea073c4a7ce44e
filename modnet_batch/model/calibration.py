"""Calibration images from dataset dirs or image folders, preprocessed exactly as a job does.

Every image goes through the job's own ImagePipeline (exact decode, or the `ingest --prepare`
inputs), so int8 ranges are measured on the tensors evaluation feeds the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import META_FILE, Dataset, Record
from modnet_batch.data.decode import IMAGE_EXTENSIONS
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.build_config import CalibrationConfig, ImageSource, expand_path
from modnet_batch.pipeline import ImagePipeline


@dataclass(frozen=True)
class CalibrationImage:
    """One preprocessed image: `tensor` is 3xHxW float32 in [-1, 1], as the protocol makes it."""

    dataset: str  # the dataset dir or folder it came from (expanded path)
    image_id: str
    tensor: npt.NDArray[np.float32]


def select_ids(available: list[str], source: ImageSource) -> list[str]:
    """`source`'s choice among `available` ids: `ids` (in that order) or all sorted, minus
    `exclude`, then the first `take`. Unknown ids in `ids` raise; unknown `exclude` ids are fine."""
    known = set(available)
    if source.ids is not None:
        missing = [i for i in source.ids if i not in known]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModnetBatchError(
                f"calibration dataset {source.path}: ids not found: {shown}; list ids that exist "
                "(file names without extension) or drop `ids`"
            )
        chosen = list(dict.fromkeys(source.ids))
    else:
        chosen = sorted(known)
    excluded = set(source.exclude)
    chosen = [i for i in chosen if i not in excluded]
    return chosen[: source.take] if source.take is not None else chosen


def load_calibration_images(
    config: CalibrationConfig,
    *,
    input_shape: tuple[int, int] | None,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[CalibrationImage]:
    """Up to `limit` (default `config.images`) images, dataset by dataset in config order."""
    limit = config.images if limit is None else limit
    pipeline = ImagePipeline(config.protocol)
    out: list[CalibrationImage] = []
    for source in config.datasets:
        if len(out) >= limit:
            break
        root = expand_path(source.path, "calibration dataset")
        for record in _read_source(root, source, limit - len(out), pipeline):
            image_id = record.image_id
            tensor = pipeline.network_input(record)
            if input_shape is not None and tuple(tensor.shape[1:]) != tuple(input_shape):
                raise ModnetBatchError(
                    f"calibration image {image_id} from {root} becomes a {tensor.shape[1]}x"
                    f"{tensor.shape[2]} input under protocol {config.protocol}, but input_shape "
                    f"is {input_shape[0]}x{input_shape[1]}; set input_shape to match the "
                    "protocol, or to null for protocols whose size follows the image"
                )
            out.append(CalibrationImage(str(root), image_id, tensor))
        if progress is not None:
            progress(f"calibration images: {len(out)} after {root.name}")
    return out


def _read_source(
    root: Path, source: ImageSource, limit: int, pipeline: ImagePipeline
) -> Iterator[Record]:
    if (root / META_FILE).is_file():
        yield from _read_dataset(root, source, limit, pipeline)
    elif root.is_dir():
        yield from _read_folder(root, source, limit)
    else:
        raise ModnetBatchError(
            f"calibration dataset {root} does not exist; give a dataset dir (modnet-batch ingest) "
            "or a folder of images (PPM layout with image/, or flat)"
        )


def _read_dataset(
    root: Path, source: ImageSource, limit: int, pipeline: ImagePipeline
) -> Iterator[Record]:
    dataset = Dataset.open(root)
    wanted = select_ids(dataset.image_ids(), source)[:limit]
    found: dict[str, Record] = {}
    pending = set(wanted)
    for shard in dataset.shards:
        if not pending:
            break
        for record in pipeline.records(dataset.shard_path(shard)):
            if record.image_id not in pending:
                continue
            found[record.image_id] = _detached(record)  # outlives the shard's Arrow batch
            pending.discard(record.image_id)
    for image_id in wanted:  # the selection's order, not the shards'
        yield found[image_id]


def _detached(record: Record) -> Record:
    """A copy of `record` that owns its bytes (iter_records gives views into one batch)."""
    prepared = record.prepared
    if prepared is not None:
        matte = None if prepared.matte is None else np.array(prepared.matte)
        prepared = replace(prepared, image=np.array(prepared.image), matte=matte)
    return replace(record, image=bytes(record.image), matte=None, prepared=prepared)


def _read_folder(root: Path, source: ImageSource, limit: int) -> Iterator[Record]:
    folder = root / "image" if (root / "image").is_dir() else root
    files = {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    }
    if not files:
        raise ModnetBatchError(
            f"calibration folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    for image_id in select_ids(list(files), source)[:limit]:
        # an exact decode reads no size from the record
        yield Record(image_id, files[image_id].read_bytes(), None, width=0, height=0)
