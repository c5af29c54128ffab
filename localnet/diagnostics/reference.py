"""An independent numpy transcription of the element-wise functions and losses of DESIGN §2, in float64.

The diagnostics probe and `localnet.testing` compute with these, never with `localnet.backends` (whose code they
check): DESIGN §7, "test the equations against independent computations, not against the code's own helpers".
Non-smooth units use the same straight-through surrogate derivative as localnet's numpy backend (1 where |a| <= 1
for `step`, sigm'(a) for `stochastic_binary`); feedback maps are deterministic, so a stochastic unit there is its
mean.
"""

from __future__ import annotations

import math

import numpy as np

SMOOTH = ("linear", "tanh", "sigmoid", "relu", "elu")  # activations whose derivative is their true derivative


def _sigmoid(a):
    return np.exp(-np.logaddexp(0.0, -a))  # 1 / (1 + e^-a) without overflow


def activation(name, a):
    """s(a), deterministic (a stochastic unit gives its mean)."""
    a = np.asarray(a, np.float64)
    if name == "linear":
        return a.copy()
    if name == "tanh":
        return np.tanh(a)
    if name in ("sigmoid", "stochastic_binary"):
        return _sigmoid(a)
    if name == "relu":
        return np.where(a > 0, a, 0.0)
    if name == "elu":
        return np.where(a > 0, a, np.expm1(np.minimum(a, 0.0)))
    if name == "step":
        return np.where(a >= 0, 1.0, -1.0)
    raise ValueError(f"unknown activation {name!r}")


def derivative(name, a):
    """ds/da at the pre-activation a; the straight-through surrogate for `step` and `stochastic_binary`."""
    a = np.asarray(a, np.float64)
    if name == "linear":
        return np.ones_like(a)
    if name == "tanh":
        t = np.tanh(a)
        return 1.0 - t * t
    if name in ("sigmoid", "stochastic_binary"):
        s = _sigmoid(a)
        return s * (1.0 - s)
    if name == "relu":
        return (a > 0).astype(np.float64)
    if name == "elu":
        return np.where(a > 0, 1.0, np.exp(np.minimum(a, 0.0)))
    if name == "step":
        return (np.abs(a) <= 1).astype(np.float64)
    raise ValueError(f"unknown activation {name!r}")


def affine(x, W, b=None):
    a = np.asarray(x, np.float64) @ np.asarray(W, np.float64)
    return a if b is None else a + np.asarray(b, np.float64)


def onehot(labels, n):
    out = np.zeros((len(labels), n))
    out[np.arange(len(labels)), np.asarray(labels, np.int64)] = 1.0
    return out


def loss_value(name, out, labels):
    """ℒ averaged over the batch: softmax cross-entropy of logits, or squared error against one-hot labels."""
    out = np.asarray(out, np.float64)
    if name == "reconstruction":  # `labels` is the clean input
        return float(np.sum((out - np.asarray(labels, np.float64)) ** 2) / len(out))
    if name == "mse":
        return float(np.sum((out - onehot(labels, out.shape[1])) ** 2) / len(out))
    if name == "softmax_cross_entropy":
        z = out - out.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(out)), np.asarray(labels, np.int64)].mean())
    raise ValueError(f"unknown loss {name!r}")


def loss_gradient(name, out, labels):
    """∂ℒ/∂h_L for a batch (ℒ averaged over the batch)."""
    out = np.asarray(out, np.float64)
    if name == "reconstruction":
        return 2.0 * (out - np.asarray(labels, np.float64)) / len(out)
    if name == "mse":
        return 2.0 * (out - onehot(labels, out.shape[1])) / len(out)
    if name == "softmax_cross_entropy":
        z = np.exp(out - out.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True) - onehot(labels, out.shape[1])) / len(out)
    raise ValueError(f"unknown loss {name!r}")


def flat(arrays):
    """One float64 vector of the arrays' entries, in order."""
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)


def angle(u, v) -> float:
    """The angle in degrees between two arrays taken as flat vectors; NaN when either is zero or not finite (a
    zero vector has no direction).

    2·atan2(‖û − v̂‖, ‖û + v̂‖) is accurate over the whole range: arccos of the cosine loses half the digits near
    0° and 180° (a float64 angle of 1e-8 rad reads as 0 or 1.5e-8), which is where the interesting checks are.
    """
    u, v = flat([u]), flat([v])
    if u.shape != v.shape:
        raise ValueError(f"angle between vectors of {u.size} and {v.size} entries")
    nu, nv = math.sqrt(u @ u), math.sqrt(v @ v)
    if not (math.isfinite(nu) and math.isfinite(nv)) or nu == 0 or nv == 0:
        return math.nan
    u, v = u / nu, v / nv
    d, s = u - v, u + v
    return math.degrees(2.0 * math.atan2(math.sqrt(d @ d), math.sqrt(s @ s)))
