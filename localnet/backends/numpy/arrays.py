"""The array API of the CPU backends (numpy and numba): plain numpy. The cuda backend's version
(localnet/backends/cuda/arrays.py) keeps arrays on the device; layers, optimisers, the loss and the data source go
through this module wherever they allocate, copy in, read back or check an array, so they work with either."""

import numpy as np


def to_device(host):
    """The backend's array for `host`: the array itself on the CPU."""
    return host


def to_host(a):
    """A numpy copy of `a`."""
    return np.array(a)


zeros_like = np.zeros_like


def assign(dst, value):
    """dst[...] = value, in place."""
    dst[...] = value


def sum_is_finite(a):
    """The divergence guard's cheap check: False when the sum of `a` is NaN or ±Inf."""
    return bool(np.isfinite(a.sum()))


def descend(h, grad, step):
    """h − step·grad, a new array: a target one step down a gradient."""
    return h - step * grad
