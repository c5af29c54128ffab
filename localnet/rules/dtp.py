"""Difference target propagation (Lee, Zhang, Fischer & Bengio 2015, Algorithm 1)."""

from .base import Rule


class DifferenceTargetPropagation(Rule):
    name = "dtp"
    uses_feedback = True
    invariants = frozenset({"no_error_no_change", "exact_inverse", "difference_identity", "first_order_descent",
                            "locality", "determinism"})

    def chain_kinds(self, first_target):
        # with the first target on the last hidden layer, the output layer learns from ℒ's gradient itself
        return ("target" if first_target == "output" else "gradient"), "target"

    def backward_kinds(self, from_loss):
        return ("target", "gradient") if from_loss else ("target",)

    def target_below(self, layer, x, h, target):
        # ĥ_{i-1} = h_{i-1} + g_i(ĥ_i) − g_i(h_i): the correction cancels g's reconstruction error
        return layer.g_difference(x, h, target)

    def feedback_gradient(self, layer, respond=None):
        # ‖g(f(x + ε)) − (x + ε)‖², ε ~ N(0, σ²) at the layer's input (DESIGN §2 step 4)
        return layer.reconstruction_gradient()
