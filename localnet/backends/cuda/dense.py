"""CUDA kernels of the dense layer family: the same functions and signatures as the numpy reference
(`localnet/backends/numpy/dense.py`, the oracle they are tested against). Inputs may be host or device arrays;
outputs are device arrays. The device code is in kernels.py; the random streams are those of the numba CPU backend
(keyed by one draw from the layer's generator per call), so tests replay them through the reference.
"""

import numpy as np
from numba import cuda

from . import kernels as K
from .arrays import is_device, to_device, total


def _dev(a):
    """A device array for a host or device argument (a host one is copied up: only tests pass those)."""
    return None if a is None else (a if is_device(a) else to_device(a))


def _like(rows, cols, like):
    return cuda.device_array((rows, cols), like.dtype)


def forward(x, W, b, act, rng=None, sample=False):
    """Pre-activation and output of h = s(x @ W + b)."""
    x, W, b = _dev(x), _dev(W), _dev(b)
    c = K.code(act)
    a = K.matmul(x, W, _like(x.shape[0], W.shape[1], W), bias=b)
    h = _like(*a.shape, a)
    sample = bool(sample) and c == K.STOCHASTIC
    K.activate(a, c, K.random_key(rng) if sample else 0, sample, h)
    return a, h


def feedback(h, V, c, act):
    """g(h) = s̄(h @ V + c); feedback maps are deterministic, so stochastic units use their mean."""
    return forward(h, V, c, act)[1]


def local_delta(h, target):
    """dℒ_local/dh for ℒ_local = ‖h − ĥ‖² (summed over units, averaged over the batch)."""
    h, target = _dev(h), _dev(target)
    out = _like(*h.shape, h)
    K.scaled_difference(h.reshape(-1), target.reshape(-1), 2.0 / max(h.shape[0], 1), out.reshape(-1))
    return out


def pre_activation_error(a, h, delta, act):
    """e = dℒ/da from dℒ/dh = delta, through this layer's own non-linearity only."""
    a, h, delta = _dev(a), _dev(h), _dev(delta)
    e = _like(*h.shape, h)
    K.derivative_times(delta, a, h, K.code(act), e)
    return e


def weight_grads(x, e):
    """Gradients of W, b from the pre-activation error e."""
    x, e = _dev(x), _dev(e)
    dW = K.matmul(x, e, _like(x.shape[1], e.shape[1], e), ta=True)
    db = cuda.device_array(e.shape[1], e.dtype)
    K.column_sums(e, db)
    return dW, db


def input_grad(e, W):
    """dℒ/dx from the pre-activation error e: what backprop sends to the layer below."""
    e, W = _dev(e), _dev(W)
    return K.matmul(e, W, _like(e.shape[0], W.shape[0], W), tb=True)


def difference_target(x, h, target, V, c, fb_act):
    """DTP: ĥ_{i-1} = h_{i-1} + (g(ĥ_i) − g(h_i))."""
    x, h, target, V, c = _dev(x), _dev(h), _dev(target), _dev(V), _dev(c)
    q_target = K.matmul(target, V, _like(x.shape[0], V.shape[1], V), bias=c)
    q_h = K.matmul(h, V, _like(x.shape[0], V.shape[1], V), bias=c)
    out = _like(*x.shape, x)
    K.difference_target(x, q_target, q_h, K.code(fb_act), out)
    return out


def feedback_grads(x, W, b, act, V, c, fb_act, sigma, rng):
    """One step of DTP feedback training: minimise ‖g(f(x̃)) − x̃‖², x̃ = x + N(0, σ²), over V and c.

    Returns (dV, dc, loss), the loss (a host float) summed over units and averaged over the batch. The noise comes
    from the stream keyed by one draw from `rng`, Bernoulli samples from its `kernels.subkey`.
    """
    x, W, b, V, c = _dev(x), _dev(W), _dev(b), _dev(V), _dev(c)
    key = K.random_key(rng)
    rows = x.shape[0]
    xn = _like(*x.shape, x)
    K.noisy(x, key, sigma, xn)
    a = K.matmul(xn, W, _like(rows, W.shape[1], W), bias=b)
    h = _like(*a.shape, a)
    K.activate(a, K.code(act), K.subkey(key), K.code(act) == K.STOCHASTIC, h)
    q = K.matmul(h, V, _like(rows, V.shape[1], V), bias=c)
    e = _like(*q.shape, q)
    sq = cuda.device_array(q.size, np.float64)
    K.reconstruction(q, xn, K.code(fb_act), e, sq)
    dV = K.matmul(h, e, _like(h.shape[1], e.shape[1], e), ta=True)
    dc = cuda.device_array(e.shape[1], e.dtype)
    K.column_sums(e, dc)
    return dV, dc, total(sq) / rows if rows else float("nan")


def normals(key, shape, dtype):
    """The standard normals a feedback-training call with this key adds (times σ) to its input, on the host."""
    z = cuda.to_device(np.zeros(shape, dtype))
    out = cuda.device_array(shape, dtype)
    K.noisy(z, key, 1.0, out)
    return out.copy_to_host()


def uniforms(key, shape, dtype):
    """The uniforms a call with this key compares with sigm(a) for Bernoulli samples, on the host."""
    out = cuda.device_array(shape, dtype)
    K.uniforms(key, out)
    return out.copy_to_host()
