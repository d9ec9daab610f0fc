"""The fused CPU batch norm's torch glue: memory-schedule planning, :func:`forward` and
:func:`backward` over the numba kernels of ``_numba.py`` (float32/float64, contiguous or
channels-last, any rank 2-5).

No autograd and no argument checks here: ``bnlab.norm.ops.library`` registers these two functions
as the PyTorch operators ``bnlab::fused_batch_norm`` and ``bnlab::fused_batch_norm_backward``
(with shape inference and an autograd formula) and is what everything else calls.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

from bnlab.norm.ops.kernels import _numba as K

__all__ = [
    "Plan",
    "backward",
    "forward",
    "plan_for",
]

# The channel-slice schedule reads each channel once from memory when a channel's rows
# are long enough to stream (L values each); shorter rows go to the row schedule.
_MIN_CHANNEL_ROW = 64
# The row schedule widens rows of fewer than this many values (C small, channels-last) by
# viewing ``rep`` consecutive rows as one, so the inner loop stays vectorized.
_MIN_ROW_WIDTH = 64
# Above this many columns the row schedule's per-column partial sums outgrow the cache.
_MAX_ROW_WIDTH = 1 << 16
# The channel schedule gives a task enough adjacent channels to read this many contiguous
# bytes per row (one page: the hardware prefetcher streams within a page), while the
# task's slice stays under _MAX_SLICE (x and dy of a slice share a 2 MB L2 in backward).
_MIN_SEGMENT = 4096
_MAX_SLICE = 512 * 1024


_NUMPY_DTYPE: dict[torch.dtype, np.dtype[Any]] = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}


class _Memory:
    """A tensor's memory described by numpy's array interface (data pointer, shape, strides)."""

    __slots__ = ("__array_interface__", "tensor")

    def __init__(self, t: Tensor) -> None:
        self.tensor = t  # the array's base holds this object, and so the tensor
        itemsize = t.element_size()
        self.__array_interface__ = {
            "version": 3,
            "data": (t.data_ptr(), False),
            "shape": tuple(t.shape),
            "strides": tuple(s * itemsize for s in t.stride()),
            "typestr": _NUMPY_DTYPE[t.dtype].str,
        }


def as_array(t: Tensor) -> np.ndarray:
    """A numpy view of CPU float32/float64 tensor ``t``'s memory, valid while ``t`` lives.

    Unlike ``Tensor.numpy()``, which marks the tensor's storage as not resizable for
    good, this leaves the storage as it was, so parameters and buffers the kernels read
    can still be resized by their owner (FSDP2 frees and re-allocates a parameter's
    storage between uses, and refuses storage that ``numpy()`` has touched).

    >>> t = torch.arange(6.0).reshape(2, 3)
    >>> as_array(t.t()).tolist()
    [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    >>> t.untyped_storage().resize_(0).nbytes()  # still resizable
    0
    """
    return np.asarray(_Memory(t))


@dataclass(frozen=True)
class Plan:
    """How a tensor of one shape and layout is laid out for the kernels.

    Attributes:
        schedule: ``"channel"`` (one ``(N, C, L)`` channel slice per task, the input read
            from memory once) or ``"rows"`` (row blocks of a ``(R, W)`` view, two passes).
        layout: ``"contiguous"`` (NCHW-style) or ``"channels_last"`` (channels innermost).
        shape: the 3-D (channel) or 2-D (rows) view the kernels see.
        rep: for ``"rows"``, how many channel groups one view row holds (``W = rep * C``
            channels-last) or values per channel group (``W = C * rep`` contiguous); for
            ``"channel"``, how many adjacent channels one task owns.
        ndim: rank of the planned tensor.
    """

    schedule: str
    layout: str
    shape: tuple[int, ...]
    rep: int
    ndim: int

    def view(self, t: Tensor) -> np.ndarray:
        """``t`` (same shape as the planned input) as the kernels' numpy array.

        A view of ``t``'s memory when ``t`` has the plan's layout, else a copy in it.
        """
        a = as_array(t)
        if self.layout == "channels_last":
            # (N, C, *S) with C innermost in memory -> (N, *S, C): a C-contiguous view.
            a = a.transpose(0, *range(2, self.ndim), 1)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        return a.reshape(self.shape)

    def out_view(self, t: Tensor) -> np.ndarray:
        """Like :meth:`view` for an output made by ``torch.empty_like(input)``: never a copy.

        Raises:
            RuntimeError: ``t`` does not have the plan's layout (a bug in the caller).
        """
        a = as_array(t)
        if self.layout == "channels_last":
            a = a.transpose(0, *range(2, self.ndim), 1)
        if not a.flags.c_contiguous:
            raise RuntimeError(f"output strides {t.stride()} do not match the {self.layout} plan")
        return a.reshape(self.shape)

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """For ``"rows"``: ``chan`` (each column's channel), ``first`` (a column per channel)."""
        return _column_maps(self.layout, self.shape[1], self.rep)


@functools.lru_cache(maxsize=256)
def _column_maps(layout: str, width: int, rep: int) -> tuple[np.ndarray, np.ndarray]:
    num_channels = width // rep
    if layout == "channels_last":  # column j = (row group, channel j % C)
        chan = np.arange(width, dtype=np.int64) % num_channels
        first = np.arange(num_channels, dtype=np.int64)
    else:  # column j = (channel j // L, position j % L)
        chan = np.arange(width, dtype=np.int64) // rep
        first = np.arange(num_channels, dtype=np.int64) * rep
    chan.setflags(write=False)
    first.setflags(write=False)
    return chan, first


# numba's pool size, fixed at its first parallel launch (NUMBA_NUM_THREADS).
_MAX_THREADS: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
# Below this many values a kernel runs on one thread: waking the second thread and
# joining it (per parallel region; a kernel has two) costs more than it saves on small
# tensors. The measurements that set it: docs/performance.md, "The kernels".
_SERIAL_MAX_NUMEL = 1 << 17
# numba's thread count is per calling thread; remember what was set in each.
_thread_state = threading.local()


_pool_started = False


def _threads(numel: int) -> int:
    """Kernel threads for a tensor of ``numel`` values: 1 if small, else torch's setting.

    ``torch.set_num_threads`` governs both libraries: numba's OpenMP pool is the one
    torch uses (same libgomp), and starting it resets OpenMP's thread count to
    ``NUMBA_NUM_THREADS``, which would silently undo a user's ``torch.set_num_threads``.
    So the pool is started here and torch's count restored. ``numba.set_num_threads``
    costs ~3 us, so it is called only on a change (a network's layers come in runs of
    large and small ones, so that is a few times per step).
    """
    global _pool_started
    wanted = torch.get_num_threads()
    full = min(wanted, _MAX_THREADS)
    if not _pool_started:
        numba.set_num_threads(full)  # starts the pool
        _pool_started = True
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        _thread_state.threads = full
    n = 1 if numel < _SERIAL_MAX_NUMEL else full
    if getattr(_thread_state, "threads", None) != n:
        numba.set_num_threads(n)
        _thread_state.threads = n
    return n


_PLANS: dict[tuple[Any, ...], Plan] = {}


def plan_for(input: Tensor, threads: int | None = None) -> Plan:
    """The kernel schedule and view for ``input`` (``(N, C, *)``, any memory format).

    A tensor that is neither contiguous nor channels-last is planned as contiguous (and
    copied by :meth:`Plan.view`). Plans are cached by shape, strides and thread count.

    >>> plan_for(torch.empty(64, 64, 56, 56)).schedule
    'channel'
    >>> plan_for(torch.empty(64, 64, 56, 56).to(memory_format=torch.channels_last)).schedule
    'rows'
    """
    tasks = threads if threads is not None else max(1, torch.get_num_threads())
    key = (input.shape, input.stride(), tasks)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(input, tasks)
        if len(_PLANS) > 1024:  # shapes keep changing: start over rather than grow
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _make_plan(input: Tensor, tasks: int) -> Plan:
    n, c, ndim = input.shape[0], input.shape[1], input.dim()
    length = input.numel() // max(1, n * c)
    if not input.is_contiguous() and input.movedim(1, -1).is_contiguous():
        rows = n * length
        rep = 1
        for k in range(max(1, -(-_MIN_ROW_WIDTH // c)), 1, -1):
            if rows % k == 0:
                rep = k
                break
        return Plan("rows", "channels_last", (rows // rep, rep * c), rep, ndim)
    if length >= _MIN_CHANNEL_ROW:
        group = _channel_group(n, c, length, input.element_size(), tasks)
        groups = -(-c // group)
        balanced = groups % tasks == 0 or groups >= 4 * tasks
        if balanced or c * length > _MAX_ROW_WIDTH:
            return Plan("channel", "contiguous", (n, c, length), group, ndim)
    return Plan("rows", "contiguous", (n, c * length), length, ndim)


def _channel_group(n: int, c: int, length: int, itemsize: int, tasks: int) -> int:
    """Adjacent channels per task in the channel schedule.

    Enough that a task reads ``_MIN_SEGMENT`` contiguous bytes per row, few enough that a
    task's slice (x and dy in backward) stays within ``_MAX_SLICE`` of cache and that
    every thread gets a task.
    """
    row = length * itemsize
    largest = max(1, min(-(-_MIN_SEGMENT // row), _MAX_SLICE // (n * row), c // tasks))
    for group in range(largest, 0, -1):  # prefer equal groups, an equal number per thread
        if c % group == 0 and (c // group) % tasks == 0:
            return group
    return largest


@functools.lru_cache(maxsize=64)
def _constant(num_channels: int, fill: float, dtype: torch.dtype) -> np.ndarray:
    a = np.full(num_channels, fill, dtype=_NUMPY_DTYPE[dtype])
    a.setflags(write=False)
    return a


def _np_param(t: Tensor | None, num_channels: int, fill: float, dtype: torch.dtype) -> np.ndarray:
    """A ``(C,)`` parameter as a contiguous numpy array of ``dtype`` (``fill`` if None)."""
    if t is None:
        return _constant(num_channels, fill, dtype)
    if t.dtype != dtype or not t.is_contiguous():
        t = t.to(dtype).contiguous()
    return as_array(t)


_EMPTY = {dt: np.empty(0, dtype=_NUMPY_DTYPE[dt]) for dt in _NUMPY_DTYPE}


def forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the forward kernel: ``(y, float64 mean, float64 invstd)``, each ``(C,)``.

    ``y = (x - mean) * invstd * weight + bias`` (then ``max(., 0)`` with ``relu``) with the
    batch's mean and ``invstd = 1 / sqrt(biased var + eps)`` in training, where the running
    buffers (if given) move toward the mean and unbiased variance in place; the running
    statistics otherwise (``mean``/``invstd`` then hold those). ``y`` has ``x``'s strides
    when ``x`` is contiguous or channels-last (dense), else contiguous strides.
    """
    threads = _threads(x.numel())
    plan = plan_for(x, threads)
    if plan.layout == "contiguous" and not x.is_contiguous():
        x = x.contiguous()
    num_channels = x.shape[1]
    w = _np_param(weight, num_channels, 1.0, x.dtype)
    b = _np_param(bias, num_channels, 0.0, x.dtype)
    y = torch.empty_like(x)  # x is contiguous or channels-last here: the plan's layout
    mean = np.empty(num_channels)
    invstd = np.empty(num_channels)
    xv, yv = plan.view(x), plan.out_view(y)
    if training:
        rm, rv, write_back = _running_arrays(running_mean, running_var, x.dtype)
        if plan.schedule == "channel":
            K.channel_forward_train(
                xv, w, b, eps, relu, yv, mean, invstd, rm, rv, momentum, plan.rep
            )
        else:
            chan, first = plan.columns()
            K.rows_forward_train(
                xv, chan, first, w, b, eps, relu, yv, mean, invstd, rm, rv, momentum, threads
            )
        if write_back is not None:
            write_back()
    else:
        if running_mean is None or running_var is None:
            raise ValueError("eval mode needs running_mean and running_var")
        rm = _np_param(running_mean, num_channels, 0.0, x.dtype)
        rv = _np_param(running_var, num_channels, 1.0, x.dtype)
        if plan.schedule == "channel":
            K.channel_forward_eval(xv, w, b, eps, relu, yv, rm, rv, mean, invstd)
        else:
            chan, _first = plan.columns()
            K.rows_forward_eval(xv, chan, w, b, eps, relu, yv, rm, rv, mean, invstd, threads)
    return y, torch.from_numpy(mean), torch.from_numpy(invstd)


def _running_arrays(
    running_mean: Tensor | None, running_var: Tensor | None, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, Callable[[], None] | None]:
    """The running buffers as numpy arrays the kernel updates in place, and a write-back.

    Buffers that are not contiguous in ``dtype`` are updated through a copy, written back
    by the returned callable (None when the kernel writes the buffers directly). None
    buffers give empty arrays (no update).
    """
    if running_mean is None or running_var is None:
        return _EMPTY[dtype], _EMPTY[dtype], None
    direct = all(
        t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"
        for t in (running_mean, running_var)
    )
    if direct:
        return as_array(running_mean), as_array(running_var), None
    rm = running_mean.detach().to("cpu", dtype).contiguous().clone()
    rv = running_var.detach().to("cpu", dtype).contiguous().clone()

    def write_back() -> None:
        with torch.no_grad():
            running_mean.copy_(rm)
            running_var.copy_(rv)

    return as_array(rm), as_array(rv), write_back


def backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    training: bool,
    relu: bool,
    need_dx: bool,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """The backward kernel: ``(dx or None, dweight, dbias)``, the last two float64 ``(C,)``.

    With ``g = dy`` masked where the ReLU was off and ``m`` values per channel::

        dbias = sum(g)      dweight = sum(g * xhat)
        dx = weight * invstd * (g - sum(g)/m - xhat * sum(g * xhat)/m)   (training)
        dx = weight * invstd * g                                         (eval)

    ``mean``/``invstd`` are :func:`forward`'s (float64); ``x`` may have any strides.
    """
    threads = _threads(x.numel())
    plan = plan_for(x, threads)
    if plan.layout == "contiguous" and not x.is_contiguous():
        x = x.contiguous()
    num_channels = x.shape[1]
    w = _np_param(weight, num_channels, 1.0, x.dtype)
    b = _np_param(bias, num_channels, 0.0, x.dtype)
    mean_np, invstd_np = as_array(mean), as_array(invstd)
    xv = plan.view(x)
    dyv = plan.view(dy if dy.dtype == x.dtype else dy.to(x.dtype))
    dx = torch.empty_like(x) if need_dx else None
    dxv = plan.out_view(dx) if dx is not None else xv  # never written when need_dx is False
    sum_g = np.empty(num_channels)
    sum_gxhat = np.empty(num_channels)
    args = (w, b, mean_np, invstd_np, training, relu, need_dx, dxv, sum_g, sum_gxhat)
    if plan.schedule == "channel":
        K.channel_backward(xv, dyv, *args, plan.rep)
    else:
        chan, _first = plan.columns()
        K.rows_backward(xv, dyv, chan, *args, threads)
    # float64 sums; autograd casts a Function's gradients to each input's dtype itself
    # (in C++, cheaper than a cast here: tested in tests/norm/test_fused.py).
    return dx, torch.from_numpy(sum_gxhat), torch.from_numpy(sum_g)
