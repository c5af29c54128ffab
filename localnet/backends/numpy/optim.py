"""Reference optimiser steps, in place on the parameter and its state arrays.

State arrays (momentum, running averages) flush to zero below the smallest normal number of their type (float32:
1.2e-38). An average that decays (x ← αx) where a gradient has gone to zero gets stuck among the subnormal numbers
(rounding keeps k·2⁻¹⁴⁹ for small k) instead of reaching 0, and every later step over it runs at the CPU's slow
subnormal speed: 25× for a centered RMSprop step on this project's machines, which made a saturating net's epochs
1.8× longer. Nothing is lost: such a value is ~10⁻¹⁹ of eps inside the square root.
"""

import numpy as np

from . import arrays  # noqa: F401  (Optimizer allocates and reads back its state through it)


def _flush(state):
    state[np.abs(state) < np.finfo(state.dtype).tiny] = 0


def _decayed(p, g, spec):
    return g + spec.weight_decay * p if spec.weight_decay else g


def _with_momentum(step, state, spec):
    """Heavy-ball momentum on the step direction (PyTorch's convention: buf = μ·buf + step)."""
    if not spec.momentum:
        return step
    buf = state["momentum"]
    buf *= spec.momentum
    buf += step
    _flush(buf)
    return buf


def sgd(p, g, state, spec, t):
    p -= spec.lr * _with_momentum(_decayed(p, g, spec), state, spec)


def rmsprop(p, g, state, spec, t):
    """RMSprop with eps inside the square root (Graves 2013; Lee et al.'s DTP code), optionally centered."""
    g = _decayed(p, g, spec)
    v = state["square_avg"]
    v *= spec.alpha
    v += (1 - spec.alpha) * g * g
    _flush(v)
    if spec.centered:
        m = state["grad_avg"]
        m *= spec.alpha
        m += (1 - spec.alpha) * g
        _flush(m)
        step = g / np.sqrt(v - m * m + spec.eps)
    else:
        step = g / np.sqrt(v + spec.eps)
    p -= spec.lr * _with_momentum(step, state, spec)


def adam(p, g, state, spec, t):
    """Adam with bias correction (Kingma & Ba 2015); t counts steps from 1."""
    g = _decayed(p, g, spec)
    beta1, beta2 = spec.betas
    m, v = state["m"], state["v"]
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    _flush(m)
    _flush(v)
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    p -= spec.lr * m_hat / (np.sqrt(v_hat) + spec.eps)


STEPS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}


def state_names(spec):
    """Which state arrays (each shaped like the parameter) an optimiser keeps."""
    if spec.type == "adam":
        return ("m", "v")
    names = ()
    if spec.type == "rmsprop":
        names = ("square_avg", "grad_avg") if spec.centered else ("square_avg",)
    return names + (("momentum",) if spec.momentum else ())
