"""CUDA kernels of the global loss (same definitions as numpy/loss.py): dℒ/dh_L stays on the device, the value
(accumulated in float64) and the correct count come back to the host."""

import numpy as np
from numba import cuda

from . import kernels as K
from .arrays import is_device, to_device, total


def _run(name, out, labels):
    out = out if is_device(out) else to_device(out)
    labels = labels if is_device(labels) else to_device(np.ascontiguousarray(labels, dtype=np.int64))
    grad = cuda.device_array(out.shape, out.dtype)
    value, correct = K.loss(name, out, labels, grad)
    return value, grad, correct


def softmax_cross_entropy(logits, labels):
    return _run("softmax_cross_entropy", logits, labels)


def mse(out, labels):
    """Squared error against one-hot labels, summed over units and averaged over the batch."""
    return _run("mse", out, labels)


def reconstruction(out, x):
    """An auto-encoder's loss: squared error against the clean input x, summed over units and averaged over the
    batch; nothing is classified, so the correct count is 0."""
    out = out if is_device(out) else to_device(out)
    x = x if is_device(x) else to_device(np.ascontiguousarray(x, dtype=out.dtype))
    n = out.shape[0]
    grad = cuda.device_array(out.shape, out.dtype)
    K.scaled_difference(out.reshape(-1), x.reshape(-1), 2.0 / n, grad.reshape(-1))
    squares = cuda.device_array(out.shape, out.dtype)
    K.square(grad.reshape(-1), squares.reshape(-1))
    return total(squares) * n / 4, grad, 0  # Σ((2/n)·d)²·n/4 = Σd²/n
