"""`alpha/<image_id>.npz`: the predicted alpha of one image, uint8 HxW, key `alpha`."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import numpy.typing as npt

from modnet_batch.storage import AnyPath, UriPath, atomic_write_bytes

# zlib level 1 instead of np.savez_compressed's 6: on the 41 ppm100-dev alphas (480x288) a file
# is 12% larger (12.7 vs 11.4 kB) for 2.3x less CPU (0.9 vs 2.1 ms), CPU the network needs more.
ALPHA_COMPRESSLEVEL = 1


def write_alpha(path: AnyPath, alpha: npt.NDArray[np.uint8]) -> None:
    """Compressed, key `alpha`, uint8 HxW, loads with allow_pickle=False; written atomically."""
    atomic_write_bytes(path, encode_alpha(alpha))


def encode_alpha(alpha: npt.NDArray[np.uint8]) -> bytes:
    """The bytes of an alpha file: the same container as np.savez_compressed (a zip of
    `alpha.npy`), at a faster zlib level."""
    buf = io.BytesIO()
    level = ALPHA_COMPRESSLEVEL
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf,
        zf.open("alpha.npy", "w", force_zip64=True) as fh,
    ):
        np.lib.format.write_array(fh, np.ascontiguousarray(alpha), allow_pickle=False)
    return buf.getvalue()


def read_alpha(path: AnyPath) -> npt.NDArray[np.uint8]:
    """The uint8 HxW alpha written by `write_alpha`."""
    source = io.BytesIO(path.read_bytes()) if isinstance(path, UriPath) else path
    with np.load(source, allow_pickle=False) as data:
        return np.asarray(data["alpha"], dtype=np.uint8)
