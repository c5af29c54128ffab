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
