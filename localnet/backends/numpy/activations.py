"""Element-wise non-linearities and the derivative each one uses for learning.

`step` and `stochastic_binary` have no useful derivative; they use a surrogate, the straight-through estimator:
1 where |a| <= 1 for `step` (Bengio et al. 2013's saturating variant), sigm'(a) for `stochastic_binary`.
Stochastic units sample Bernoulli(sigm(a)) when training and use their mean sigm(a) when evaluating.
"""

import numpy as np


def sigmoid(a):
    # tanh form: no overflow warnings for large |a|, same dtype in and out
    return 0.5 * (np.tanh(0.5 * a) + 1)


def apply(name, a, rng=None, sample=False):
    if name == "linear":
        return a.copy()
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return sigmoid(a)
    if name == "relu":
        return np.maximum(a, 0)
    if name == "elu":  # α = 1: a, or e^a − 1 below zero
        return np.where(a > 0, a, np.expm1(np.minimum(a, 0)))
    if name == "step":
        return np.where(a >= 0, 1, -1).astype(a.dtype)
    if name == "stochastic_binary":
        p = sigmoid(a)
        if not sample:
            return p
        return (rng.random(a.shape, dtype=a.dtype) < p).astype(a.dtype)
    raise ValueError(f"unknown activation {name!r}")


def derivative(name, a, h):
    """ds/da at a (h = s(a) is passed so smooth units need not recompute it)."""
    if name == "linear":
        return np.ones_like(a)
    if name == "tanh":
        return 1 - h * h
    if name == "sigmoid":
        return h * (1 - h)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "elu":  # e^a = h + 1 below zero
        return np.where(a > 0, 1, h + 1).astype(a.dtype)
    if name == "step":
        return (np.abs(a) <= 1).astype(a.dtype)
    if name == "stochastic_binary":
        p = sigmoid(a)
        return p * (1 - p)
    raise ValueError(f"unknown activation {name!r}")
