"""Learning rules: what a layer sends down and which layers own a feedback map, in localnet's terms.

A rule never runs anything itself; layers call it with their own arrays and their backend's kernels.

Registering a rule is public API: subclass `Rule` (or a built-in rule), give it a `name`, and pass the class or an
instance to `register_rule`; a spec can then say `rule: {name: <that name>}`, and `localnet.testing` checks it
like the built-in rules::

    from localnet.rules import DifferenceTargetPropagation, register_rule

    @register_rule
    class MyDTP(DifferenceTargetPropagation):
        name = "my_dtp"
"""

from __future__ import annotations

import re

from .base import Rule
from .bp import Backprop
from .ddtp import DirectDifferenceTargetPropagation
from .dfa import DirectFeedbackAlignment
from .dtp import DifferenceTargetPropagation
from .drtp import DirectRandomTargetProjection
from .dtpdrl import DTPDifferenceReconstruction
from .fa import FeedbackAlignment
from .ldrl import LayerwiseDifferenceReconstruction
from .sign_symmetry import SignSymmetry
from .tp import TargetPropagation

__all__ = ["Rule", "Backprop", "DifferenceTargetPropagation", "DirectDifferenceTargetPropagation", "TargetPropagation", "RULES", "BUILT_IN",
           "DTPDifferenceReconstruction", "LayerwiseDifferenceReconstruction", "FeedbackAlignment",
           "DirectFeedbackAlignment", "SignSymmetry", "DirectRandomTargetProjection",
           "get_rule", "register_rule", "unregister_rule"]

RULES = {rule.name: rule for rule in (DifferenceTargetPropagation(), TargetPropagation(), Backprop(),
                                      DirectDifferenceTargetPropagation(), DTPDifferenceReconstruction(),
                                      LayerwiseDifferenceReconstruction(), FeedbackAlignment(),
                                      DirectFeedbackAlignment(), SignSymmetry(), DirectRandomTargetProjection())}
BUILT_IN = tuple(RULES)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def get_rule(name):
    return RULES[name]


def register_rule(rule, *, replace=False):
    """Make `rule` (a Rule subclass or instance) available to specs under `rule.name`; returns its argument, so it
    works as a class decorator. A name already registered is refused unless `replace` (built-ins never)."""
    instance = rule() if isinstance(rule, type) else rule
    if not isinstance(instance, Rule):
        raise TypeError(f"register_rule takes a localnet.rules.Rule subclass or instance, not {rule!r}")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a rule's name is a letter or _, then up to 63 letters, digits, _ or -; got {name!r}")
    if name in BUILT_IN or (name in RULES and not replace):
        raise ValueError(f"a rule named {name!r} is already registered"
                         + ("" if name in BUILT_IN else " (pass replace=True to replace it)"))
    RULES[name] = instance
    return rule


def unregister_rule(name):
    """Remove a rule registered with `register_rule` (built-in rules stay)."""
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in rule")
    RULES.pop(name, None)
