"""The flatten family: C×H×W to one vector of C·H·W values in C order, and back for what goes down (DESIGN §8).

It has no parameters and no feedback map: its f is a reshape, exactly invertible, so a target or gradient from
above goes down reshaped, unchanged. (A dense layer flattens a C×H×W input by itself; `flatten` says so in the
spec and shows the shape change in `localnet show`.)"""

from __future__ import annotations

import numpy as np

from .base import Reference, flat_size, register_family
from .parameterless import ParameterlessLayer


@register_family
class FlattenLayer(ParameterlessLayer):
    family = "flatten"

    @classmethod
    def output_shape(cls, layer_spec, in_shape):
        return (flat_size(in_shape),)

    def _map(self, x):
        return x.reshape(len(x), *self.out_shape)

    def _down(self, kind, message):
        return message.reshape(len(message), *self.in_shape)

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
