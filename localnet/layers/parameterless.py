"""What the families without parameters share (flatten, add): no state to keep, no feedback map (each one's f is
exactly invertible, or its edges are identities), and a backward phase that passes what it received down, each
family saying how (`_down`)."""

from __future__ import annotations

import numpy as np

from ..errors import LocalnetError
from ..messages import Outbox
from .base import Layer, combined


class ParameterlessLayer(Layer):
    needs_feedback = False

    def __init__(self, name, in_shape, spec, *, target_step, kernels, seed, down_kinds, inputs, **_):
        self.name, self.in_shape = name, tuple(in_shape)
        self.out_shape = tuple(self.output_shape(spec, self.in_shape))
        self.inputs = tuple(inputs)
        self.k, self.target_step, self.down_kinds = kernels, target_step, frozenset(down_kinds)
        self.rng = np.random.Generator(np.random.PCG64(seed))  # never drawn from; the step-recording code reads it
        self.x = self.a = self.h = self.target = None
        self.grads, self.reconstruction_loss = {}, None

    def forward(self, inbox, train):
        self.x = self.join(inbox.each("activation"))
        self.a = self.h = self._map(self.x)
        out = Outbox()
        out.send("activation", self.h)
        return out

    def backward(self, inbox):
        """Learn nothing; pass down what came: the target or gradient for x, or, below ℒ's gradient where targets
        go down, the first target x − η̂ ∂ℒ/∂x."""
        if "target" not in inbox and "gradient" not in inbox:
            return Outbox()  # below direct channels, which skip it: nothing to pass on
        received = "target" if "target" in inbox else "gradient"
        message = combined(inbox, received, self.h)
        lag = inbox.lag(received) if hasattr(inbox, "lag") else 0
        self.target = message if received == "target" else self.k.arrays.descend(self.h, message, self.target_step)
        down = self._down(received, message)
        out = Outbox()
        if received in self.down_kinds:
            self.send_down(out, received, down, received, lag=lag, base=self.x if received == "target" else None)
        elif "target" in self.down_kinds:
            self.send_down(out, "target", self.k.arrays.descend(self.x, down, self.target_step), "gradient",
                           lag=lag, base=self.x)
        return out

    def f(self, x):
        """f on an input of someone else's making (DDTP's response through the layers above), no state change."""
        return self._map(x)

    # -- what a family supplies -----------------------------------------------------------------------------------
    def _map(self, x):
        """f(x)."""
        raise NotImplementedError

    def _down(self, kind, message):
        """What goes down for x (x's shape) when `message` (a target or gradient for h) came."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------------------------------
    def state(self):
        return {}

    def load_state(self, state):
        if state:
            raise LocalnetError(f"layer {self.name!r} ({self.family}) keeps no state; got {', '.join(sorted(state))}")

    def nonfinite(self, phase):
        arrays = {"forward activation": [self.h], "target": [self.target]}.get(phase, [])
        return any(a is not None and not np.isfinite(self.k.arrays.to_host(a)).all() for a in arrays)
