"""Learning rules: what a layer sends down and which layers own a feedback map, in localnet's terms.

A rule never runs anything itself; layers call it with their own arrays and their backend's kernels.
"""

from .bp import Backprop
from .dtp import DifferenceTargetPropagation
from .tp import TargetPropagation

RULES = {rule.name: rule for rule in (DifferenceTargetPropagation(), TargetPropagation(), Backprop())}


def get_rule(name):
    return RULES[name]
