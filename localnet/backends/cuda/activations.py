"""Element-wise non-linearities of the cuda backend, with the reference's interface (numpy/activations.py), for
tests and callers outside a kernel: host or device arrays in, device arrays out."""

from numba import cuda

from . import kernels as K
from .arrays import is_device, to_device


def _2d(a):
    a = a if is_device(a) else to_device(a)
    return a.reshape(len(a), -1) if a.ndim != 2 else a


def apply(name, a, rng=None, sample=False):
    a2 = _2d(a)
    c = K.code(name)
    sample = bool(sample) and c == K.STOCHASTIC
    h = cuda.device_array(a2.shape, a2.dtype)
    K.activate(a2, c, K.random_key(rng) if sample else 0, sample, h)
    return h.reshape(a.shape)


def derivative(name, a, h):
    """ds/da at a (h = s(a) is passed so smooth units need not recompute it)."""
    a2, h2 = _2d(a), _2d(h)
    out = cuda.device_array(a2.shape, a2.dtype)
    K.derivative_times(None, a2, h2, K.code(name), out)
    return out.reshape(a.shape)


def sigmoid(a):
    return apply("sigmoid", a)
