"""The add family: an identity skip, h = x_1 + … + x_m over inputs of one shape (a residual connection's merge;
DESIGN §8: each edge's map A_j is the identity, and so is its feedback map where the rule needs one).

No parameters and nothing to learn. What goes down to input j is what an identity edge gives: the gradient as it
came (backprop), or DTP's difference target through g_j = identity, x_j + (ĥ − h) — the displacement ĥ − h,
unchanged, to every input. The layer keeps its inputs stacked, x of shape (m, *shape) per sample, so that its f,
its reference and `parts` speak of one array. A rule whose targets are not displacements (plain TP sends g(ĥ)) has
no identity target to give, and is refused at spec load."""

from __future__ import annotations

import numpy as np

from .base import Reference, register_family, shape_text
from .parameterless import ParameterlessLayer


@register_family
class AddLayer(ParameterlessLayer):
    family = "add"

    @classmethod
    def check_spec(cls, spec, layer_spec, where, error):
        from ..rules import get_rule
        if not get_rule(spec.rule.name).displaced_targets:
            raise error(("rule", "name"), f"rule {spec.rule.name!r} sends targets that are not displacements, so an "
                        f"add layer ({layer_spec.name!r}) has no identity target to pass down",
                        expected="a rule with difference targets (dtp, ldrl, ...) or bp", found=repr(spec.rule.name))
        if layer_spec.inputs is not None and len(layer_spec.inputs) < 2:
            raise error((*where, "inputs"), f"an add layer ({layer_spec.name!r}) merges two or more inputs",
                        expected="inputs: [<a>, <b>, ...]", found=list(layer_spec.inputs))

    @classmethod
    def input_shape(cls, layer_spec, shapes):
        if len(shapes) < 2:
            raise ValueError("an add layer merges two or more inputs (`inputs: [a, b]`)")
        if len(set(map(tuple, shapes))) > 1:
            raise ValueError("its inputs must have one shape, got " + ", ".join(shape_text(s) for s in shapes))
        return (len(shapes), *shapes[0])

    @classmethod
    def output_shape(cls, layer_spec, in_shape):
        return tuple(in_shape[1:])

    def join(self, parts):
        return np.stack([parts[sender] for sender, _ in self.inputs], axis=1)

    def parts(self, value):
        return {sender: value[:, j] for j, (sender, _) in enumerate(self.inputs)}

    def _map(self, x):
        return x.sum(axis=1)

    def _down(self, kind, message):
        if kind == "target":  # x_j + (ĥ − h), the same displacement to every input
            return self.x + np.expand_dims(message - self.h, 1)
        return np.broadcast_to(np.expand_dims(message, 1), self.x.shape)

    def reference(self):
        return AddReference(self)


class AddReference(Reference):
    params = {}

    def __init__(self, layer):
        self.x = None if layer.x is None else np.asarray(layer.k.arrays.to_host(layer.x), np.float64)
        self.a = None if self.x is None else self.x.sum(axis=1)

    def pre(self, x, params=None):
        return np.asarray(x, np.float64).sum(axis=1)

    def param_vjp(self, x, e):
        return {}

    def input_vjp(self, e, params=None):
        e = np.asarray(e, np.float64)
        return np.repeat(np.expand_dims(e, 1), self.x.shape[1], axis=1)
