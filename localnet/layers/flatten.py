"""The flatten family: C×H×W to one vector of C·H·W values in C order, and back for what goes down (DESIGN §8).

It has no parameters and no feedback map: its f is a reshape, exactly invertible, so a target or gradient from
above goes down reshaped, unchanged. (A dense layer flattens a C×H×W input by itself; `flatten` says so in the
spec and shows the shape change in `localnet show`.)"""

from __future__ import annotations

import numpy as np

from ..errors import LocalnetError
from ..messages import Outbox
from .base import Layer, Reference, flat_size, register_family


@register_family
class FlattenLayer(Layer):
    family = "flatten"
    needs_feedback = False

    @classmethod
    def output_shape(cls, layer_spec, in_shape):
        return (flat_size(in_shape),)

    def __init__(self, name, in_shape, spec, *, target_step, kernels, seed, down_kinds, **_):
        self.name, self.in_shape, self.out_shape = name, tuple(in_shape), (flat_size(in_shape),)
        self.k, self.target_step, self.down_kinds = kernels, target_step, frozenset(down_kinds)
        self.rng = np.random.Generator(np.random.PCG64(seed))  # never drawn from; the step-recording code reads it
        self.x = self.a = self.h = self.target = None
        self.grads, self.reconstruction_loss = {}, None

    def forward(self, inbox, train):
        x = inbox["activation"]
        self.x = x
        self.a = self.h = x.reshape(len(x), *self.out_shape)
        out = Outbox()
        out.send("activation", self.h)
        return out

    def backward(self, inbox):
        received = "target" if "target" in inbox else "gradient"
        message = inbox[received]
        lag = inbox.lag(received) if hasattr(inbox, "lag") else 0
        self.target = message if received == "target" else self.k.arrays.descend(self.h, message, self.target_step)
        out = Outbox()
        down = message.reshape(len(message), *self.in_shape)
        if received in self.down_kinds:
            out.send(received, down, received, lag=lag, **({"base": self.x} if received == "target" else {}))
        elif "target" in self.down_kinds:  # the first target, one step down ℒ's gradient
            out.send("target", self.k.arrays.descend(self.x, down, self.target_step), "gradient", lag=lag,
                     base=self.x)
        return out

    def state(self):
        return {}

    def load_state(self, state):
        if state:
            raise LocalnetError(f"layer {self.name!r} (flatten) keeps no state; got {', '.join(sorted(state))}")

    def nonfinite(self, phase):
        arrays = {"forward activation": [self.h], "target": [self.target]}.get(phase, [])
        return any(a is not None and not np.isfinite(self.k.arrays.to_host(a)).all() for a in arrays)

    def reference(self):
        return FlattenReference(self)


class FlattenReference(Reference):
    params = {}

    def __init__(self, layer):
        self.in_shape = layer.in_shape
        self.x = None if layer.x is None else np.asarray(layer.k.arrays.to_host(layer.x), np.float64)
        self.a = None if self.x is None else self.x.reshape(len(self.x), -1)

    def pre(self, x, params=None):
        x = np.asarray(x, np.float64)
        return x.reshape(len(x), -1)

    def param_vjp(self, x, e):
        return {}

    def input_vjp(self, e, params=None):
        return np.asarray(e, np.float64).reshape(len(e), *self.in_shape)
