"""Numba optimiser steps: in place on the parameter and its state arrays, one pass, no temporaries.

Same arithmetic as numpy/optim.py up to float rounding (hyper-parameters are rounded to the array's type first, as
NumPy does with Python scalars), states flushed to zero below the smallest normal number as there; the bias
corrections of Adam are folded into two scalars (lr/(1−β₁ᵗ) and 1/(1−β₂ᵗ)), so one division and one square root
remain per element.

A step is a pass over four or five arrays at memory speed. Where a job has more than one core (backprop's layout,
see localnet/backends/numba/dense.py), it is split into one contiguous block per core: element-wise, so the numbers
are the same for any number of blocks.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from . import arrays  # noqa: F401  (Optimizer allocates and reads back its state through it)
from .cores import parts as job_parts
from ..numpy.optim import state_names  # noqa: F401  (the state layout is the algorithm's, not the backend's)

JIT = dict(cache=True, nogil=True, error_model="numpy")


def _cast(array, value):
    """`value` (a Python float) in the array's own floating type: float32 arrays get float32 arithmetic."""


@overload(_cast)
def _ov_cast(array, value):
    F = as_dtype(array.dtype).type
    return lambda array, value: F(value)


@njit(**JIT)
def _sgd(p, g, buf, lr, momentum, wd, tiny):
    lr, momentum, wd, tiny, zero = _cast(p, lr), _cast(p, momentum), _cast(p, wd), _cast(p, tiny), _cast(p, 0.0)
    for i in range(p.size):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        if momentum != 0:
            gi = momentum * buf[i] + gi
            if abs(gi) < tiny:
                gi = zero
            buf[i] = gi
        p[i] -= lr * gi


@njit(**JIT)
def _rmsprop(p, g, sq, avg, buf, lr, alpha, one_minus_alpha, eps, momentum, wd, centered, tiny):
    lr, alpha, one_minus_alpha, eps = _cast(p, lr), _cast(p, alpha), _cast(p, one_minus_alpha), _cast(p, eps)
    momentum, wd, tiny, zero = _cast(p, momentum), _cast(p, wd), _cast(p, tiny), _cast(p, 0.0)
    for i in range(p.size):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        v = alpha * sq[i] + one_minus_alpha * gi * gi
        if v < tiny:
            v = zero
        sq[i] = v
        if centered:
            m = alpha * avg[i] + one_minus_alpha * gi
            if abs(m) < tiny:
                m = zero
            avg[i] = m
            v = v - m * m
        step = gi / np.sqrt(v + eps)
        if momentum != 0:
            step = momentum * buf[i] + step
            if abs(step) < tiny:
                step = zero
            buf[i] = step
        p[i] -= lr * step


@njit(**JIT)
def _adam(p, g, m, v, lr_c1, beta1, one_minus_beta1, beta2, one_minus_beta2, c2, eps, wd, tiny):
    lr_c1, beta1, one_minus_beta1 = _cast(p, lr_c1), _cast(p, beta1), _cast(p, one_minus_beta1)
    beta2, one_minus_beta2, c2, eps, wd = _cast(p, beta2), _cast(p, one_minus_beta2), _cast(p, c2), _cast(p, eps), \
        _cast(p, wd)
    tiny, zero = _cast(p, tiny), _cast(p, 0.0)
    for i in range(p.size):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        if abs(mi) < tiny:
            mi = zero
        if vi < tiny:
            vi = zero
        m[i] = mi
        v[i] = vi
        p[i] -= lr_c1 * mi / (np.sqrt(vi * c2) + eps)


@njit(error_model="numpy")
def _block(n, parts, k):
    """Block k of `parts` contiguous blocks of range(n)."""
    size = (n + parts - 1) // parts
    return k * size, min(n, (k + 1) * size)


@njit(**JIT, parallel=True)
def _sgd_parts(p, g, buf, lr, momentum, wd, tiny, parts):
    for k in prange(parts):
        lo, hi = _block(p.size, parts, k)
        _sgd(p[lo:hi], g[lo:hi], buf[lo:hi], lr, momentum, wd, tiny)


@njit(**JIT, parallel=True)
def _rmsprop_parts(p, g, sq, avg, buf, lr, alpha, one_minus_alpha, eps, momentum, wd, centered, tiny, parts):
    for k in prange(parts):
        lo, hi = _block(p.size, parts, k)
        _rmsprop(p[lo:hi], g[lo:hi], sq[lo:hi], avg[lo:hi], buf[lo:hi], lr, alpha, one_minus_alpha, eps, momentum,
                 wd, centered, tiny)


@njit(**JIT, parallel=True)
def _adam_parts(p, g, m, v, lr_c1, beta1, one_minus_beta1, beta2, one_minus_beta2, c2, eps, wd, tiny, parts):
    for k in prange(parts):
        lo, hi = _block(p.size, parts, k)
        _adam(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], lr_c1, beta1, one_minus_beta1, beta2, one_minus_beta2, c2, eps,
              wd, tiny)


def _split(kernel, split, p, *args):
    """Run `kernel`, or `split` in one block per core of the job where it has several and `p` is large enough."""
    parts = job_parts(p.size)
    if parts > 1:
        split(p, *args, parts)
    else:
        kernel(p, *args)


def _flat(a):
    """A 1-d view of a contiguous array (the update must land in the array itself)."""
    if not a.flags.c_contiguous:
        raise ValueError("optimiser arrays must be C-contiguous to be updated in place")
    return a.reshape(-1)


def _flat_in(g, like):
    return np.ascontiguousarray(g, dtype=like.dtype).reshape(-1)


def _tiny(p):
    """The flush-to-zero threshold of the states (numpy/optim.py says why)."""
    return float(np.finfo(p.dtype).tiny)


def sgd(p, g, state, spec, t):
    buf = state["momentum"] if spec.momentum else p
    _split(_sgd, _sgd_parts, _flat(p), _flat_in(g, p), _flat(buf), float(spec.lr), float(spec.momentum),
           float(spec.weight_decay), _tiny(p))


def rmsprop(p, g, state, spec, t):
    """RMSprop with eps inside the square root (Graves 2013; Lee et al.'s DTP code), optionally centered."""
    f = float
    sq = state["square_avg"]
    avg = state["grad_avg"] if spec.centered else sq
    buf = state["momentum"] if spec.momentum else sq
    _split(_rmsprop, _rmsprop_parts, _flat(p), _flat_in(g, p), _flat(sq), _flat(avg), _flat(buf), f(spec.lr),
           f(spec.alpha), f(1 - spec.alpha), f(spec.eps), f(spec.momentum), f(spec.weight_decay), bool(spec.centered),
           _tiny(p))


def adam(p, g, state, spec, t):
    """Adam with bias correction (Kingma & Ba 2015); t counts steps from 1."""
    f = float
    beta1, beta2 = spec.betas
    _split(_adam, _adam_parts, _flat(p), _flat_in(g, p), _flat(state["m"]), _flat(state["v"]),
           f(spec.lr / (1 - beta1 ** t)), f(beta1), f(1 - beta1), f(beta2), f(1 - beta2), f(1 / (1 - beta2 ** t)),
           f(spec.eps), f(spec.weight_decay), _tiny(p))


STEPS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}
