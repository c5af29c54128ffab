"""An optimiser instance: a layer owns one per pathway; the arithmetic is its backend's kernel."""

from __future__ import annotations

import numpy as np


class Optimizer:
    def __init__(self, spec, params: dict, kernels):
        self.spec = spec
        self._step = kernels.STEPS[spec.type]
        self.t = 0
        self.state = {name: {s: np.zeros_like(p) for s in kernels.state_names(spec)} for name, p in params.items()}

    def step(self, params: dict, grads: dict):
        """Update each parameter in place from its gradient."""
        self.t += 1
        for name, grad in grads.items():
            self._step(params[name], grad, self.state[name], self.spec, self.t)
