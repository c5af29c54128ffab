"""An optimiser instance: a layer owns one per pathway; the arithmetic is its backend's kernel."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import LocalnetError


SECOND_MOMENTS = ("v", "square_avg")  # the state arrays that average g²


class Optimizer:
    def __init__(self, spec, params: dict, kernels):
        """kernels: the backend's optim module (its STEPS, state_names, and the backend's `arrays`: the state lives
        where the parameters do)."""
        self.spec = spec
        self._base_lr = spec.lr  # the schedule's starting point; `spec.lr` is this epoch's
        self._step = kernels.STEPS[spec.type]
        self._arrays = kernels.arrays
        self.t = 0
        self.state = {name: {s: self._arrays.zeros_like(p) for s in kernels.state_names(spec)}
                      for name, p in params.items()}

    def start_epoch(self, epoch, epochs):
        """Set the learning rate of `epoch` (from 1) by the spec's schedule; `epochs`: the run's length."""
        spec = self.spec
        if spec.schedule == "constant":
            return
        period = spec.schedule_epochs or epochs
        lr = spec.min_lr + (self._base_lr - spec.min_lr) * (1 + math.cos(math.pi * (epoch - 1) / period)) / 2
        self.spec = dataclasses.replace(spec, lr=lr)

    def step(self, params: dict, grads: dict):
        """Update each parameter in place from its gradient."""
        self.t += 1
        for name, grad in grads.items():
            self._step(params[name], grad, self.state[name], self.spec, self.t)

    def looks_finite(self) -> bool:
        """The divergence guard's cheap check of the state: one sum per second moment (Adam's v, RMSprop's average
        of g²). An average of squares overflows to Inf long before anything else does (g² against g), and the
        update divides by its root: it silently becomes 0, which no loss, activation or parameter shows. The
        other states turn non-finite only with a gradient or parameter that the other checks see."""
        return all(self._arrays.sum_is_finite(arrays[key]) for arrays in self.state.values()
                   for key in SECOND_MOMENTS if key in arrays)

    def state_dict(self) -> dict:
        """Copies of everything a later step depends on: {"t": steps taken, "<param>.<state>": array}."""
        out = {"t": np.array(self.t, np.int64)}
        for name, arrays in self.state.items():
            for key, value in arrays.items():
                out[f"{name}.{key}"] = self._arrays.to_host(value)
        return out

    def load_state_dict(self, state: dict):
        """Restore from `state_dict()`'s output, in place; every key, shape and dtype must match."""
        own = self.state_dict()
        if set(state) != set(own):
            raise LocalnetError(f"optimiser state has {sorted(state)}, expected {sorted(own)}")
        for key, value in state.items():
            value = np.asarray(value)
            if value.shape != own[key].shape or value.dtype != own[key].dtype:
                raise LocalnetError(f"optimiser state {key}: {value.dtype} of shape {value.shape}, "
                                    f"expected {own[key].dtype} of shape {own[key].shape}")
        for name, arrays in self.state.items():
            for key, array in arrays.items():
                self._arrays.assign(array, state[f"{name}.{key}"])
        self.t = int(state["t"])
