"""The IDX file format (MNIST's): a validating reader and a writer, raw or gzipped.

Layout: two zero bytes, a type code, the rank ``r``; then ``r`` big-endian uint32 sizes; then
the values, big-endian, in C order. E.g. MNIST images are ``0x00000803`` (uint8, rank 3),
``N x 28 x 28``; labels ``0x00000801``, ``N``. See http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnlab.data.cache import atomic_write_bytes
from bnlab.data.errors import CorruptFileError
from bnlab.data.memory import check_memory

GZIP_MAGIC = b"\x1f\x8b"

# Type code -> big-endian numpy dtype, as the format defines them.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}


@dataclass(frozen=True)
class IdxHeader:
    """The header of an IDX file: element type code, shape, and where the data begins."""

    type_code: int
    shape: tuple[int, ...]

    @property
    def magic(self) -> int:
        """The 32-bit magic number, e.g. ``0x803`` for uint8 rank 3."""
        return (self.type_code << 8) | len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        """The big-endian element dtype of the file."""
        return IDX_DTYPES[self.type_code]

    @property
    def header_bytes(self) -> int:
        """Size of the header: 4 magic bytes plus 4 bytes per dimension."""
        return 4 + 4 * len(self.shape)

    @property
    def file_bytes(self) -> int:
        """Size of a well-formed (uncompressed) file with this header."""
        return self.header_bytes + math.prod(self.shape) * self.dtype.itemsize


def _parse_header(data: bytes | bytearray | memoryview, name: str) -> IdxHeader:
    if len(data) < 4:
        raise CorruptFileError(name, "IDX header", "at least 4 bytes", f"{len(data)} bytes")
    magic = bytes(data[:4])
    if magic[:2] != b"\x00\x00":
        raise CorruptFileError(
            name,
            "IDX magic number",
            "0x0000TTRR (two zero bytes, type code, rank)",
            f"0x{magic.hex()}",
        )
    code, rank = magic[2], magic[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise CorruptFileError(name, "IDX type code", f"one of {valid}", f"0x{code:02x}")
    if rank == 0:
        raise CorruptFileError(name, "IDX rank", "at least 1", "0")
    if len(data) < 4 + 4 * rank:
        raise CorruptFileError(
            name, "IDX header (truncated)", f"{4 + 4 * rank} bytes", f"{len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(bytes(data[4 : 4 + 4 * rank]), dtype=">u4"))
    return IdxHeader(type_code=code, shape=shape)


def decode_idx(data: bytes | bytearray, name: str = "<bytes>") -> np.ndarray:
    """Decode an uncompressed IDX byte string into a native-endian numpy array.

    Args:
        data: the whole file content.
        name: used in error messages (a path or ``archive:member``).

    Returns:
        A writable array of the file's shape and element type (native byte order).

    Raises:
        CorruptFileError: bad magic, unknown type code, truncated header, or a size that
            differs from the header's (truncated or with trailing bytes).
    """
    header = _parse_header(data, name)
    if len(data) != header.file_bytes:
        shape = " x ".join(str(d) for d in header.shape)
        raise CorruptFileError(
            name,
            f"file size for a {shape} array of {header.dtype.name}",
            f"{header.file_bytes} bytes",
            f"{len(data)} bytes",
        )
    values = np.frombuffer(data, dtype=header.dtype, offset=header.header_bytes)
    # astype copies into a writable, native-endian array (torch.from_numpy needs both).
    return values.astype(header.dtype.newbyteorder("="), copy=True).reshape(header.shape)


def read_file_bytes(path: str | Path, *, limit: int | None = None) -> bytes:
    """Return a file's content, gunzipped when it starts with the gzip magic bytes.

    Args:
        limit: refuse content (uncompressed) larger than this many bytes, without
            decompressing more than ``limit + 1`` of them (a gzip bomb).

    Raises:
        CorruptFileError: a gzip stream that is truncated or damaged, or content over
            ``limit``.
        FileNotFoundError: the file does not exist.
    """
    raw = Path(path).read_bytes()
    return maybe_gunzip(raw, str(path), limit=limit)


def maybe_gunzip(raw: bytes, name: str, *, limit: int | None = None) -> bytes:
    """Gunzip ``raw`` if it starts with the gzip magic bytes, else return it unchanged.

    Args:
        limit: refuse an uncompressed size over ``limit`` bytes; decompression stops there.

    Raises:
        CorruptFileError: a truncated or damaged gzip stream, or one over ``limit``.
    """
    if not raw.startswith(GZIP_MAGIC):
        if limit is not None and len(raw) > limit:
            raise CorruptFileError(name, "size", f"at most {limit} bytes", f"{len(raw)} bytes")
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read() if limit is None else stream.read(limit + 1)
    except (EOFError, OSError, zlib.error) as exc:
        raise CorruptFileError(name, "gzip stream", "a complete gzip stream", str(exc)) from exc
    if limit is not None and len(data) > limit:
        raise CorruptFileError(
            name, "uncompressed size", f"at most {limit} bytes", f"more than {limit} bytes"
        )
    return data


def _open_content(path: Path) -> io.BufferedIOBase:
    """``path`` opened for reading its content: through gzip when it is gzipped."""
    with path.open("rb") as handle:
        start = handle.read(2)
    if start == GZIP_MAGIC:
        return gzip.open(path, "rb")
    return path.open("rb")


def _read_exactly(stream: io.BufferedIOBase, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream``; return how many bytes it got (less at the end)."""
    got = 0
    while got < len(buffer):
        n = stream.readinto(buffer[got:])
        if not n:
            break
        got += n
    return got


def read_idx(path: str | Path, *, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file, raw or gzipped (detected by content, not by name).

    The header is read first; then exactly the bytes it declares are read (decompressed)
    into one buffer, and one byte more must not exist: a truncated file, trailing data or
    a gzip bomb (a small ``.gz`` whose content is far larger than its header says) is
    refused without holding more than the declared size. Memory for the declared size is
    checked before it is allocated (:func:`bnlab.data.memory.check_memory`).

    Args:
        max_bytes: refuse a header declaring more than this many bytes (``None``: only the
            memory check).

    Returns:
        A native-endian numpy array with the shape and element type the header states.

    Raises:
        CorruptFileError: see :func:`decode_idx`; also a damaged or truncated gzip stream,
            content longer than declared, or a declared size over ``max_bytes``.
        DataError: the declared size does not fit in the memory available.
        FileNotFoundError: the file does not exist.

    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte.gz"
    >>> _ = write_idx(p, np.array([7, 2, 1], dtype=np.uint8))
    >>> read_idx(p).tolist()
    [7, 2, 1]
    """
    p = Path(path)
    header = read_idx_header(p)
    declared = header.file_bytes - header.header_bytes
    shape = " x ".join(str(d) for d in header.shape)
    what = f"file size for a {shape} array of {header.dtype.name}"
    if max_bytes is not None and header.file_bytes > max_bytes:
        raise CorruptFileError(p, what, f"at most {max_bytes} bytes", f"{header.file_bytes}")
    if not _is_gzip(p) and p.stat().st_size != header.file_bytes:
        raise CorruptFileError(p, what, f"{header.file_bytes} bytes", f"{p.stat().st_size} bytes")
    check_memory(declared, f"{p} ({shape} {header.dtype.name})")
    buffer = bytearray(declared)
    try:
        with _open_content(p) as stream:
            stream.read(header.header_bytes)
            got = _read_exactly(stream, memoryview(buffer))
            extra = stream.read(1)
    except (EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(p, "gzip stream", "a complete gzip stream", str(exc)) from exc
    if got < declared:
        found = f"{header.header_bytes + got} bytes"
        raise CorruptFileError(p, what, f"{header.file_bytes} bytes", found)
    if extra:
        raise CorruptFileError(
            p, what, f"{header.file_bytes} bytes", f"more than {header.file_bytes} bytes"
        )
    values = np.frombuffer(buffer, dtype=header.dtype).reshape(header.shape)
    # Native byte order, writable (torch.from_numpy needs both); one-byte types need no copy.
    return values.astype(header.dtype.newbyteorder("="), copy=False)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def read_idx_header(path: str | Path) -> IdxHeader:
    """Read only the header of an IDX file (raw or gzipped), without loading the data.

    Raises:
        CorruptFileError: a header that is truncated or invalid, or a damaged gzip stream.
    """
    p = Path(path)
    if p.exists() and not p.is_file():  # a FIFO would block, a device never end
        raise CorruptFileError(p, "file type", "a regular file", "something else")
    try:
        with _open_content(p) as handle:
            head = handle.read(4)
            rank = head[3] if len(head) == 4 else 0
            head += handle.read(4 * rank)
    except (EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(p, "gzip stream", "a complete gzip stream", str(exc)) from exc
    return _parse_header(head, str(p))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (uncompressed).

    Raises:
        TypeError: the dtype has no IDX type code (IDX holds u1, i1, i2, i4, f4, f8).
        ValueError: a 0-d array, or a dimension too large for uint32.
    """
    arr = np.asarray(array)
    code = _CODES_BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise TypeError(
            f"IDX cannot hold dtype {arr.dtype}; expected uint8, int8, int16, int32, "
            "float32 or float64"
        )
    if arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"IDX needs an array of rank 1..255, got rank {arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise ValueError(f"IDX dimensions must fit in uint32, got shape {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, atomically; gzipped if ``compress`` (default: the
    name ends in ``.gz``). The gzip header carries no time stamp, so output is reproducible.

    Returns:
        The path written.
    """
    p = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else p.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(p, data)
    return p
