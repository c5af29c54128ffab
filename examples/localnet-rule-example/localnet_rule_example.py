"""An example localnet plugin: importing this module registers the rule `scaled_dtp`.

It is difference target propagation whose target for the layer below moves only `scale` of DTP's way:
ĥ_{i-1} = h_{i-1} + scale · (g_i(ĥ_i) − g_i(h_i)). With scale = 1 it is DTP.
"""

from localnet.rules import DifferenceTargetPropagation, register_rule


@register_rule
class ScaledDTP(DifferenceTargetPropagation):
    name = "scaled_dtp"
    scale = 0.5

    def target_below(self, layer, x, h, target):
        return x + self.scale * (super().target_below(layer, x, h, target) - x)
