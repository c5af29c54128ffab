"""Element-wise non-linearities of the numba backend, with the same names and meaning as numpy/activations.py.

The compiled element functions live in dense.py (one file per layer family, so that Numba's cache cannot go stale);
these wrappers give them the reference's interface for tests and for callers outside a kernel.
"""

import numpy as np

from . import dense


def apply(name, a, rng=None, sample=False):
    a2 = np.ascontiguousarray(a).reshape(len(a), -1) if np.ndim(a) != 2 else np.ascontiguousarray(a)
    c = dense.code(name)
    sample = bool(sample) and c == dense.STOCHASTIC
    h = np.empty_like(a2)
    dense._activate(a2, c, dense.random_key(rng) if sample else np.uint64(0), sample, h)
    return h.reshape(np.shape(a))


def derivative(name, a, h):
    """ds/da at a (h = s(a) is passed so smooth units need not recompute it)."""
    shape = np.shape(a)
    a2 = np.ascontiguousarray(a).reshape(len(a), -1) if np.ndim(a) != 2 else np.ascontiguousarray(a)
    h2 = np.ascontiguousarray(h).reshape(a2.shape)
    out = np.empty_like(a2)
    dense._derivative(a2, h2, dense.code(name), out)
    return out.reshape(shape)


def sigmoid(a):
    """The logistic function, in a's dtype (the tanh form, as in the reference)."""
    return apply("sigmoid", a)
