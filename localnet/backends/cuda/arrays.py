"""The array API of the cuda backend: where layers, optimisers, the loss and the input node allocate, copy in, read
back or check arrays (the CPU backends' version is localnet/backends/numpy/arrays.py, plain numpy).

Device arrays are numba's (`DeviceNDArray`; `FakeCUDAArray` under the simulator). They cannot be marked
read-only, so messages carry them as they are (localnet/messages.py), and the isolation scan does not see them.
"""

import math

import numpy as np
from numba import cuda

from . import kernels as K


def is_device(a):
    """Whether `a` is a numba device array (`DeviceNDArray`, or `FakeCUDAArray` under the simulator)."""
    return hasattr(a, "copy_to_host")


def to_device(host):
    """The backend's array holding a copy of `host` (a numpy array or a device array)."""
    if is_device(host):
        return copy(host)
    return cuda.to_device(np.ascontiguousarray(host))


def to_host(a):
    """A numpy copy of `a`."""
    return a.copy_to_host() if is_device(a) else np.array(a)


def zeros_like(a):
    out = cuda.device_array(a.shape, a.dtype)
    if out.size:
        K.fill(out.reshape(-1), out.dtype.type(0))
    return out


def copy(a):
    out = cuda.device_array(a.shape, a.dtype)
    if out.size:
        out.copy_to_device(a)
    return out


def assign(dst, value):
    """dst[...] = value, in place (value: a host or device array of dst's shape)."""
    value = value if is_device(value) else np.ascontiguousarray(value, dtype=dst.dtype)
    dst.copy_to_device(value)


def total(a):
    """The sum of every element of `a`, in float64, on the host (one scalar comes back)."""
    if not a.size:
        return 0.0
    out = cuda.device_array(1, np.float64)
    K.sum_into(a.reshape(-1), out, 0)
    return float(out.copy_to_host()[0])


def sum_is_finite(a):
    """The divergence guard's cheap check: False when the sum of `a` is NaN or ±Inf."""
    return math.isfinite(total(a))


def descend(h, grad, step):
    """h − step·grad, a new array: a target one step down a gradient."""
    out = cuda.device_array(h.shape, h.dtype)
    K.axpy(h.reshape(-1), grad.reshape(-1), h.dtype.type(-step), out.reshape(-1))
    return out
