"""Reused memory for the fused kernels' large outputs (``y`` forward, ``dx`` backward).

A fresh large tensor costs a page fault per 4 KB the first time it is written: for a
51 MB activation about 12,500 faults, several times the kernel's own time (measured:
docs/performance.md, "The kernels"). glibc maps allocations above 32 MB fresh from the
kernel every time, so PyTorch's default allocator pays this on every call. The pool keeps
anonymous ``mmap`` buffers and hands one out again once no tensor uses it (its reference
count, held by every tensor storage made from it, tells), so a training loop writes into
memory that is already mapped.
"""

from __future__ import annotations

import mmap
import sys
import threading

import torch
from torch import Tensor

__all__ = ["OutputPool", "output_pool"]

# glibc serves allocations up to this size (its largest dynamic mmap threshold, 64-bit)
# from the heap once one of that size was freed, reusing mapped memory; larger ones are
# mapped fresh every time. Below it the pool would only add its own overhead (measured).
_GLIBC_MMAP_MAX = 32 << 20


class OutputPool:
    """Buffers for outputs of at least ``min_bytes``, at most ``max_bytes`` kept in all.

    Args:
        min_bytes: smaller outputs come from ``torch.empty_like`` (glibc reuses those).
        max_bytes: memory the pool may keep mapped; beyond it outputs are not pooled.

    >>> pool = OutputPool(min_bytes=1 << 20, max_bytes=64 << 20)
    >>> x = torch.empty(1024, 1024)
    >>> a = pool.empty_like(x); ptr = a.data_ptr(); del a
    >>> pool.empty_like(x).data_ptr() == ptr  # the same memory, already mapped
    True
    """

    def __init__(self, min_bytes: int = _GLIBC_MMAP_MAX, max_bytes: int = 512 << 20) -> None:
        if min_bytes < 0 or max_bytes < 0:
            raise ValueError(
                f"min_bytes and max_bytes must be >= 0; got {min_bytes} and {max_bytes}"
            )
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._buffers: dict[int, list[mmap.mmap]] = {}
        self._lock = threading.Lock()

    @property
    def mapped_bytes(self) -> int:
        """Bytes the pool keeps mapped (in use or free)."""
        return sum(size * len(bufs) for size, bufs in self._buffers.items())

    def clear(self) -> None:
        """Forget every buffer (those still used by tensors live on until the tensors go)."""
        with self._lock:
            self._buffers.clear()

    def empty_like(self, x: Tensor) -> Tensor:
        """An uninitialized tensor with ``x``'s shape, dtype and strides.

        ``x`` must be dense (contiguous in some dimension order, as contiguous and
        channels-last tensors are); others get ``torch.empty_like``.
        """
        nbytes = x.numel() * x.element_size()
        if nbytes < self.min_bytes or x.device.type != "cpu":
            return torch.empty_like(x)
        if not x.is_contiguous() and not _dense(x):
            return torch.empty_like(x)
        size = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        with self._lock:
            buf = self._free_buffer(size)
            if buf is None:
                buf = self._new_buffer(size)
        if buf is None:
            return torch.empty_like(x)
        flat = torch.frombuffer(buf, dtype=x.dtype, count=x.numel())
        return flat.as_strided(x.shape, x.stride())

    def _free_buffer(self, size: int) -> mmap.mmap | None:
        for buf in self._buffers.get(size, ()):
            # References: the list, the loop variable, getrefcount's argument. Any more
            # means a tensor storage (or a view of one) still holds the memory.
            if sys.getrefcount(buf) == 3:
                return buf
        return None

    def _new_buffer(self, size: int) -> mmap.mmap | None:
        if self.mapped_bytes + size > self.max_bytes:
            self._drop_free_buffers()
            if self.mapped_bytes + size > self.max_bytes:
                return None
        buf = mmap.mmap(-1, size)
        self._buffers.setdefault(size, []).append(buf)
        return buf

    def _drop_free_buffers(self) -> None:
        for size in list(self._buffers):
            # Same reference count as in _free_buffer: list, loop variable, argument.
            kept = [b for b in self._buffers[size] if sys.getrefcount(b) > 3]
            if kept:
                self._buffers[size] = kept
            else:
                del self._buffers[size]


def _dense(x: Tensor) -> bool:
    """Whether ``x``'s strides describe a permutation of a contiguous layout."""
    expected = 1
    for dim in sorted(range(x.dim()), key=lambda d: (x.stride(d), x.shape[d])):
        if x.shape[dim] != 1 and x.stride(dim) != expected:
            return False
        expected *= x.shape[dim]
    return True


#: The pool the fused kernels use for their outputs.
output_pool = OutputPool()
