"""Reference kernels of the conv2d layer family: plain numpy, written to be read and to be the oracle.

Conventions are PyTorch's: batches are NCHW, `conv` is torch.nn.functional.conv2d (a cross-correlation) with weight
W (C_out, C_in, kh, kw), one integer stride for both directions and one integer zero padding for all sides, so
Ho = (H + 2p - kh) // s + 1. `conv_transpose` is conv_transpose2d with the SAME weight shape, i.e. exactly the
adjoint of `conv`, with the output padding that makes its output the forward input's size. Pooling uses
non-overlapping k×k windows in floor mode: rows and columns left over at the bottom/right are dropped by `pool`
and come back as zeros. Every result is a new array in the dtype of the data argument (x, h, s, dh).

im2col: `_windows` is a strided view (no copy) of every kernel-sized window of the padded input, so `conv` and
`conv_weight_grads` are single tensor contractions; `conv_transpose` scatters back with one slice-add per kernel
offset (kh*kw of them), so no Python loop runs over the batch or the pixels.
"""

import numpy as np

POOL_MODES = ("max", "avg")


def _out_size(n, k, stride, padding):
    """Output length of one spatial axis; refuses a kernel larger than the padded input."""
    if stride < 1 or padding < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    if n + 2 * padding < k:
        raise ValueError(f"kernel {k} is larger than the padded input {n} + 2*{padding}")
    return (n + 2 * padding - k) // stride + 1


def _windows(x, kernel, stride, padding):
    """(N, C, Ho, Wo, kh, kw) view of the windows of the zero-padded x that the output pixels see."""
    kh, kw = kernel
    ho, wo = _out_size(x.shape[2], kh, stride, padding), _out_size(x.shape[3], kw, stride, padding)
    p = padding
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::stride, ::stride][:, :, :ho, :wo]


def conv(x, W, b, stride, padding):
    """a = conv2d(x, W) + b, shape (N, C_out, Ho, Wo): one contraction of the im2col view with W."""
    W = np.asarray(W, dtype=x.dtype)
    win = _windows(x, W.shape[2:], stride, padding)
    a = np.tensordot(win, W, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, C_out)
    a = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    if b is not None:
        a += np.asarray(b, dtype=a.dtype)[:, None, None]
    return a


def conv_transpose(h, V, c, stride, padding, out_hw):
    """y = conv_transpose2d(h, V) + c, shape (N, C_in, *out_hw): the exact adjoint of conv(., V), i.e.
    <conv(x, V), h> = <x, conv_transpose(h, V, None)>. It is the feedback map of a conv layer and, with V = W,
    conv's input gradient (dL/dx = conv_transpose(dL/da, W, None, ...)). Input pixels that no window covers
    (floor-mode leftovers, the `output_padding` of torch) get zeros (plus c)."""
    V = np.asarray(V, dtype=h.dtype)
    c_out, c_in, kh, kw = V.shape
    H, W_ = out_hw
    ho, wo = _out_size(H, kh, stride, padding), _out_size(W_, kw, stride, padding)
    if h.shape[1:] != (c_out, ho, wo):
        raise ValueError(f"h has shape {h.shape}, expected (N, {c_out}, {ho}, {wo}) for out_hw={tuple(out_hw)}")
    p, s = padding, stride
    cols = np.tensordot(h, V, axes=([1], [0]))  # (N, Ho, Wo, C_in, kh, kw): each pixel's contribution per offset
    yp = np.zeros((h.shape[0], c_in, H + 2 * p, W_ + 2 * p), dtype=h.dtype)
    for i in range(kh):
        for j in range(kw):
            yp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    y = np.ascontiguousarray(yp[:, :, p:p + H, p:p + W_])
    if c is not None:
        y += np.asarray(c, dtype=y.dtype)[:, None, None]
    return y


def conv_weight_grads(x, e, kernel, stride, padding):
    """(dW, db): gradients of sum(e * conv(x, W, b)) w.r.t. W (C_out, C_in, kh, kw) and b; db = e.sum((0, 2, 3)).

    The same function gives conv_transpose's weight gradient, since <g, conv_transpose(h, V)> = <conv(g, V), h>:
    for y = conv_transpose(h, V, c), dL/dV = conv_weight_grads(x=dL/dy, e=h, ...)[0] and dL/dc = (dL/dy).sum((0, 2, 3)).
    """
    e = np.asarray(e, dtype=x.dtype)
    win = _windows(x, tuple(kernel), stride, padding)
    if e.shape[0] != x.shape[0] or e.shape[2:] != win.shape[2:4]:
        raise ValueError(f"e has shape {e.shape}, expected (N, C_out, {win.shape[2]}, {win.shape[3]})")
    dW = np.tensordot(e, win, axes=([0, 2, 3], [0, 2, 3]))  # (C_out, C_in, kh, kw)
    return np.ascontiguousarray(dW), e.sum(axis=(0, 2, 3))


def _check_pool(mode, size):
    if mode is not None and mode not in POOL_MODES:
        raise ValueError(f"unknown pool mode {mode!r}")
    if int(size) != size or size < 1:
        raise ValueError(f"pool size must be a positive integer, got {size!r}")
    return mode is None or size == 1


def _blocks(s, k):
    """(N, C, H//k, W//k, k*k) copy of the k×k windows of s (floor mode), positions row-major in each window."""
    n, c, H, W = s.shape
    ho, wo = H // k, W // k
    blocks = s[:, :, :ho * k, :wo * k].reshape(n, c, ho, k, wo, k).transpose(0, 1, 2, 4, 3, 5)
    return blocks.reshape(n, c, ho, wo, k * k)


def _scatter(blocks, k, shape):
    """Inverse of `_blocks`: an array of `shape` with each window's k*k values in place, leftovers zero."""
    n, c, ho, wo, _ = blocks.shape
    out = np.zeros(shape, dtype=blocks.dtype)
    out[:, :, :ho * k, :wo * k] = blocks.reshape(n, c, ho, wo, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, ho * k, wo * k)
    return out


def _check_shape(h, size, shape):
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4 or h.shape != (shape[0], shape[1], shape[2] // size, shape[3] // size):
        raise ValueError(f"{h.shape} is not the pooled shape of {shape} with size {size}")
    return shape


def pool(s, mode, size):
    """(h, idx): k×k pooling with stride k, floor mode. For max, idx (int64, h's shape) is the row-major position
    0..k*k-1 of the first maximum in each window (PyTorch's tie rule), which unpool/pool_grad need; None for avg.
    mode None or size 1 is the identity and returns (s, None) with s itself."""
    if _check_pool(mode, size):
        return s, None
    blocks = _blocks(s, size)
    if mode == "avg":
        return blocks.mean(axis=-1), None
    idx = blocks.argmax(axis=-1).astype(np.int64)
    return np.take_along_axis(blocks, idx[..., None], axis=-1)[..., 0], idx


def unpool(h, idx, mode, size, shape):
    """s of `shape`: the inverse a feedback map uses. max puts each value back where idx says (zeros elsewhere);
    avg copies each value to its whole window, so pool(unpool(h)) == h. Leftover rows/columns are zero."""
    if _check_pool(mode, size):
        return np.array(h, copy=True)
    shape = _check_shape(h, size, shape)
    k2 = size * size
    if mode == "avg":
        blocks = np.repeat(h[..., None], k2, axis=-1)
    else:
        blocks = np.zeros(h.shape + (k2,), dtype=h.dtype)
        np.put_along_axis(blocks, np.asarray(idx)[..., None], h[..., None], axis=-1)
    return _scatter(blocks, size, shape)


def pool_grad(dh, idx, mode, size, shape):
    """ds of `shape`: the adjoint of pool, what backprop needs. max routes each value to its argmax (as unpool);
    avg spreads each value divided by k*k over its window. Leftover rows/columns get zero gradient."""
    if _check_pool(mode, size):
        return np.array(dh, copy=True)
    if mode == "avg":
        return unpool(dh / (size * size), None, mode, size, shape)
    return unpool(dh, idx, mode, size, shape)
