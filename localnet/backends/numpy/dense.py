"""Reference kernels of the dense layer family: plain numpy, written to be read and to be the oracle.

A kernel sees arrays and names, never a layer. Losses are squared errors summed over units and averaged over the
batch, so d/dh ‖h − ĥ‖² = 2(h − ĥ)/B.
"""

import numpy as np

from . import activations


def forward(x, W, b, act, rng=None, sample=False):
    """Pre-activation and output of h = s(x @ W + b)."""
    a = x @ W
    if b is not None:
        a += b
    return a, activations.apply(act, a, rng, sample)


def feedback(h, V, c, act):
    """g(h) = s̄(h @ V + c); feedback maps are deterministic, so stochastic units use their mean."""
    return forward(h, V, c, act)[1]


def local_delta(h, target):
    """dℒ_local/dh for ℒ_local = ‖h − ĥ‖² (summed over units, averaged over the batch)."""
    return 2 * (h - target) / h.shape[0]


def pre_activation_error(a, h, delta, act):
    """e = dℒ/da from dℒ/dh = delta, through this layer's own non-linearity only."""
    return delta * activations.derivative(act, a, h)


def weight_grads(x, e):
    """Gradients of W, b from the pre-activation error e. Apart from `pre_activation_error` so that the
    product can wait for the update, off the path of the message to the layer below."""
    return x.T @ e, e.sum(axis=0)


def input_grad(e, W):
    """dℒ/dx from the pre-activation error e: what backprop sends to the layer below."""
    return e @ W.T


def difference_target(x, h, target, V, c, fb_act):
    """DTP: ĥ_{i-1} = h_{i-1} + (g(ĥ_i) − g(h_i)); the bracket makes ĥ_i = h_i give ĥ_{i-1} = h_{i-1} exactly."""
    return x + (feedback(target, V, c, fb_act) - feedback(h, V, c, fb_act))


def feedback_grads(x, W, b, act, V, c, fb_act, sigma, rng):
    """One step of DTP feedback training: minimise ‖g(f(x̃)) − x̃‖², x̃ = x + N(0, σ²), over V and c.

    Returns (dV, dc, loss) with the loss summed over units and averaged over the batch.
    """
    x_noisy = x + sigma * rng.standard_normal(x.shape, dtype=x.dtype)
    _, h = forward(x_noisy, W, b, act, rng, sample=True)
    q, r = forward(h, V, c, fb_act)
    diff = r - x_noisy
    e = (2 / x.shape[0]) * diff * activations.derivative(fb_act, q, r)
    loss = float(np.einsum("ij,ij->", diff, diff) / x.shape[0])
    return h.T @ e, e.sum(axis=0), loss


def ldrl_grads(x, h, W, b, act, V, c, fb_act, sigma, rng):
    """One step of L-DRL feedback training (Ernoult et al. 2022): minimise over V and c
    −2⟨dx, g(f(x + dx)) − g(h)⟩ + ‖g(h + dy) − g(h)‖², dx, dy ~ N(0, σ²), h = f(x) this step's output.

    Returns (dV, dc, loss) with the loss summed over units and averaged over the batch.
    """
    dx = rng.standard_normal(x.shape, dtype=x.dtype)
    dy = rng.standard_normal(h.shape, dtype=h.dtype)
    return ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma, rng)


def ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma, rng=None):
    """ldrl_grads with the unit normals dx, dy given (scaled by σ here); `rng` samples stochastic units."""
    dx, dy = sigma * dx, sigma * dy
    _, y_noisy = forward(x + dx, W, b, act, rng, sample=True)
    stacked = np.concatenate([y_noisy, h + dy, h])  # g at f(x + dx), at h + dy and at h, in one product
    q, g = forward(stacked, V, c, fb_act)
    rows = len(x)
    r_x, r_y, r = g[:rows], g[rows:2 * rows], g[2 * rows:]
    d_y = r_y - r
    loss = float((-2 * np.einsum("ij,ij->", dx, r_x - r) + np.einsum("ij,ij->", d_y, d_y)) / rows)
    e = (2 / rows) * np.concatenate([-dx, d_y, dx - d_y]) * activations.derivative(fb_act, q, g)
    return stacked.T @ e, e.sum(axis=0), loss
