"""A dry learning step: forward and backward phases on a batch, exactly as a learning step runs them, with each
layer's inbox, outbox, stored arrays and gradients recorded, and afterwards nothing changed (no parameter, no
optimiser state, no generator moved). Engine-side and non-local by design: it sees every layer."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerRecord:
    """What one layer received, kept and sent during a dry step (copies, float arrays in the network's dtype)."""

    name: str
    rng_state: dict  # the layer's generator state before the step (its forward phase may sample)
    # kind -> array, as delivered (kind -> {sender: array} where several channels bring that kind)
    forward_inbox: dict = field(default_factory=dict)
    activation: np.ndarray | None = None  # what its forward phase sent (h)
    backward_inbox: dict = field(default_factory=dict)  # kind ("target" or "gradient") -> array, as above
    outbox: dict = field(default_factory=dict)  # what its backward phase sent down (keys as in its Outbox)
    messages: dict = field(default_factory=dict)  # phase -> copies of the Messages it received
    x: np.ndarray | None = None  # its input, pre-activation, output and target, as stored by the layer
    a: np.ndarray | None = None
    h: np.ndarray | None = None
    target: np.ndarray | None = None
    grads: dict = field(default_factory=dict)  # the gradient its forward update would use: {"W", "b"}

    @property
    def received(self):
        """The kind of the message it learned from: "target" or "gradient"."""
        return next(iter(self.backward_inbox), None)

    def inbox(self, phase):
        """A fresh, unaudited Inbox of what the layer received in `phase` ("forward" or "backward"), to replay it."""
        from ..messages import Inbox
        return Inbox(self.name, phase, [_copy_message(m) for m in self.messages.get(phase, ())])


_MISSING = object()


def _copy(mapping):
    return {k: np.array(v, copy=True) for k, v in mapping.items()}


def _copy_message(m):
    from ..messages import Message
    return Message(m.kind, m.sender, np.array(m.payload, copy=True), m.provenance, m.lag)


def _received(inbox):
    """kind -> array, or kind -> {sender: array} where several messages of the kind arrived (copies)."""
    out = {}
    for m in inbox.messages():
        payload = np.array(m.payload, copy=True)
        if inbox.count(m.kind) > 1:
            out.setdefault(m.kind, {})[m.sender] = payload
        else:
            out[m.kind] = payload
    return out


def record_step(net, x, y) -> dict:
    """{layer name: LayerRecord} of a dry learning step on (x, y): the forward phase in training mode (sampling
    units sample) and the backward phase, through the network's own engine; no feedback training, no update.
    Every layer's generator is put back where it was, so the training stream is untouched."""
    states = {name: copy.deepcopy(layer.rng.bit_generator.state) for name, layer in net.layers.items()}
    records = {name: LayerRecord(name, states[name]) for name in net.layers}
    originals = {}

    def wrap(name, layer):
        forward, backward = layer.forward, layer.backward
        rec = records[name]

        def recorded_forward(inbox, train):
            rec.forward_inbox = _received(inbox)
            rec.messages["forward"] = [_copy_message(m) for m in inbox.messages()]
            out = forward(inbox, train)
            rec.activation = np.array(out["activation"], copy=True)
            return out

        def recorded_backward(inbox):
            rec.backward_inbox = _received(inbox)
            rec.messages["backward"] = [_copy_message(m) for m in inbox.messages()]
            out = backward(inbox)
            rec.outbox = _copy(out)
            rec.grads = _copy(layer.grads or {})
            return out

        originals[name] = (layer, {attr: vars(layer).get(attr, _MISSING) for attr in ("forward", "backward")})
        layer.forward, layer.backward = recorded_forward, recorded_backward

    try:
        for name, layer in net.layers.items():
            wrap(name, layer)
        net.targets(x, y)  # forward (train=True) and backward through the engine; clears the gradients after
    finally:
        for layer, saved in originals.values():
            for attr, value in saved.items():
                if value is _MISSING:
                    del layer.__dict__[attr]
                else:
                    setattr(layer, attr, value)
        for name, layer in net.layers.items():
            layer.rng.bit_generator.state = states[name]
            layer.grads = None
    for name, layer in net.layers.items():
        rec = records[name]
        rec.x, rec.a, rec.h, rec.target = (None if v is None else np.array(v, copy=True)
                                           for v in (layer.x, layer.a, layer.h, layer.target))
    return records
