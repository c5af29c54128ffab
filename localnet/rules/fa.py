"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, "Random synaptic feedback weights support error
backpropagation for deep learning").

Backprop with the transport of W replaced by a fixed random matrix: layer i+1 owns B_{i+1}, of W_{i+1}ᵀ's shape,
drawn once (the layer's feedback init) and never trained, and sends down δ_{i+1} B_{i+1}, its own error through
its own B; layer i learns from it as from a gradient, through its own derivative:

    δ_L = e = ∂ℒ/∂a_L,   δ_i = (δ_{i+1} B_{i+1}) ⊙ s'_i(a_i),   ΔW_i ∝ −h_{i−1}ᵀ δ_i.

In localnet's terms B_{i+1} is the layer's feedback map g (linear, no bias) acting on its pre-activation error,
`layer.vjp(e, through="feedback")`; for a conv block it is a transposed convolution with a fixed random kernel.
No message carries another layer's weights: the audit finds it local apart from ℒ's gradient at the output.
"""

from .bp import Backprop


class FeedbackAlignment(Backprop):
    name = "fa"
    uses_feedback = True
    feedback = "fixed"
    linear_feedback = True
    invariants = frozenset({"first_order_descent", "locality", "determinism"})  # ⟨δ, f⟩ for the δ the rule makes

    def owns_feedback(self, sends, received):
        return "gradient" in sends  # every layer that sends an error down sends it through its own B

    def check_spec(self, spec, error):
        _linear_feedback(self, spec, error)

    def send(self, layer, step, kinds, out):
        if "gradient" in kinds:  # the error through this layer's fixed B in place of Wᵀ
            layer.send_down(out, "gradient", layer.vjp(step.e, through="feedback"), "V", "s'", step.kind,
                            lag=step.lag)


def _linear_feedback(rule, spec, error):
    """The feedback-alignment family's B is a linear map with no bias: refuse other feedback maps at spec load."""
    where = [(("network", "feedback"), spec.network.feedback)]
    where += [(("network", "layers", i, "feedback"), layer.feedback) for i, layer in enumerate(spec.network.layers)
              if layer.feedback is not None]
    for path, fb in where:
        if fb.activation != "linear" or fb.bias:
            raise error(path, f"rule {rule.name!r} feeds errors back through fixed linear maps B, with no bias",
                        expected="feedback: {activation: linear, bias: false}",
                        found=f"activation: {fb.activation}, bias: {str(fb.bias).lower()}")
