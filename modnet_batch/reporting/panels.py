"""The report's pictures of one image: input, ground truth, prediction, error map and an RGBA
cutout over a checkerboard, each at the photo's own aspect ratio, as data URIs.

The prediction is the job's own (alpha/<id>.npz, else its alpha PNG or cutout output), never
recomputed; the error is |prediction - ground truth| at the size the job scored it, the ground
truth made from the exactly decoded matte by the run's protocol, as the job made it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import Record
from modnet_batch.data.decode import decode_image, decode_matte
from modnet_batch.data.parquet import ParquetColumns, open_dataset
from modnet_batch.errors import ModnetBatchError
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.reporting.plots import error_lut
from modnet_batch.results import RunDir

# The long side of every panel, in pixels: enough to judge hair, small enough that 12 images
# x 5 panels stay a few MB of page.
PANEL_LONG = 400
JPEG_QUALITY = 85
CHECKER = 10  # the checkerboard's square, in display pixels


@dataclass(frozen=True)
class Picture:
    """One displayed image: its caption, data URI and display size (the photo's aspect)."""

    caption: str
    uri: str
    width: int
    height: int
    colorbar: bool = False  # an error map: shown with the colour bar beside it


@dataclass
class ImagePictures:
    """What a report shows of one image: pictures by kind (input, gt, prediction, error,
    cutout) and notes on what could not be shown."""

    image_id: str
    width: int
    height: int
    pictures: dict[str, Picture] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def display_size(height: int, width: int, long: int = PANEL_LONG) -> tuple[int, int]:
    """(height, width) with the long side `long` and the photo's aspect ratio."""
    scale = long / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _uri(ext: str, pixels: npt.NDArray[np.uint8]) -> str:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else []
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
    if not ok:
        raise ModnetBatchError(f"could not encode a report panel as {ext}")
    mime = "jpeg" if ext == ".jpg" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode()


def _fit(
    image: npt.NDArray[np.uint8] | npt.NDArray[np.float64], size: tuple[int, int]
) -> npt.NDArray[np.generic]:
    """`image` at display size (h, w): area-averaged down, linear up (a 480x288 scored alpha of
    a landscape photo is stretched back to the photo's aspect, never shown squeezed)."""
    h, w = size
    shrink = image.shape[0] >= h and image.shape[1] >= w
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (w, h), interpolation=method))


def checkerboard(height: int, width: int, cell: int = CHECKER) -> npt.NDArray[np.float32]:
    """HxWx3 float32 light and mid grey squares: where a cutout is transparent."""
    yy, xx = np.indices((height, width))
    light = ((yy // cell + xx // cell) % 2 == 0)[..., None]
    return np.where(light, np.float32(235.0), np.float32(190.0)).astype(np.float32)


def cutout(rgb: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The photo's colours with the matte as alpha, composited over a checkerboard."""
    a = (alpha.astype(np.float32) / 255.0)[..., None]
    board = checkerboard(*alpha.shape)
    out = rgb.astype(np.float32) * a + board * (1.0 - a)
    shown: npt.NDArray[np.uint8] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return shown


def heat(error: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """|error| in [0, 1] -> RGB through the colour bar's map."""
    index = np.clip(np.rint(error * 255.0), 0, 255).astype(np.uint8)
    return error_lut()[index]


def _display_rgb(record: Record, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """The photo at display size; a large JPEG is decoded reduced inside libjpeg (display only:
    at least twice the panel per side)."""
    long = max(record.height, record.width)
    reduce = 1
    for r in (8, 4, 2):
        if long / r >= 2 * PANEL_LONG:
            reduce = r
            break
    rgb = decode_image(record.image, name=record.image_id, reduce=reduce)
    return np.asarray(_fit(rgb, size), dtype=np.uint8)


def _error(
    pred: npt.NDArray[np.uint8], gt: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], str]:
    """|pred - gt| where the job scored it; a prediction kept at another size (an image output,
    not the npz) is compared with the ground truth resized to it, and says so."""
    note = ""
    if gt.shape != pred.shape:
        gt = np.asarray(
            cv2.resize(gt, (pred.shape[1], pred.shape[0]), interpolation=cv2.INTER_AREA)
        )
        note = f" (at the output's {pred.shape[1]}x{pred.shape[0]}, not as scored)"
    return np.abs(pred.astype(np.float64) / 255.0 - gt), note


def pictures(
    run: RunDir,
    dataset_path: str,
    protocol: str,
    ids: Iterable[str],
    *,
    ground_truth: bool = True,
    label: str = "",
) -> tuple[dict[str, ImagePictures], list[str]]:
    """The pictures of each of `ids` (missing ids are skipped) and page-level notes (a dataset
    that cannot be opened: no pictures at all). `label` prefixes the prediction's captions."""
    wanted = set(ids)
    if not wanted:
        return {}, []
    try:
        job = run.read_job()  # Parquet read in place: the columns the job read
        columns = ParquetColumns(
            job.get("image_column"), job.get("matte_column"), job.get("id_column")
        )
        dataset = open_dataset(dataset_path, columns)
    except ModnetBatchError as exc:
        return {}, [f"no pictures: the dataset could not be opened ({exc})"]
    pipeline = ImagePipeline(protocol)  # exact decode of the matte: the ground truth as scored
    spec = run.output_spec()
    prefix = f"{label}: " if label else ""
    out: dict[str, ImagePictures] = {}
    for record in dataset.records():
        if record.image_id not in wanted:
            continue
        item = ImagePictures(record.image_id, record.width, record.height)
        out[record.image_id] = item
        size = display_size(record.height, record.width)
        dh, dw = size
        try:
            rgb = _display_rgb(record, size)
        except (ModnetBatchError, OSError) as exc:
            item.notes.append(f"the photo could not be read: {exc}")
            continue
        item.pictures["input"] = Picture(
            f"input {record.width}x{record.height}", _uri(".jpg", rgb), dw, dh
        )
        pred = run.read_prediction(record.image_id, record.output_name, spec)
        matte = None
        if ground_truth and record.matte is not None:
            try:
                matte = decode_matte(record.matte, name=f"{record.image_id} (matte)")
            except ModnetBatchError as exc:
                item.notes.append(f"the ground truth could not be read: {exc}")
        if matte is not None:
            gt_shown = np.asarray(_fit(matte, size), dtype=np.uint8)
            item.pictures["gt"] = Picture("ground truth", _uri(".png", gt_shown), dw, dh)
        if pred is None:
            item.notes.append("the job kept no alpha of this image (--output without it)")
            continue
        pred_shown = np.asarray(_fit(pred, size), dtype=np.uint8)
        item.pictures["prediction"] = Picture(
            f"{prefix}prediction ({pred.shape[1]}x{pred.shape[0]})",
            _uri(".png", pred_shown),
            dw,
            dh,
        )
        if matte is not None:
            error, note = _error(pred, pipeline.ground_truth(matte))
            shown = np.asarray(_fit(error, size), dtype=np.float64)
            item.pictures["error"] = Picture(
                f"{prefix}|prediction - GT|{note}", _uri(".jpg", heat(shown)), dw, dh, True
            )
        item.pictures["cutout"] = Picture(
            f"{prefix}cutout (RGBA over a checkerboard)",
            _uri(".jpg", cutout(rgb, pred_shown)),
            dw,
            dh,
        )
    return out, []
