"""Direct feedback alignment (Nøkland 2016, "Direct feedback alignment provides learning in deep neural
networks").

The output layer L learns from ℒ's gradient itself and sends its error e = ∂ℒ/∂a_L straight to every hidden
layer i on a direct channel (as DDTP's targets); layer i owns a fixed random B_i of shape (n_L, n_i) — its
feedback map g_i(z) = z B_i, from the output's space to its own, never trained — and learns from

    δ_i = (e B_i) ⊙ s'_i(a_i),   ΔW_i ∝ −h_{i−1}ᵀ δ_i.

No message carries another layer's weights; every hidden layer reads the output's error, broadcast.
"""

from .bp import Backprop
from .fa import _linear_feedback


class DirectFeedbackAlignment(Backprop):
    name = "dfa"
    graphs = False  # the output's error to every layer of a chain
    uses_feedback = True
    direct = True
    direct_channels = "directly from the output layer to each layer under it, and from `loss` to the output layer"
    needs = frozenset({"direct_feedback"})
    feedback = "fixed"
    linear_feedback = True
    first_targets = ("output",)  # the output's error goes to every hidden layer: no first target to move
    invariants = frozenset({"first_order_descent", "locality", "determinism"})  # ⟨δ, f⟩ for the δ the rule makes

    def check_spec(self, spec, error):
        _linear_feedback(self, spec, error)

    def chain_backward(self, layers):
        out = layers[-1]
        return [("loss", out, "gradient")] + [(out, name, "gradient") for name in reversed(layers[:-1])]

    def allows_backward(self, sender, receiver, below, top):
        return sender == top or (sender == "loss" and below)

    def error(self, layer, step):
        if layer.direct_feedback:  # e B_i: the output's error through this layer's own fixed B
            return layer.g(step.message), None
        return super().error(layer, step)

    def send(self, layer, step, kinds, out):
        if "gradient" in kinds:  # the output layer: its own error, the same payload to every hidden layer
            out.send("gradient", step.e, "s'", "∂ℒ", lag=step.lag)
