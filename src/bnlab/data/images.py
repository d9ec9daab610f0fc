"""RGB photographs as tensors: scikit-image's bundled ``skimage.data`` images (offline) or
any image file a user names, as float32 ``(3, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bnlab.data.errors import CorruptFileError
from bnlab.errors import UnknownNameError

# skimage.data images that ship inside the scikit-image wheel (no download needed).
SKIMAGE_NAMES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


def to_chw_float(array: np.ndarray, name: str = "<array>") -> Tensor:
    """Convert an image array to float32 ``(3, H, W)`` in ``[0, 1]``.

    Accepts ``(H, W)`` grey (copied to three channels), ``(H, W, 3)`` RGB and ``(H, W, 4)``
    RGBA (alpha dropped); bool, uint8 (/255), uint16 (/65535) or float in ``[0, 1]``.

    Raises:
        CorruptFileError: another shape, dtype, or float values outside ``[0, 1]``.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = np.stack([a, a, a], axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise CorruptFileError(name, "image shape", "(H, W), (H, W, 3) or (H, W, 4)", str(a.shape))
    a = a[..., :3]
    if a.dtype == np.bool_:
        f = a.astype(np.float32)
    elif a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        if f.size and (float(f.min()) < 0.0 or float(f.max()) > 1.0):
            raise CorruptFileError(
                name, "float pixel range", "[0, 1]", f"[{f.min():g}, {f.max():g}]"
            )
    else:
        raise CorruptFileError(name, "pixel type", "bool, uint8, uint16 or float", str(a.dtype))
    return torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))


def load_image(name_or_path: str | Path) -> Tensor:
    """Load a photograph as float32 ``(3, H, W)`` with values in ``[0, 1]``.

    Args:
        name_or_path: a name from :data:`SKIMAGE_NAMES` (e.g. ``"astronaut"``, 512x512 RGB)
            or a path to an image file (PNG, JPEG, TIFF, ... anything ``skimage.io`` reads).

    Raises:
        UnknownNameError: neither a known name nor an existing file (lists the names).
        CorruptFileError: a file that cannot be decoded as an image.

    >>> load_image("astronaut").shape
    torch.Size([3, 512, 512])
    """
    key = str(name_or_path)
    path = Path(key).expanduser()
    if key in SKIMAGE_NAMES and not path.is_file():
        import skimage.data

        return to_chw_float(getattr(skimage.data, key)(), f"skimage.data.{key}")
    if not path.is_file():
        raise UnknownNameError("image (skimage.data name or existing file)", key, SKIMAGE_NAMES)
    import skimage.io

    try:
        array = skimage.io.imread(path)
    except Exception as exc:  # the imageio/PIL backends raise many types for bad files
        raise CorruptFileError(path, "image file", "a readable image", repr(exc)) from exc
    return to_chw_float(array, str(path))
