"""Photographs as tensors: skimage.data names, files in several formats and modes, and the
errors for unknown names and unreadable files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.data.errors import CorruptFileError
from bnlab.data.images import load_image, to_chw_float
from bnlab.errors import UnknownNameError


def test_astronaut_is_512_square_rgb_in_unit_range() -> None:
    import skimage.data

    img = load_image("astronaut")
    assert img.shape == (3, 512, 512) and img.dtype == torch.float32
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    raw = skimage.data.astronaut()
    # Channel-first layout: (c, y, x) of the tensor is (y, x, c) of the array / 255.
    assert img[2, 10, 20].item() == pytest.approx(raw[10, 20, 2] / 255.0)


def test_grey_photograph_becomes_three_equal_channels() -> None:
    img = load_image("camera")
    assert img.shape == (3, 512, 512)
    torch.testing.assert_close(img[0], img[2])


def test_png_file_round_trip(tmp_path: Path) -> None:
    import skimage.io

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(20, 30, 4), dtype=np.uint8)
    skimage.io.imsave(tmp_path / "x.png", rgba, check_contrast=False)
    img = load_image(tmp_path / "x.png")
    assert img.shape == (3, 20, 30)  # alpha dropped
    expected = torch.from_numpy(rgba[..., :3].transpose(2, 0, 1).astype(np.float32) / 255.0)
    torch.testing.assert_close(img, expected)


def test_array_conversions() -> None:
    assert to_chw_float(np.ones((2, 2), dtype=bool)).sum().item() == 12.0
    white16 = to_chw_float(np.full((1, 1, 3), 65535, np.uint16))
    assert white16.flatten().tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(CorruptFileError, match=r"float pixel range.*found \[2, 2\]"):
        to_chw_float(np.full((2, 2, 3), 2.0))
    with pytest.raises(CorruptFileError, match="image shape"):
        to_chw_float(np.zeros((2, 2, 5), np.uint8))


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="astronaut") as exc:
        load_image("astronot")
    assert exc.value.name == "astronot"


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(CorruptFileError, match=r"broken\.png"):
        load_image(bad)
