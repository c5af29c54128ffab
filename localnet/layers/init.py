"""Weight initialisations; a layer draws its own from its own generator."""

import numpy as np


def initialize(name, fan_in, fan_out, rng, dtype):
    if name == "xavier_normal":
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / (fan_in + fan_out))
    elif name == "xavier_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, (fan_in, fan_out))
    elif name == "orthogonal":
        a = rng.standard_normal((max(fan_in, fan_out), min(fan_in, fan_out)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))  # makes the draw uniform over orthogonal matrices
        w = q if fan_in >= fan_out else q.T
    else:
        raise ValueError(f"unknown initialisation {name!r}")
    return np.ascontiguousarray(w, dtype=dtype)


def initialize_kernel(name, shape, rng, dtype):
    """A convolution kernel of `shape` (C_out, C_in, kh, kw), with PyTorch's fans: fan_in = C_in·kh·kw,
    fan_out = C_out·kh·kw; `orthogonal` makes the (C_out, C_in·kh·kw) matrix orthogonal."""
    c_out, rest = shape[0], int(np.prod(shape[1:]))
    fan_in, fan_out = rest, c_out * int(np.prod(shape[2:]))
    if name == "orthogonal":
        return np.ascontiguousarray(initialize(name, rest, c_out, rng, dtype).T.reshape(shape))
    if name == "xavier_normal":
        w = rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))
    elif name == "xavier_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, shape)
    else:
        raise ValueError(f"unknown initialisation {name!r}")
    return np.ascontiguousarray(w, dtype=dtype)
