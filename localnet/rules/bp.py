"""Backprop, the baseline: backward messages are gradients dℒ/dh, computed by the layer above with its own
weights and derivative (weight transport, which is what makes it non-local)."""

from .base import Rule


class Backprop(Rule):
    name = "bp"

    def chain_kinds(self, first_target):
        return "gradient", "gradient"

    def backward_kinds(self, from_loss):
        return ("gradient",)
