"""Plain target propagation: ĥ_{i-1} = g_i(ĥ_i), with no difference correction (the contrast to DTP)."""

from .dtp import DifferenceTargetPropagation


class TargetPropagation(DifferenceTargetPropagation):
    name = "tp"

    def target_below(self, k, x, h, target, V, c, fb_act):
        return k.feedback(target, V, c, fb_act)
