"""Numba kernels of the fused batch norm: training forward, inference forward and backward.

Pure array code (numpy in, numpy out, float32 or float64, C-contiguous); the torch glue and
the autograd Function are in ``fused.py``. Two memory schedules, chosen by the caller:

* ``channel_*`` -- a ``(N, C, L)`` view, one channel per task. The ``N`` rows of one
  channel (``N * L`` values) are summed, then normalized while they are still in the
  core's cache, so the input crosses the memory bus once per pass instead of twice.
* ``rows_*`` -- a ``(R, W)`` view whose column ``j`` belongs to channel ``chan[j]``
  (channels-last: ``R = N*H*W`` rows of ``C`` values; a small-``L`` ``(N, C, L)`` tensor as
  ``N`` rows of ``C*L`` values). Each task reduces a block of rows into per-column partial
  sums, the partials are folded into channels, then a second pass normalizes.

Numerics (float32 input, mean 1e4, std 1e-2 must survive): sums are taken of ``x - k`` with
``k`` one sample of the channel (the shifted-data algorithm), in blocks of at most
``_BLOCK`` values in the input dtype, each block added into a float64 accumulator. The mean
is kept in float64 and split into ``hi + lo`` with ``hi`` in the input dtype, so ``x - hi``
cancels exactly and ``lo`` moves into the bias.

Fast-math: only ``reassoc`` (lets LLVM vectorize the reductions) and ``contract`` (FMA).
``nnan``/``ninf`` would let NaN vanish (it must propagate) and ``nsz`` together with
``reassoc`` lets LLVM rewrite ``(x - hi) - lo`` as ``x - (hi + lo)``, which loses exactly
the digits the shift is there to keep (measured: error 5e-3 instead of 5e-7).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

Array = np.ndarray

__all__ = [
    "channel_backward",
    "channel_forward_eval",
    "channel_forward_train",
    "rows_backward",
    "rows_forward_eval",
    "rows_forward_train",
]

_FASTMATH = {"reassoc", "contract"}
# Values summed in the input dtype before the float64 accumulator takes over: float32
# sums of 256 shifted values lose at most ~256 * 2**-24 (1.5e-5) relative, typically 1e-7.
_BLOCK = 256
# Rows of a (R, W) block summed per column in the input dtype (same reasoning as _BLOCK).
_ROW_BLOCK = 64


# ---------------------------------------------------------------- per-channel coefficients
@njit(fastmath=_FASTMATH, cache=True)
def _coefficients(
    mean: float, invstd: float, weight: float, bias: float, dtype_zero: float
) -> tuple[float, float, float]:
    """``(hi, scale, shift)`` in the input dtype with ``y = (x - hi) * scale + shift``.

    ``hi`` is the float64 mean rounded to the input dtype; the rounding remainder
    ``lo = mean - hi`` goes into ``shift = bias - lo * scale`` (formed in float64).
    """
    cast = type(dtype_zero)
    hi = cast(mean)
    lo = mean - hi
    scale = weight * invstd
    shift = bias - lo * scale
    return hi, cast(scale), cast(shift)


# ------------------------------------------------------------------------- row helpers
@njit(fastmath=_FASTMATH, cache=True)
def _row_moments(row: Array, k: float) -> tuple[float, float]:
    """``(sum(row - k), sum((row - k)**2))`` as float64, summed in blocks of ``_BLOCK``."""
    zero = row.dtype.type(0)
    s1 = 0.0
    s2 = 0.0
    n = row.shape[0]
    for start in range(0, n, _BLOCK):
        # A slice, so the loop index starts at 0: LLVM then knows it is never negative
        # (numba wraps negative indices) and emits plain vector loads, not gathers (4x).
        blk = row[start : start + _BLOCK]
        b1 = zero
        b2 = zero
        for i in range(blk.shape[0]):
            d = blk[i] - k
            b1 += d
            b2 += d * d
        s1 += b1
        s2 += b2
    return s1, s2


@njit(fastmath=_FASTMATH, cache=True)
def _row_normalize(
    row: Array, out: Array, hi: float, scale: float, shift: float, relu: bool
) -> None:
    """``out = (row - hi) * scale + shift``, then ``max(out, 0)`` if ``relu`` (NaN kept)."""
    zero = row.dtype.type(0)
    if relu:
        for i in range(row.shape[0]):
            v = (row[i] - hi) * scale + shift
            out[i] = zero if v <= zero else v
    else:
        for i in range(row.shape[0]):
            out[i] = (row[i] - hi) * scale + shift


@njit(fastmath=_FASTMATH, cache=True)
def _row_grad_sums(
    row: Array, dy: Array, hi: float, scale: float, shift: float, relu: bool
) -> tuple[float, float]:
    """``(sum(g), sum(g * (row - hi)))`` as float64, ``g = dy`` masked by the ReLU if any."""
    zero = row.dtype.type(0)
    s0 = 0.0
    s1 = 0.0
    n = row.shape[0]
    for start in range(0, n, _BLOCK):
        xb = row[start : start + _BLOCK]  # slices: see _row_moments
        gb = dy[start : start + _BLOCK]
        b0 = zero
        b1 = zero
        if relu:
            for i in range(xb.shape[0]):
                v = (xb[i] - hi) * scale + shift
                g = gb[i] if v > zero else zero
                b0 += g
                b1 += g * (xb[i] - hi)
        else:
            for i in range(xb.shape[0]):
                g = gb[i]
                b0 += g
                b1 += g * (xb[i] - hi)
        s0 += b0
        s1 += b1
    return s0, s1


@njit(fastmath=_FASTMATH, cache=True)
def _row_grad_input(
    row: Array,
    dy: Array,
    dx: Array,
    hi: float,
    scale: float,
    shift: float,
    a: float,
    b: float,
    c: float,
    relu: bool,
) -> None:
    """``dx = a * g + b * (row - hi) + c`` with ``g`` the (ReLU-masked) ``dy``."""
    zero = row.dtype.type(0)
    if relu:
        for i in range(row.shape[0]):
            v = (row[i] - hi) * scale + shift
            g = dy[i] if v > zero else zero
            dx[i] = a * g + b * (row[i] - hi) + c
    else:
        for i in range(row.shape[0]):
            dx[i] = a * dy[i] + b * (row[i] - hi) + c


@njit(fastmath=_FASTMATH, cache=True)
def _grad_terms(
    train: bool,
    count: int,
    mean: float,
    invstd: float,
    weight: float,
    s0: float,
    s1: float,
    dtype_zero: float,
) -> tuple[float, float, float, float, float]:
    """Coefficients of ``dx = a*g + b*(x - hi) + c`` and the two weight-gradient sums.

    With ``xhat = (x - mean) * invstd`` and ``m = count`` values per channel (Ioffe &
    Szegedy 2015, Section 3)::

        sum_g      = sum(g)                     -> dL/dbias
        sum_gxhat  = sum(g * xhat)              -> dL/dweight
        dx = weight * invstd * (g - sum_g/m - xhat * sum_gxhat/m)     (batch statistics)
        dx = weight * invstd * g                                      (population)

    ``s0 = sum(g)`` and ``s1 = sum(g * (x - hi))`` arrive from the reduction pass.
    """
    cast = type(dtype_zero)
    lo = mean - cast(mean)
    sum_gxhat = (s1 - lo * s0) * invstd
    a = weight * invstd
    if train:
        b = -a * invstd * sum_gxhat / count
        c = -a * s0 / count - b * lo
    else:
        b = 0.0
        c = 0.0
    return cast(a), cast(b), cast(c), s0, sum_gxhat


@njit(cache=True)
def _update_running(
    rmean: Array,
    rvar: Array,
    c: int,
    mean: float,
    var: float,
    count: int,
    momentum: float,
) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` (unbiased batch var)."""
    unbiased = var * count / (count - 1)
    rmean[c] = (1.0 - momentum) * rmean[c] + momentum * mean
    rvar[c] = (1.0 - momentum) * rvar[c] + momentum * unbiased


# ----------------------------------------------------------- schedule 1: channel slices
@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def channel_forward_train(
    x: Array,
    weight: Array,
    bias: Array,
    eps: float,
    relu: bool,
    y: Array,
    mean_out: Array,
    invstd_out: Array,
    rmean: Array,
    rvar: Array,
    momentum: float,
    group: int,
) -> None:
    """Training forward on ``x (N, C, L)``: statistics, then normalize, per channel group.

    A task owns ``group`` adjacent channels, so that it reads ``group * L`` contiguous
    values per row (short rows alone defeat the hardware prefetcher and alias in the
    cache). Writes ``y``, the float64 batch ``mean_out`` and ``invstd_out =
    1/sqrt(var + eps)`` (biased var), and updates ``rmean``/``rvar`` in place unless
    they are empty.
    """
    n_rows, n_chan, _ = x.shape
    count = n_rows * x.shape[2]
    zero = x.dtype.type(0)
    update = rmean.shape[0] > 0
    for g in prange((n_chan + group - 1) // group):
        c0 = g * group
        width = min(n_chan, c0 + group) - c0
        k = np.empty(width, x.dtype)
        for j in range(width):
            k[j] = x[0, c0 + j, 0]
        s1 = np.zeros(width)
        s2 = np.zeros(width)
        for n in range(n_rows):
            for j in range(width):
                a, b = _row_moments(x[n, c0 + j], k[j])
                s1[j] += a
                s2[j] += b
        hi = np.empty(width, x.dtype)
        scale = np.empty(width, x.dtype)
        shift = np.empty(width, x.dtype)
        for j in range(width):
            c = c0 + j
            d = s1[j] / count
            var = s2[j] / count - d * d
            if var < 0.0:  # rounding; written as a test so that a NaN variance stays NaN
                var = 0.0
            mean = k[j] + d
            invstd = 1.0 / np.sqrt(var + eps)
            mean_out[c] = mean
            invstd_out[c] = invstd
            if update:
                _update_running(rmean, rvar, c, mean, var, count, momentum)
            hi[j], scale[j], shift[j] = _coefficients(mean, invstd, weight[c], bias[c], zero)
        # The group's rows were just read: normalizing now reads them from cache, last
        # row first (the most recently read rows are the likeliest still in L1/L2).
        for n in range(n_rows - 1, -1, -1):
            for j in range(width - 1, -1, -1):
                _row_normalize(x[n, c0 + j], y[n, c0 + j], hi[j], scale[j], shift[j], relu)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def channel_forward_eval(
    x: Array,
    weight: Array,
    bias: Array,
    eps: float,
    relu: bool,
    y: Array,
    rmean: Array,
    rvar: Array,
    mean_out: Array,
    invstd_out: Array,
) -> None:
    """Inference forward on ``x (N, C, L)`` with the population statistics ``rmean/rvar``.

    Rows are split among threads in memory order. Also writes the float64
    ``mean_out``/``invstd_out`` that the backward reuses.
    """
    n_rows, n_chan, _ = x.shape
    zero = x.dtype.type(0)
    hi = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    shift = np.empty(n_chan, x.dtype)
    for c in range(n_chan):
        mean_out[c] = rmean[c]
        invstd_out[c] = 1.0 / np.sqrt(np.float64(rvar[c]) + eps)
        hi[c], scale[c], shift[c] = _coefficients(
            mean_out[c], invstd_out[c], weight[c], bias[c], zero
        )
    for i in prange(n_rows * n_chan):
        n = i // n_chan
        c = i - n * n_chan
        _row_normalize(x[n, c], y[n, c], hi[c], scale[c], shift[c], relu)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def channel_backward(
    x: Array,
    dy: Array,
    weight: Array,
    bias: Array,
    mean: Array,
    invstd: Array,
    train: bool,
    relu: bool,
    need_dx: bool,
    dx: Array,
    sum_g: Array,
    sum_gxhat: Array,
    group: int,
) -> None:
    """Backward on ``x, dy (N, C, L)``: the two reductions, then ``dx``, per channel group.

    ``mean``/``invstd`` are what the forward used (batch or population statistics,
    float64). Writes ``sum_g = dL/dbias``, ``sum_gxhat = dL/dweight`` and, if ``need_dx``,
    ``dx``. With ``relu`` the forward output was ``max(bn(x), 0)`` and ``g`` is ``dy``
    where that was positive (recomputed from ``x``, not stored).
    """
    n_rows, n_chan, _ = x.shape
    count = n_rows * x.shape[2]
    zero = x.dtype.type(0)
    for g in prange((n_chan + group - 1) // group):
        c0 = g * group
        width = min(n_chan, c0 + group) - c0
        hi = np.empty(width, x.dtype)
        scale = np.empty(width, x.dtype)
        shift = np.empty(width, x.dtype)
        for j in range(width):
            c = c0 + j
            hi[j], scale[j], shift[j] = _coefficients(mean[c], invstd[c], weight[c], bias[c], zero)
        s0 = np.zeros(width)
        s1 = np.zeros(width)
        for n in range(n_rows):
            for j in range(width):
                r0, r1 = _row_grad_sums(
                    x[n, c0 + j], dy[n, c0 + j], hi[j], scale[j], shift[j], relu
                )
                s0[j] += r0
                s1[j] += r1
        ca = np.empty(width, x.dtype)
        cb = np.empty(width, x.dtype)
        cc = np.empty(width, x.dtype)
        for j in range(width):
            c = c0 + j
            ca[j], cb[j], cc[j], sum_g[c], sum_gxhat[c] = _grad_terms(
                train, count, mean[c], invstd[c], weight[c], s0[j], s1[j], zero
            )
        if need_dx:
            for n in range(n_rows - 1, -1, -1):  # reverse: see channel_forward_train
                for j in range(width - 1, -1, -1):
                    _row_grad_input(
                        x[n, c0 + j],
                        dy[n, c0 + j],
                        dx[n, c0 + j],
                        hi[j],
                        scale[j],
                        shift[j],
                        ca[j],
                        cb[j],
                        cc[j],
                        relu,
                    )


# --------------------------------------------------------------- schedule 2: row blocks
@njit(cache=True)
def _row_chunks(n_rows: int, threads: int) -> Array:
    """Split ``n_rows`` into one contiguous chunk per thread: ``bounds[t]..bounds[t+1]``."""
    tasks = max(1, min(threads, n_rows))
    bounds = np.empty(tasks + 1, np.int64)
    for t in range(tasks + 1):
        bounds[t] = (n_rows * t) // tasks
    return bounds


@njit(fastmath=_FASTMATH, cache=True)
def _block_moments(x: Array, kcol: Array, out1: Array, out2: Array) -> None:
    """Add per-column ``sum(x - kcol)`` and ``sum((x - kcol)**2)`` of ``x (r, W)`` to out*."""
    n_rows, width = x.shape
    b1 = np.empty(width, x.dtype)
    b2 = np.empty(width, x.dtype)
    for start in range(0, n_rows, _ROW_BLOCK):
        b1[:] = 0
        b2[:] = 0
        xb = x[start : start + _ROW_BLOCK]
        for r in range(xb.shape[0]):
            row = xb[r]
            for j in range(width):
                d = row[j] - kcol[j]
                b1[j] += d
                b2[j] += d * d
        for j in range(width):
            out1[j] += b1[j]
            out2[j] += b2[j]


@njit(fastmath=_FASTMATH, cache=True)
def _block_normalize(x: Array, y: Array, hi: Array, scale: Array, shift: Array, relu: bool) -> None:
    """``y = (x - hi) * scale + shift`` per column (ReLU if asked) for ``x (r, W)``.

    Rows go last to first: the reduction pass just read this block first to last, so its
    tail is still in the core's cache and is reused before it is evicted.
    """
    zero = x.dtype.type(0)
    for r in range(x.shape[0] - 1, -1, -1):
        row = x[r]
        out = y[r]
        if relu:
            for j in range(x.shape[1]):
                v = (row[j] - hi[j]) * scale[j] + shift[j]
                out[j] = zero if v <= zero else v
        else:
            for j in range(x.shape[1]):
                out[j] = (row[j] - hi[j]) * scale[j] + shift[j]


@njit(fastmath=_FASTMATH, cache=True)
def _block_grad_sums(
    x: Array,
    dy: Array,
    hi: Array,
    scale: Array,
    shift: Array,
    relu: bool,
    out0: Array,
    out1: Array,
) -> None:
    """Add per-column ``sum(g)`` and ``sum(g * (x - hi))`` of a row block to out*."""
    n_rows, width = x.shape
    zero = x.dtype.type(0)
    b0 = np.empty(width, x.dtype)
    b1 = np.empty(width, x.dtype)
    for start in range(0, n_rows, _ROW_BLOCK):
        b0[:] = 0
        b1[:] = 0
        xb = x[start : start + _ROW_BLOCK]
        gb = dy[start : start + _ROW_BLOCK]
        for r in range(xb.shape[0]):
            row = xb[r]
            grow = gb[r]
            if relu:
                for j in range(width):
                    v = (row[j] - hi[j]) * scale[j] + shift[j]
                    g = grow[j] if v > zero else zero
                    b0[j] += g
                    b1[j] += g * (row[j] - hi[j])
            else:
                for j in range(width):
                    g = grow[j]
                    b0[j] += g
                    b1[j] += g * (row[j] - hi[j])
        for j in range(width):
            out0[j] += b0[j]
            out1[j] += b1[j]


@njit(fastmath=_FASTMATH, cache=True)
def _block_grad_input(
    x: Array,
    dy: Array,
    dx: Array,
    hi: Array,
    scale: Array,
    shift: Array,
    a: Array,
    b: Array,
    c: Array,
    relu: bool,
) -> None:
    """``dx = a * g + b * (x - hi) + c`` per column for a row block (rows last to first)."""
    zero = x.dtype.type(0)
    for r in range(x.shape[0] - 1, -1, -1):
        row = x[r]
        grow = dy[r]
        out = dx[r]
        if relu:
            for j in range(x.shape[1]):
                v = (row[j] - hi[j]) * scale[j] + shift[j]
                g = grow[j] if v > zero else zero
                out[j] = a[j] * g + b[j] * (row[j] - hi[j]) + c[j]
        else:
            for j in range(x.shape[1]):
                out[j] = a[j] * grow[j] + b[j] * (row[j] - hi[j]) + c[j]


@njit(cache=True)
def _fold_columns(partial: Array, chan: Array, n_chan: int) -> Array:
    """Sum ``partial (T, W)`` over tasks and over the columns of each channel: ``(C,)``."""
    out = np.zeros(n_chan)
    for t in range(partial.shape[0]):
        for j in range(partial.shape[1]):
            out[chan[j]] += partial[t, j]
    return out


@njit(cache=True)
def _column_coefficients(
    mean: Array, invstd: Array, weight: Array, bias: Array, chan: Array, zero: float
) -> tuple[Array, Array, Array]:
    """Per-column ``hi, scale, shift`` (see :func:`_coefficients`) for the row schedule."""
    width = chan.shape[0]
    hi = np.empty(width, weight.dtype)
    scale = np.empty(width, weight.dtype)
    shift = np.empty(width, weight.dtype)
    for j in range(width):
        c = chan[j]
        hi[j], scale[j], shift[j] = _coefficients(mean[c], invstd[c], weight[c], bias[c], zero)
    return hi, scale, shift


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def rows_forward_train(
    x: Array,
    chan: Array,
    first: Array,
    weight: Array,
    bias: Array,
    eps: float,
    relu: bool,
    y: Array,
    mean_out: Array,
    invstd_out: Array,
    rmean: Array,
    rvar: Array,
    momentum: float,
    threads: int,
) -> None:
    """Training forward on ``x (R, W)``; column ``j`` holds channel ``chan[j]``.

    ``first[c]`` is one column of channel ``c`` (its shift sample is ``x[0, first[c]]``).
    Every channel owns the same number of columns. Outputs as
    :func:`channel_forward_train`.
    """
    n_rows, width = x.shape
    n_chan = first.shape[0]
    count = n_rows * (width // n_chan)
    zero = x.dtype.type(0)
    kcol = np.empty(width, x.dtype)
    for j in range(width):
        kcol[j] = x[0, first[chan[j]]]
    bounds = _row_chunks(n_rows, threads)
    tasks = bounds.shape[0] - 1
    p1 = np.zeros((tasks, width))
    p2 = np.zeros((tasks, width))
    for t in prange(tasks):
        _block_moments(x[bounds[t] : bounds[t + 1]], kcol, p1[t], p2[t])
    s1 = _fold_columns(p1, chan, n_chan)
    s2 = _fold_columns(p2, chan, n_chan)
    update = rmean.shape[0] > 0
    for c in range(n_chan):
        k = x[0, first[c]]
        d = s1[c] / count
        var = s2[c] / count - d * d
        if var < 0.0:  # NaN stays NaN
            var = 0.0
        mean = k + d
        mean_out[c] = mean
        invstd_out[c] = 1.0 / np.sqrt(var + eps)
        if update:
            _update_running(rmean, rvar, c, mean, var, count, momentum)
    hi, scale, shift = _column_coefficients(mean_out, invstd_out, weight, bias, chan, zero)
    for t in prange(tasks):
        lo, up = bounds[t], bounds[t + 1]
        _block_normalize(x[lo:up], y[lo:up], hi, scale, shift, relu)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def rows_forward_eval(
    x: Array,
    chan: Array,
    weight: Array,
    bias: Array,
    eps: float,
    relu: bool,
    y: Array,
    rmean: Array,
    rvar: Array,
    mean_out: Array,
    invstd_out: Array,
    threads: int,
) -> None:
    """Inference forward on ``x (R, W)`` with population statistics (see rows_forward_train)."""
    n_chan = rmean.shape[0]
    zero = x.dtype.type(0)
    for c in range(n_chan):
        mean_out[c] = rmean[c]
        invstd_out[c] = 1.0 / np.sqrt(np.float64(rvar[c]) + eps)
    hi, scale, shift = _column_coefficients(mean_out, invstd_out, weight, bias, chan, zero)
    bounds = _row_chunks(x.shape[0], threads)
    for t in prange(bounds.shape[0] - 1):
        lo, up = bounds[t], bounds[t + 1]
        _block_normalize(x[lo:up], y[lo:up], hi, scale, shift, relu)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def rows_backward(
    x: Array,
    dy: Array,
    chan: Array,
    weight: Array,
    bias: Array,
    mean: Array,
    invstd: Array,
    train: bool,
    relu: bool,
    need_dx: bool,
    dx: Array,
    sum_g: Array,
    sum_gxhat: Array,
    threads: int,
) -> None:
    """Backward on ``x, dy (R, W)``; outputs as :func:`channel_backward`."""
    n_rows, width = x.shape
    n_chan = mean.shape[0]
    count = n_rows * (width // n_chan)
    zero = x.dtype.type(0)
    hi, scale, shift = _column_coefficients(mean, invstd, weight, bias, chan, zero)
    bounds = _row_chunks(n_rows, threads)
    tasks = bounds.shape[0] - 1
    p0 = np.zeros((tasks, width))
    p1 = np.zeros((tasks, width))
    for t in prange(tasks):
        lo, up = bounds[t], bounds[t + 1]
        _block_grad_sums(x[lo:up], dy[lo:up], hi, scale, shift, relu, p0[t], p1[t])
    s0 = _fold_columns(p0, chan, n_chan)
    s1 = _fold_columns(p1, chan, n_chan)
    ca = np.empty(n_chan, x.dtype)
    cb = np.empty(n_chan, x.dtype)
    cc = np.empty(n_chan, x.dtype)
    for ch in range(n_chan):
        ca[ch], cb[ch], cc[ch], sum_g[ch], sum_gxhat[ch] = _grad_terms(
            train, count, mean[ch], invstd[ch], weight[ch], s0[ch], s1[ch], zero
        )
    if need_dx:
        col_a = np.empty(width, x.dtype)
        col_b = np.empty(width, x.dtype)
        col_c = np.empty(width, x.dtype)
        for j in range(width):
            col_a[j] = ca[chan[j]]
            col_b[j] = cb[chan[j]]
            col_c[j] = cc[chan[j]]
        for t in prange(tasks):
            lo, up = bounds[t], bounds[t + 1]
            _block_grad_input(
                x[lo:up], dy[lo:up], dx[lo:up], hi, scale, shift, col_a, col_b, col_c, relu
            )
