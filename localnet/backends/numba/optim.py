"""Numba optimiser steps: in place on the parameter and its state arrays, one pass, no temporaries.

Same arithmetic as numpy/optim.py up to float rounding (hyper-parameters are rounded to the array's type first, as
NumPy does with Python scalars); the bias corrections of Adam are folded into two scalars
(lr/(1−β₁ᵗ) and 1/(1−β₂ᵗ)), so one division and one square root remain per element.
"""

import numpy as np
from numba import njit
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from ..numpy import arrays  # noqa: F401  (Optimizer allocates and reads back its state through it)
from ..numpy.optim import state_names  # noqa: F401  (the state layout is the algorithm's, not the backend's)

JIT = dict(cache=True, nogil=True, error_model="numpy")


def _cast(array, value):
    """`value` (a Python float) in the array's own floating type: float32 arrays get float32 arithmetic."""


@overload(_cast)
def _ov_cast(array, value):
    F = as_dtype(array.dtype).type
    return lambda array, value: F(value)


@njit(**JIT)
def _sgd(p, g, buf, lr, momentum, wd):
    lr, momentum, wd = _cast(p, lr), _cast(p, momentum), _cast(p, wd)
    for i in range(p.size):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        if momentum != 0:
            gi = momentum * buf[i] + gi
            buf[i] = gi
        p[i] -= lr * gi


@njit(**JIT)
def _rmsprop(p, g, sq, avg, buf, lr, alpha, one_minus_alpha, eps, momentum, wd, centered):
    lr, alpha, one_minus_alpha, eps = _cast(p, lr), _cast(p, alpha), _cast(p, one_minus_alpha), _cast(p, eps)
    momentum, wd = _cast(p, momentum), _cast(p, wd)
    for i in range(p.size):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        v = alpha * sq[i] + one_minus_alpha * gi * gi
        sq[i] = v
        if centered:
            m = alpha * avg[i] + one_minus_alpha * gi
            avg[i] = m
            v = v - m * m
        step = gi / np.sqrt(v + eps)
        if momentum != 0:
            step = momentum * buf[i] + step
            buf[i] = step
        p[i] -= lr * step


@njit(**JIT)
def _adam(p, g, m, v, lr_c1, beta1, one_minus_beta1, beta2, one_minus_beta2, c2, eps, wd):
    lr_c1, beta1, one_minus_beta1 = _cast(p, lr_c1), _cast(p, beta1), _cast(p, one_minus_beta1)
    beta2, one_minus_beta2, c2, eps, wd = _cast(p, beta2), _cast(p, one_minus_beta2), _cast(p, c2), _cast(p, eps), \
        _cast(p, wd)
    for i in range(p.size):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr_c1 * mi / (np.sqrt(vi * c2) + eps)


def _flat(a):
    """A 1-d view of a contiguous array (the update must land in the array itself)."""
    if not a.flags.c_contiguous:
        raise ValueError("optimiser arrays must be C-contiguous to be updated in place")
    return a.reshape(-1)


def _flat_in(g, like):
    return np.ascontiguousarray(g, dtype=like.dtype).reshape(-1)


def sgd(p, g, state, spec, t):
    buf = state["momentum"] if spec.momentum else p
    _sgd(_flat(p), _flat_in(g, p), _flat(buf), float(spec.lr), float(spec.momentum), float(spec.weight_decay))


def rmsprop(p, g, state, spec, t):
    """RMSprop with eps inside the square root (Graves 2013; Lee et al.'s DTP code), optionally centered."""
    f = float
    sq = state["square_avg"]
    avg = state["grad_avg"] if spec.centered else sq
    buf = state["momentum"] if spec.momentum else sq
    _rmsprop(_flat(p), _flat_in(g, p), _flat(sq), _flat(avg), _flat(buf), f(spec.lr), f(spec.alpha),
             f(1 - spec.alpha), f(spec.eps), f(spec.momentum), f(spec.weight_decay), bool(spec.centered))


def adam(p, g, state, spec, t):
    """Adam with bias correction (Kingma & Ba 2015); t counts steps from 1."""
    f = float
    beta1, beta2 = spec.betas
    _adam(_flat(p), _flat_in(g, p), _flat(state["m"]), _flat(state["v"]), f(spec.lr / (1 - beta1 ** t)), f(beta1),
          f(1 - beta1), f(beta2), f(1 - beta2), f(1 / (1 - beta2 ** t)), f(spec.eps), f(spec.weight_decay))


STEPS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}
