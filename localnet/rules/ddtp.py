"""Direct difference target propagation with linear feedback, DDTP-linear (Meulemans, Carzaniga, Suykens,
Sacramento & Grewe 2020, "A theoretical framework for target propagation"), trained with their difference
reconstruction loss (DRL).

Targets: the output layer L gets the first target ĥ_L = h_L − η̂ ∂ℒ/∂h_L from the loss and trains on it; it then
sends the *displacement* ĥ_L − h_L straight to every hidden layer i on a direct target channel `out -> h_i` (no
channel to the layer directly below is needed: the channels skip layers). Each hidden layer owns a linear feedback
map g_i(z) = z Q_i (Q_i of shape (n_L, n_i), no bias: with the difference correction a bias cancels) and forms

    ĥ_i = h_i + g_i(ĥ_L) − g_i(h_L) = h_i + (ĥ_L − h_L) Q_i,

which, for linear g_i, needs only the displacement; so the channel carries that, never h_L itself (an activation
channel `out -> h_i` would close a forward cycle). Each hidden layer then trains W_i, b_i on its local loss
‖h_i − ĥ_i‖², as in DTP.

Feedback training, the DRL as the paper and the authors' code set it for DDTP: noise ε ~ N(0, σ²) is injected
at layer i, the perturbed activation h_i + ε is carried forward through the layers above to the output, r_L, and
Q_i minimises

    (1/σ²) ‖h_i + g_i(r_L) − g_i(h_L) − (h_i + ε)‖² = (1/σ²) ‖(r_L − h_L) Q_i − ε‖²

(summed over units, averaged over the batch; weight decay through the feedback optimiser's `weight_decay`).
This is the paper's choice and it is not layer-local: r_L is the output's response to a perturbation of h_i,
a forward pass through the layers above with their own weights (in a physical network, the network itself
propagating the injected noise). The paper gives no layer-wise approximation for DDTP, so localnet implements it
as the paper does: the engine runs that forward pass (each layer above computes its own f on its perturbed input,
with no state change and without the channels' constraints) and hands the layer the response; the read is
recorded, and `localnet audit` shows it in the feedback column as "the output's response to noise injected here".
"""

from __future__ import annotations

import numpy as np

from ..errors import LocalnetError
from .base import Rule


class DirectDifferenceTargetPropagation(Rule):
    name = "ddtp_linear"
    graphs = False  # direct targets from the output to every layer: a chain
    uses_feedback = True
    direct = True
    direct_channels = "directly from the output layer to each layer under it, and from `loss` to the output layer"  # targets go from the output layer straight to every hidden layer
    needs = frozenset({"direct_feedback"})
    linear_feedback = True  # g_i(z) = z Q_i
    first_targets = ("output",)  # the output layer's displacement is what every direct channel carries
    feedback_service = "response"  # Q_i is trained on the output's response to noise injected at layer i
    invariants = frozenset({"no_error_no_change", "difference_identity", "first_order_descent", "locality",
                            "determinism"})

    def chain_kinds(self, first_target):
        return ("target" if first_target == "output" else "gradient"), "target"

    def chain_backward(self, layers):
        """Backward channels `chain` implies: (sender, receiver, kind): the loss to the output layer, then the
        output layer straight to each hidden layer."""
        out = layers[-1]
        return [("loss", out, "target")] + [(out, name, "target") for name in reversed(layers[:-1])]

    def backward_kinds(self, from_loss):
        return ("target",)

    def allows_backward(self, sender, receiver, below, top):
        """Whether a target channel sender -> receiver may exist: only from the output layer `top` (which feeds
        the loss) to a layer under it, or from the loss to `top`; never from one hidden layer to another."""
        return sender == top or (sender == "loss" and below)

    def error(self, layer, step):
        if step.kind == "target" and layer.direct_feedback:  # ĥ_i = h_i + g_i(ĥ_L − h_L) = h_i + (ĥ_L − h_L) Q_i
            target = step.h + layer.g(step.message)
            return layer.local_delta(step.h, target), target
        return super().error(layer, step)

    def send(self, layer, step, kinds, out):
        """The output layer sends the displacement ĥ_L − h_L down every direct channel (the same payload to all)."""
        if "target" in kinds and step.kind == "target":
            out.send("target", step.target - step.h, "target", lag=step.lag)
        else:
            super().send(layer, step, kinds, out)

    def feedback_gradient(self, layer, respond=None):
        return next(self.feedback_gradients(layer, respond))

    def feedback_gradients(self, layer, respond=None):
        """The DRL (1/σ²)‖g(r_L − h_L) − ε‖² over Q (summed over units, averaged over the batch), from the output's
        response r_L to the noise ε injected at this layer; h_L, the response to h itself, once per step."""
        if respond is None:
            raise LocalnetError(f"layer {layer.name!r}: direct feedback training needs the output's response to "
                                "a perturbation, which only the local engine provides")
        h, sigma = layer.h, layer.feedback_noise
        base = respond(h)
        scale = 1.0 / (sigma * sigma * len(h))
        while True:
            eps = layer.noise(h.shape)
            g, pullback = layer.g_pullback(respond(h + eps) - base)
            diff = g - eps
            rows = diff.reshape(len(diff), -1)  # a conv block's C×H×W as one row per sample
            yield pullback(diff, scale=2 * scale), float(np.einsum("ij,ij->", rows, rows) * scale)
