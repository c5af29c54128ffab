"""Numba CPU kernels of the conv2d layer family: the same functions and signatures as the numpy reference
(`localnet/backends/numpy/conv.py`, the oracle they are tested against, which states the conventions).

Everything the kernels call lives in this one file on purpose: Numba's on-disk cache (`cache=True`) keys a compiled
function on its own source file only, so a helper in another module could change without the cached kernels
noticing.

Design: one sample at a time, im2col into a preallocated contiguous (C_in*kh*kw, Ho*Wo) buffer (rows are kernel
offsets, so the inner loop copies a run of an input row; padding is handled by bounds, never by a padded copy),
then a BLAS product (`np.dot` inside `@njit` calls SciPy's BLAS, or MKL, localnet/blas.py) written straight into
the sample's (C_out, Ho*Wo) block of the NCHW output, so no transposition pass is needed; the buffer stays in
cache, which made conv ~1.4x faster than one im2col buffer for the whole batch and one big product. conv_transpose
is the reverse (product, then col2im adding into the output) and the weight gradient sums one product per sample
(the error block times the buffer transposed). Pooling is plain loops. Every kernel is serial apart from BLAS, with no
`parallel` and no `fastmath` (it would let LLVM drop NaN checks), so results are deterministic for a given BLAS
thread count. They match the reference to rounding only: sums run in a different order.
"""

import numpy as np
from numba import njit, uint64

from ..numpy.conv import _check_pool, _check_shape, _out_size  # the reference's checks: one place for what a
# kernel refuses

JIT = dict(cache=True, nogil=True, error_model="numpy")  # numpy error model: no division checks, so loops vectorise



# ---------------------------------------------------------------------------------------------------------------
# Compiled kernels
# ---------------------------------------------------------------------------------------------------------------
@njit(**JIT)
def _span(n_out, n_in, offset, s, p):
    """Output positions o in [lo, hi) whose input position o*s + offset - p lies inside 0..n_in-1."""
    d = offset - p
    lo = 0 if d >= 0 else (-d + s - 1) // s
    last = n_in - 1 - d
    hi = 0 if last < 0 else min(n_out, last // s + 1)
    return lo, max(lo, hi)


@njit(**JIT)
def _im2col(x, n, kh, kw, s, p, ho, wo, cols):
    """cols[(c*kh + i)*kw + j, oy*Wo + ox] = zero-padded x[n, c, oy*s + i, ox*s + j], for sample n (x and cols
    C-contiguous)."""
    _, c_in, H, W = x.shape
    xf, cf, hw = x.reshape(-1), cols.reshape(-1), ho * wo
    su = uint64(s)
    for c in range(c_in):
        for i in range(kh):
            for j in range(kw):
                r = ((c * kh + i) * kw + j) * hw
                lo, hi = _span(wo, W, j, s, p)
                for oy in range(ho):
                    base = r + oy * wo
                    y = oy * s + i - p
                    if y < 0 or y >= H:
                        cf[base:base + wo] = 0
                        continue
                    cf[base:base + lo] = 0
                    cf[base + hi:base + wo] = 0
                    # unsigned indices: a signed index is checked for wrap-around (x[-1]) at every element,
                    # which keeps LLVM from vectorising the copy (3-4x slower at LeNet's shapes)
                    # (both start at output column lo, whose input column lo*s + j - p is >= 0 by _span)
                    dst, src = uint64(base + lo), uint64(((n * c_in + c) * H + y) * W + lo * s + j - p)
                    for t in range(uint64(hi - lo)):
                        cf[dst + t] = xf[src + t * su]


@njit(**JIT)
def _col2im(cols, y, n, kh, kw, s, p, ho, wo):
    """Adjoint of _im2col: adds each buffer entry into y[n] where it came from (padding positions are dropped)."""
    _, c_in, H, W = y.shape
    yf, cf, hw = y.reshape(-1), cols.reshape(-1), ho * wo
    su = uint64(s)
    for c in range(c_in):
        for i in range(kh):
            for j in range(kw):
                r = ((c * kh + i) * kw + j) * hw
                lo, hi = _span(wo, W, j, s, p)
                for oy in range(ho):
                    yy = oy * s + i - p
                    if yy < 0 or yy >= H:
                        continue
                    src, dst = uint64(r + oy * wo + lo), uint64(((n * c_in + c) * H + yy) * W + lo * s + j - p)
                    for t in range(uint64(hi - lo)):  # unsigned, from column lo: see _im2col
                        yf[dst + t * su] += cf[src + t]


@njit(**JIT)
def _conv(x, Wm, b, kh, kw, s, p, ho, wo):
    n_b, c_out, hw = x.shape[0], Wm.shape[0], ho * wo
    cols = np.empty((Wm.shape[1], hw), dtype=x.dtype)  # one sample's columns: stays in cache for the product
    a = np.empty((n_b, c_out, hw), dtype=x.dtype)
    for n in range(n_b):
        _im2col(x, n, kh, kw, s, p, ho, wo, cols)
        an = a[n]
        np.dot(Wm, cols, an)  # (C_out, Ho*Wo): already sample n's NCHW block
        for o in range(c_out):
            bo = b[o]
            for q in range(hw):
                an[o, q] += bo
    return a.reshape(n_b, c_out, ho, wo)


@njit(**JIT)
def _conv_transpose(h, VmT, c, c_in, kh, kw, s, p, H, W):
    n_b, c_out, ho, wo = h.shape
    h2 = h.reshape(n_b, c_out, ho * wo)
    cols = np.empty((VmT.shape[0], ho * wo), dtype=h.dtype)
    y = np.empty((n_b, c_in, H, W), dtype=h.dtype)
    for n in range(n_b):
        for ch in range(c_in):
            y[n, ch] = c[ch]
    for n in range(n_b):
        np.dot(VmT, h2[n], cols)  # (C_in*kh*kw, Ho*Wo)
        _col2im(cols, y, n, kh, kw, s, p, ho, wo)
    return y


@njit(**JIT)
def _conv_weight_grads(x, e, kh, kw, s, p):
    n_b, c_out, ho, wo = e.shape
    e2 = e.reshape(n_b, c_out, ho * wo)
    cols = np.empty((x.shape[1] * kh * kw, ho * wo), dtype=x.dtype)
    part = np.empty((c_out, cols.shape[0]), dtype=x.dtype)
    dW = np.zeros((c_out, cols.shape[0]), dtype=x.dtype)
    db = np.zeros(c_out, dtype=x.dtype)
    for n in range(n_b):
        _im2col(x, n, kh, kw, s, p, ho, wo, cols)
        en = e2[n]
        np.dot(en, cols.T, part)  # cols.T is F-contiguous: BLAS takes it transposed, no copy
        dW += part
        for o in range(c_out):
            db[o] += en[o].sum()
    return dW, db


@njit(**JIT)
def _max_pool(s, k):
    n_b, ch, H, W = s.shape
    ho, wo = H // k, W // k
    h = np.empty((n_b, ch, ho, wo), dtype=s.dtype)
    idx = np.empty((n_b, ch, ho, wo), dtype=np.int64)
    for n in range(n_b):
        for c in range(ch):
            for oy in range(ho):
                for ox in range(wo):
                    best = s[n, c, oy * k, ox * k]
                    arg = 0
                    for di in range(k):
                        for dj in range(k):
                            v = s[n, c, oy * k + di, ox * k + dj]
                            # first maximum wins; a NaN wins once and stays (as numpy's argmax)
                            if best == best and (v > best or v != v):
                                best = v
                                arg = di * k + dj
                    h[n, c, oy, ox] = best
                    idx[n, c, oy, ox] = arg
    return h, idx


@njit(**JIT)
def _avg_pool(s, k):
    n_b, ch, H, W = s.shape
    ho, wo = H // k, W // k
    h = np.empty((n_b, ch, ho, wo), dtype=s.dtype)
    kk = k * k
    for n in range(n_b):
        for c in range(ch):
            for oy in range(ho):
                for ox in range(wo):
                    acc = s[n, c, oy * k, ox * k]
                    for di in range(k):
                        for dj in range(k):
                            if di or dj:
                                acc += s[n, c, oy * k + di, ox * k + dj]
                    h[n, c, oy, ox] = acc / kk
    return h


@njit(**JIT)
def _max_unpool(h, idx, k, H, W):
    n_b, ch, ho, wo = h.shape
    s = np.zeros((n_b, ch, H, W), dtype=h.dtype)
    for n in range(n_b):
        for c in range(ch):
            for oy in range(ho):
                for ox in range(wo):
                    q = idx[n, c, oy, ox]
                    s[n, c, oy * k + q // k, ox * k + q % k] = h[n, c, oy, ox]
    return s


@njit(**JIT)
def _avg_unpool(h, k, H, W, divide):
    """Each value copied to its window; divided by k*k first when `divide` (the adjoint of avg pooling)."""
    n_b, ch, ho, wo = h.shape
    s = np.zeros((n_b, ch, H, W), dtype=h.dtype)
    kk = k * k
    for n in range(n_b):
        for c in range(ch):
            for oy in range(ho):
                for ox in range(wo):
                    v = h[n, c, oy, ox]
                    if divide:
                        v = v / kk
                    for di in range(k):
                        for dj in range(k):
                            s[n, c, oy * k + di, ox * k + dj] = v
    return s


# ---------------------------------------------------------------------------------------------------------------
# The reference's interface
# ---------------------------------------------------------------------------------------------------------------
def _bias(b, n, dtype):
    return np.zeros(n, dtype=dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)


def conv(x, W, b, stride, padding):
    """a = conv2d(x, W) + b, shape (N, C_out, Ho, Wo): im2col, one BLAS product, bias fused into the NCHW pass."""
    x = np.ascontiguousarray(x)
    c_out, c_in, kh, kw = W.shape
    ho, wo = _out_size(x.shape[2], kh, stride, padding), _out_size(x.shape[3], kw, stride, padding)
    Wm = np.ascontiguousarray(W, dtype=x.dtype).reshape(c_out, c_in * kh * kw)
    return _conv(x, Wm, _bias(b, c_out, x.dtype), kh, kw, int(stride), int(padding), ho, wo)


def conv_transpose(h, V, c, stride, padding, out_hw):
    """y = conv_transpose2d(h, V) + c, shape (N, C_in, *out_hw): the exact adjoint of conv(., V) (see the
    reference); also conv's input gradient with V = W. Uncovered input pixels get zeros (plus c)."""
    h = np.ascontiguousarray(h)
    c_out, c_in, kh, kw = V.shape
    H, W_ = int(out_hw[0]), int(out_hw[1])
    ho, wo = _out_size(H, kh, stride, padding), _out_size(W_, kw, stride, padding)
    if h.shape[1:] != (c_out, ho, wo):
        raise ValueError(f"h has shape {h.shape}, expected (N, {c_out}, {ho}, {wo}) for out_hw={tuple(out_hw)}")
    VmT = np.ascontiguousarray(np.asarray(V, dtype=h.dtype).reshape(c_out, c_in * kh * kw).T)
    return _conv_transpose(h, VmT, _bias(c, c_in, h.dtype), c_in, kh, kw, int(stride), int(padding), H, W_)


def conv_weight_grads(x, e, kernel, stride, padding):
    """(dW, db): gradients of sum(e * conv(x, W, b)) w.r.t. W (C_out, C_in, kh, kw) and b; db = e.sum((0, 2, 3)).

    Also conv_transpose's weight gradient: for y = conv_transpose(h, V, c), dL/dV = conv_weight_grads(x=dL/dy,
    e=h, ...)[0] and dL/dc = (dL/dy).sum((0, 2, 3)), since <g, conv_transpose(h, V)> = <conv(g, V), h>.
    """
    x = np.ascontiguousarray(x)
    e = np.ascontiguousarray(e, dtype=x.dtype)
    kh, kw = kernel
    ho, wo = _out_size(x.shape[2], kh, stride, padding), _out_size(x.shape[3], kw, stride, padding)
    if e.shape[0] != x.shape[0] or e.shape[2:] != (ho, wo):
        raise ValueError(f"e has shape {e.shape}, expected (N, C_out, {ho}, {wo})")
    dW, db = _conv_weight_grads(x, e, int(kh), int(kw), int(stride), int(padding))
    return dW.reshape(e.shape[1], x.shape[1], kh, kw), db


def pool(s, mode, size):
    """(h, idx): k×k pooling with stride k, floor mode; idx (int64) is the row-major position of the first maximum
    in each window for max, None for avg. mode None or size 1 returns (s, None) with s itself."""
    if _check_pool(mode, size):
        return s, None
    s = np.ascontiguousarray(s)
    if mode == "avg":
        return _avg_pool(s, int(size)), None
    return _max_pool(s, int(size))


def unpool(h, idx, mode, size, shape):
    """s of `shape`: max puts each value back where idx says (zeros elsewhere); avg copies it to its window."""
    if _check_pool(mode, size):
        return np.array(h, copy=True)
    shape = _check_shape(h, size, shape)
    h = np.ascontiguousarray(h)
    if mode == "avg":
        return _avg_unpool(h, int(size), shape[2], shape[3], False)
    return _max_unpool(h, np.ascontiguousarray(idx, dtype=np.int64), int(size), shape[2], shape[3])


def pool_grad(dh, idx, mode, size, shape):
    """ds of `shape`, the adjoint of pool: max as unpool; avg spreads each value divided by k*k over its window."""
    if _check_pool(mode, size):
        return np.array(dh, copy=True)
    if mode == "avg":
        shape = _check_shape(dh, size, shape)
        return _avg_unpool(np.ascontiguousarray(dh), int(size), shape[2], shape[3], True)
    return unpool(dh, idx, mode, size, shape)
