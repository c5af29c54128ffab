"""Testing tools for localnet rules and layers, public: the invariants of DESIGN §4 as checks that raise
AssertionError with a clear message (`invariants`), hypothesis strategies that draw specs, networks, parameter sets,
batches and whole cases (`strategies`, needs hypothesis), and a pytest plugin that loads a hypothesis profile without
deadlines (`plugin`). A new rule is tested in three lines::

    @given(cases("my_rule"))
    def test_my_rule(case):
        check_invariants(*case)
"""

from .invariants import (CHECKS, check_determinism, check_difference_identity, check_exact_inverse_dtp_equals_tp,
                         check_first_order_descent, check_invariants, check_locality, check_no_error_no_change,
                         clone)

_STRATEGIES = ("specs", "networks", "parameter_sets", "batches", "cases", "Case", "SMOOTH")

__all__ = ["CHECKS", "check_determinism", "check_difference_identity", "check_exact_inverse_dtp_equals_tp",
           "check_first_order_descent", "check_invariants", "check_locality", "check_no_error_no_change", "clone",
           *_STRATEGIES]


def __getattr__(name):
    """The strategies import hypothesis, which the checks do not need: loaded on first use."""
    if name in _STRATEGIES:
        from . import strategies
        return getattr(strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
