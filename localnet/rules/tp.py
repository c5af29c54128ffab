"""Plain target propagation: ĥ_{i-1} = g_i(ĥ_i), with no difference correction (the contrast to DTP)."""

from .dtp import DifferenceTargetPropagation


class TargetPropagation(DifferenceTargetPropagation):
    name = "tp"
    displaced_targets = False

    def target_below(self, layer, x, h, target):
        return layer.g(target)
