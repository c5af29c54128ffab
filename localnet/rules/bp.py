"""Backprop, the baseline: backward messages are gradients dℒ/dh, computed by the layer above with its own
weights and derivative (weight transport, which is what makes it non-local). The base class's defaults are
backprop's: learn from the gradient received, send Wᵀe down."""

from .base import Rule


class Backprop(Rule):
    name = "bp"
    # no error, no change fails: η̂ scales no gradient it sends down
    invariants = frozenset({"first_order_descent", "locality", "determinism"})

    def chain_kinds(self, first_target):
        return "gradient", "gradient"

    def backward_kinds(self, from_loss):
        return ("gradient",)
