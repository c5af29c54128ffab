"""Reference kernels of the global loss: value, dℒ/dh_L and correct count, ℒ averaged over the batch."""

import numpy as np


def softmax_cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    rows = np.arange(n)
    loss = float(-logp[rows, labels].mean())
    grad = np.exp(logp)
    grad[rows, labels] -= 1
    grad /= n
    correct = int((logits.argmax(axis=1) == labels).sum())
    return loss, grad.astype(logits.dtype, copy=False), correct


def mse(out, labels):
    """Squared error against one-hot labels, summed over units and averaged over the batch."""
    n = out.shape[0]
    onehot = np.zeros_like(out)
    onehot[np.arange(n), labels] = 1
    diff = out - onehot
    loss = float(np.einsum("ij,ij->", diff, diff) / n)
    correct = int((out.argmax(axis=1) == labels).sum())
    return loss, (2 / n) * diff, correct


def reconstruction(out, x):
    """An auto-encoder's loss: squared error against the clean input x, summed over units and averaged over the
    batch. Nothing to classify, so no sample counts as correct."""
    diff = out - x
    n = out.shape[0]
    return float(np.einsum("ij,ij->", diff, diff) / n), (2 / n) * diff, 0
