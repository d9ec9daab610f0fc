"""The IDX reader and writer: round trips for every type code, raw and gzipped, and each
way a file can be malformed (bad magic, unknown type, truncation, trailing bytes, bad gzip).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from bnlab.data.errors import CorruptFileError
from bnlab.data.idx import decode_idx, encode_idx, read_idx, read_idx_header, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path: Path, dtype: type, compress: bool) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"  # no .gz, but gzipped content
    write_idx(path, array, compress=True)
    np.testing.assert_array_equal(read_idx(path), array)


def test_header_layout_is_big_endian_and_standard(tmp_path: Path) -> None:
    data = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(data) == 16 + 2 * 28 * 28
    header = read_idx_header(write_idx(tmp_path / "h.gz", np.zeros((2, 28, 28), np.uint8)))
    assert header.shape == (2, 28, 28) and header.magic == 0x803 and header.file_bytes == len(data)
    assert encode_idx(np.array([1], dtype=np.int32))[4:] == b"\x00\x00\x00\x01\x00\x00\x00\x01"


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.zeros(3, np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_unsupported_dtype_and_rank_are_rejected() -> None:
    with pytest.raises(TypeError, match="int64"):
        encode_idx(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="rank 0"):
        encode_idx(np.array(3, dtype=np.uint8))


def test_truncated_file_names_file_and_sizes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    full = path.read_bytes()
    path.write_bytes(full[:-100])
    with pytest.raises(CorruptFileError) as exc:
        read_idx(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"expected {len(full)} bytes" in msg and f"found {len(full) - 100} bytes" in msg


def test_trailing_bytes_are_an_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros(5, np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(CorruptFileError, match="expected 13 bytes, found 14 bytes"):
        read_idx(path)


def test_bad_magic_is_reported_in_hex(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(CorruptFileError, match=r"magic.*found 0x12340801"):
        read_idx(path)


def test_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x00")
    with pytest.raises(CorruptFileError, match=r"type code.*found 0x07"):
        read_idx(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x00\x00", "at least 4 bytes"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated"),
        (b"\x00\x00\x08\x00", "rank"),
    ],
)
def test_short_headers(content: bytes, fragment: str) -> None:
    with pytest.raises(CorruptFileError, match=fragment):
        decode_idx(content, "mem")


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    payload = gzip.compress(encode_idx(np.arange(1000, dtype=np.int32)))
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(CorruptFileError, match="gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
