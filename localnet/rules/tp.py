"""Plain target propagation: ĥ_{i-1} = g_i(ĥ_i), with no difference correction (the contrast to DTP)."""

from .dtp import DifferenceTargetPropagation


class TargetPropagation(DifferenceTargetPropagation):
    name = "tp"
    displaced_targets = False
    # no error, no change fails: g(h) ≠ x unless g inverts f exactly (the contrast DESIGN §4 draws)
    invariants = frozenset({"exact_inverse", "first_order_descent", "locality", "determinism"})

    def target_below(self, layer, x, h, target):
        return layer.g(target)
