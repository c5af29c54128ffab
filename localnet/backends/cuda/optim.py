"""CUDA optimiser steps, in place on device arrays: the arithmetic of the numba CPU backend (hyper-parameters
rounded to the array's type, Adam's bias corrections folded into two scalars, states flushed to zero below the
smallest normal number), one thread per element."""

import numpy as np

from ..numpy.optim import state_names  # noqa: F401  (the state layout is the algorithm's, not the backend's)
from . import arrays  # noqa: F401  (Optimizer allocates and reads back its state through it)
from . import kernels as K


def _tiny(p):
    """The flush-to-zero threshold of the states, in the array's type (numpy/optim.py says why)."""
    return np.finfo(p.dtype).tiny


def _flat(a):
    return a.reshape(-1)


def _flat_in(g, like):
    return (g if arrays.is_device(g) else arrays.to_device(g.astype(like.dtype, copy=False))).reshape(-1)


def sgd(p, g, state, spec, t):
    f = p.dtype.type
    buf = state["momentum"] if spec.momentum else p
    K.launch_1d(K._sgd, p.size, _flat(p), _flat_in(g, p), _flat(buf), f(spec.lr), f(spec.momentum),
                f(spec.weight_decay), _tiny(p))


def rmsprop(p, g, state, spec, t):
    """RMSprop with eps inside the square root (Graves 2013; Lee et al.'s DTP code), optionally centered."""
    f = p.dtype.type
    sq = state["square_avg"]
    avg = state["grad_avg"] if spec.centered else sq
    buf = state["momentum"] if spec.momentum else sq
    K.launch_1d(K._rmsprop, p.size, _flat(p), _flat_in(g, p), _flat(sq), _flat(avg), _flat(buf), f(spec.lr),
                f(spec.alpha), f(1 - spec.alpha), f(spec.eps), f(spec.momentum), f(spec.weight_decay),
                bool(spec.centered), _tiny(p))


def adam(p, g, state, spec, t):
    """Adam with bias correction (Kingma & Ba 2015); t counts steps from 1."""
    f = p.dtype.type
    beta1, beta2 = spec.betas
    K.launch_1d(K._adam, p.size, _flat(p), _flat_in(g, p), _flat(state["m"]), _flat(state["v"]),
                f(spec.lr / (1 - beta1 ** t)), f(beta1), f(1 - beta1), f(beta2), f(1 - beta2),
                f(1 / (1 - beta2 ** t)), f(spec.eps), f(spec.weight_decay), _tiny(p))


STEPS = {"sgd": sgd, "rmsprop": rmsprop, "adam": adam}
