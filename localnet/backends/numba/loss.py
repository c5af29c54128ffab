"""Numba kernels of the global loss: value, dℒ/dh_L and correct count, ℒ averaged over the batch
(same definitions as numpy/loss.py). The loss value is accumulated in float64."""

import math

import numpy as np
from numba import njit

JIT = dict(cache=True, nogil=True, error_model="numpy")


@njit(**JIT)
def _softmax_cross_entropy(logits, labels, grad):
    n, k = logits.shape
    inv_n = 1.0 / n
    loss = 0.0
    correct = 0
    for i in range(n):
        m = logits[i, 0]
        best = 0
        for j in range(1, k):
            if logits[i, j] > m:  # first maximum, like argmax; a NaN row keeps NaN in the loss below
                m = logits[i, j]
                best = j
        s = 0.0
        for j in range(k):
            s += math.exp(logits[i, j] - m)
        log_s = math.log(s)
        for j in range(k):
            grad[i, j] = math.exp(logits[i, j] - m - log_s) * inv_n
        y = labels[i]
        grad[i, y] -= inv_n
        loss -= logits[i, y] - m - log_s
        if best == y and not math.isnan(m):
            correct += 1
    return loss * inv_n, correct


@njit(**JIT)
def _mse(out, labels, grad):
    n, k = out.shape
    scale = 2.0 / n
    loss = 0.0
    correct = 0
    for i in range(n):
        best = 0
        for j in range(k):
            d = out[i, j] - (1.0 if j == labels[i] else 0.0)
            loss += d * d
            grad[i, j] = scale * d
            if out[i, j] > out[i, best]:
                best = j
        if best == labels[i]:
            correct += 1
    return loss / n, correct


def softmax_cross_entropy(logits, labels):
    logits = np.ascontiguousarray(logits)
    grad = np.empty_like(logits)
    loss, correct = _softmax_cross_entropy(logits, np.ascontiguousarray(labels, dtype=np.int64), grad)
    return float(loss), grad, int(correct)


def mse(out, labels):
    """Squared error against one-hot labels, summed over units and averaged over the batch."""
    out = np.ascontiguousarray(out)
    grad = np.empty_like(out)
    loss, correct = _mse(out, np.ascontiguousarray(labels, dtype=np.int64), grad)
    return float(loss), grad, int(correct)


from ..numpy.loss import reconstruction  # noqa: E402,F401  (element-wise, once per batch: nothing to fuse)
