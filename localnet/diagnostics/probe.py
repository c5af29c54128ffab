"""The diagnostics probe: how each layer's local update compares with backprop's gradient on the same batch.

Explicitly non-local. The probe runs on the engine's side, between a learning step's backward phase and its
update: it reads every layer's parameters and what each layer stored during the step (its input, pre-activation,
output, target, and the gradient its update is about to use), computes backprop's gradient ∂ℒ/∂W_i, ∂ℒ/∂b_i for
the same batch with its own numpy backprop (reference.py, float64, nothing from localnet.backends), and reports per
layer. It writes nothing into any layer and draws no random number, so a run with diagnostics on trains exactly
the numbers the same run with diagnostics off trains. No layer ever sees its results.

Backprop goes through the activations the layers actually computed in this step (sampled ones included, with the
surrogate derivative of step and stochastic units) and through each channel as the identity.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np

from ..graph import LOSS
from . import reference

#: what `measure` reports for each layer, in this order (a JSON null where a value does not exist)
FIELDS = ("angle_bp", "distance_to_target", "target_norm", "activation_norm", "reconstruction_loss",
          "reconstruction_error", "update_norm", "bp_norm", "jfjg_positive", "jfjg_trace")


def backprop_gradients(net, labels) -> dict:
    """{layer: {key: ∂ℒ/∂param}} (float64) for the batch the network last ran forward on, by backprop through the
    arrays each layer stored (its input and pre-activation) and the network's current forward weights, each layer's
    part through its own `Reference` (the layer protocol); `labels` are that batch's labels. Works on any graph: a
    layer whose output feeds several consumers sums their gradients; a layer with no path to the loss gets zeros."""
    graph, layers = net.graph, net.layers
    loss = net.spec.network.loss
    to_input, grads = {}, {}  # consumer -> {its input: ∂ℒ/∂(that input)}
    for name in reversed(graph.forward_order):
        if name not in layers:
            continue
        layer = layers[name]
        dh = np.zeros(np.shape(layer.h))
        for channel in graph.outbound(name, ("activation",)):
            if channel.receiver == LOSS:
                dh = dh + reference.loss_gradient(loss, layer.h, labels)
            elif channel.receiver in to_input:
                dh = dh + to_input[channel.receiver][name]
        grads[name], dx = layer.reference().vjp(dh)
        to_input[name] = layer.parts(dx)  # each input's part, in its shape
    return grads


def _number(value):
    """A JSON-safe float: NaN and ±Inf become None (null)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean_norm(array):
    array = np.asarray(array, np.float64)
    return float(np.mean(np.linalg.norm(array.reshape(len(array), -1), axis=1))) if len(array) else math.nan


def _jfjg(ref):
    """(fraction of eigenvalues of J_f J_g with positive real part, its trace), with J_f and J_g the layer's
    Jacobians averaged over the batch; (None, None) where the family does not form them."""
    jacobians = ref.jacobians()
    if jacobians is None:
        return None, None
    product = jacobians[0] @ jacobians[1]
    if not np.isfinite(product).all():
        return None, None
    eigenvalues = np.linalg.eigvals(product)
    return float(np.mean(eigenvalues.real > 0)), float(np.trace(product))


def measure(net, labels, reconstruction=True) -> dict:
    """{layer: {field: value}} for the step in hand (call it after the backward phase, before the update):

    - angle_bp: degrees between the layer's local gradient (W and b flattened together: what its update is about
      to descend) and backprop's ∂ℒ/∂(W, b) on the same batch; null when either is zero
    - distance_to_target: batch mean of ‖h_i − ĥ_i‖ (for a layer trained on a gradient δ, ĥ = h − η̂δ); below a
      delayed channel the target is an older step's (null when that batch had another size)
    - target_norm, activation_norm: batch means of ‖ĥ_i‖ and ‖h_i‖
    - reconstruction_loss: the loss ‖g(f(h̃)) − h̃‖² (noisy input) of the feedback training this step did; null
      without g, and with `reconstruction=False` (a step that trained no feedback: alternate_epoch's forward pass)
    - reconstruction_error: the noise-free ‖g_i(h_i) − h_{i-1}‖² on this batch with the current g (null without g)
    - update_norm, bp_norm: the norms of the two gradients the angle is taken between
    - jfjg_positive, jfjg_trace: for a layer with g (Shibuya et al.'s FW-DTP diagnostics), the fraction of the
      eigenvalues of J_f J_g with positive real part, and its trace; J_f = ∂f_i/∂h_{i-1} and J_g = ∂g_i/∂h_i at this
      batch, each averaged over the samples (null without g, and for DDTP's direct maps, which invert no f_i)
    Squared errors are summed over units and averaged over the batch, like every loss in localnet.
    """
    collect = getattr(net.engine, "collect_layers", None)  # the MPI engine: bring other ranks' layers here
    if collect is not None:
        collect()
    bp = backprop_gradients(net, labels)
    out = {}
    for name, layer in net.layers.items():
        keys = layer.forward_keys
        local = reference.flat([layer.grads[k] for k in keys]) if layer.grads else None
        exact = reference.flat([bp[name][k] for k in keys])
        h = np.asarray(layer.h, np.float64)
        target = None if layer.target is None else np.asarray(layer.target, np.float64)
        error = positive = trace = None
        ref = layer.reference()
        if ref.has_g:  # a feedback map that inverts f (not DDTP's direct Q)
            g = ref.g(h)
            error = float(np.sum((g - ref.x.reshape(g.shape)) ** 2) / len(h))
            positive, trace = _jfjg(ref)
        out[name] = {
            "angle_bp": _number(reference.angle(local, exact)) if local is not None and keys else None,
            "distance_to_target": (_number(_mean_norm(h - target)) if target is not None and target.shape == h.shape
                                   else None),
            "target_norm": _number(_mean_norm(target)) if target is not None else None,
            "activation_norm": _number(_mean_norm(h)),
            "reconstruction_loss": (_number(layer.reconstruction_loss) if layer.has_feedback and reconstruction
                                    else None),
            "reconstruction_error": _number(error),
            "update_norm": _number(np.linalg.norm(local)) if local is not None else None,
            "bp_norm": _number(np.linalg.norm(exact)),
            "jfjg_positive": _number(positive),
            "jfjg_trace": _number(trace),
        }
    return out


class Probe:
    """Set as `network.probe` for one learning step: called between its backward phase and its update, it
    measures every layer (`measure`) and keeps the result in `layers` (None if the step did not learn, e.g. a
    feedback-only pass)."""

    def __init__(self, labels, reconstruction=True):
        self.labels = np.asarray(labels)
        self.reconstruction = reconstruction  # False: the step trains no feedback map (no reconstruction loss)
        self.layers = None

    def __call__(self, net):
        self.layers = measure(net, self.labels, self.reconstruction)

    def record(self, **where) -> dict:
        """A metrics.jsonl line: {"kind": "diagnostics", <where>..., "layers": {layer: {field: value}}}."""
        return {"kind": "diagnostics", **where, "layers": self.layers}


def diagnose(net, x, y) -> dict:
    """`measure` for a batch outside training: a dry step (forward in training mode, feedback maps as they are,
    backward), measured, then put back: no parameter changes and no generator moves. The targets go through the
    current feedback maps, i.e. as a step's would after its feedback training; no feedback training runs, so
    reconstruction_loss is null (reconstruction_error, noise-free, is there)."""
    states = {name: copy.deepcopy(layer.rng.bit_generator.state) for name, layer in net.layers.items()}
    probe = Probe(np.asarray(y), reconstruction=False)
    # channels that keep state (noise generators, delay queues) are put back too, where the engine can
    preserved = getattr(net.engine, "channels_preserved", contextlib.nullcontext)
    try:
        with preserved():
            net.engine.forward(*net._batch(x, y), train=True)
            net.engine.backward()
        probe(net)
    finally:
        for name, layer in net.layers.items():
            layer.grads = None
            layer.rng.bit_generator.state = states[name]
    return probe.layers
