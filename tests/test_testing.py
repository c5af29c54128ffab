"""localnet.testing, the public library: every check on every built-in rule — passing where DESIGN §4 says the
invariant holds, failing where it says it does not — and on broken rules and kernels, to show each check can
fail; the strategies; a user-defined rule tested in three lines; rule registration; the pytest plugin."""

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import localnet
from localnet.backends.numpy import dense as numpy_dense
from localnet.diagnostics import record_step
from localnet.errors import SpecError
from localnet.rules import RULES, DifferenceTargetPropagation, get_rule, register_rule, unregister_rule
from localnet.testing import (CHECKS, batches, cases, check_determinism, check_difference_identity,
                              check_exact_inverse_dtp_equals_tp, check_first_order_descent, check_invariants,
                              check_locality, check_no_error_no_change, networks, parameter_sets, specs)

SETTINGS = settings(deadline=None, max_examples=20)
HOLDS = {  # DESIGN §4, per built-in rule (test_feedback_alignment.py and test_drl_rules.py check the others)
    "dtp": set(CHECKS),
    "tp": {"exact_inverse", "first_order_descent", "locality", "determinism"},
    "bp": {"first_order_descent", "locality", "determinism"},
}


def test_each_rule_declares_the_invariants_design_says_hold():
    for rule, holds in HOLDS.items():
        assert get_rule(rule).invariants == holds


@pytest.mark.parametrize("rule", sorted(HOLDS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_builtin_rule_satisfies_its_invariants(rule, dtype):
    @SETTINGS
    @given(cases(rule, dtype=dtype))
    def run(case):
        assert set(check_invariants(*case)) == HOLDS[rule]  # what the rule declares, checked by default

    run()


def fixed_case(rule, seed, *, first_target="output", acts=("tanh", "tanh", "tanh", "linear"), dtype="float64"):
    d = {"name": "fixed", "seed": seed, "dtype": dtype, "backend": "numpy", "data": {"name": "digits"},
         "network": {"layers": [{"name": f"l{i + 1}", "size": w, "activation": a}
                                for i, (w, a) in enumerate(zip((6, 5, 4, 3), acts))],
                     "feedback": {"activation": "tanh"}},
         "rule": {"name": rule, "target_step": 0.4, "first_target": first_target, "feedback_noise": 0.1},
         "optimizer": {"forward": {"type": "adam", "lr": 0.01}, "feedback": {"type": "adam", "lr": 0.01}}}
    net = localnet.build(localnet.load_spec(d), n_features=5, n_classes=3)
    rng = np.random.default_rng(seed)
    net.load_parameters({name: {k: 0.7 * rng.standard_normal(v.shape) for k, v in p.items()}
                         for name, p in net.parameters().items()})
    return net, rng.standard_normal((7, 5)), rng.integers(0, 3, 7)


CONTRASTS = [(rule, check) for rule in sorted(HOLDS) for check in sorted(set(CHECKS) - HOLDS[rule])]


@pytest.mark.parametrize("rule,check", CONTRASTS)
@pytest.mark.parametrize("first_target", ["output", "last_hidden"])
@pytest.mark.parametrize("seed", [0, 1])
def test_checks_fail_where_design_says_the_invariant_does_not_hold(rule, check, first_target, seed):
    """The contrast: TP fails no-error-no-change and the difference identity (its targets inherit g's
    reconstruction error); backprop fails no-error-no-change (η̂ scales none of the gradients it sends down) and
    has no feedback maps for the other two to check."""
    net, x, y = fixed_case(rule, seed, first_target=first_target)
    message = {"no_error_no_change": r"layer 'l1'", "difference_identity": r"layer 'l\d'|nothing to check",
               "exact_inverse": "nothing to check"}[check]
    if rule == "bp":
        message = {"no_error_no_change": "forward update is not zero"}.get(check, "nothing to check")
    with pytest.raises(AssertionError, match=message):
        CHECKS[check](net, x, y)
    assert check not in check_invariants(net, x, y)  # not declared, so not checked by default ...
    with pytest.raises(AssertionError, match=rf"\[{check}\]"):  # ... but it can be asked for, to show it fails
        check_invariants(net, x, y, only=[check])


def test_checks_leave_the_network_alone():
    net, x, y = fixed_case("dtp", 3, acts=("stochastic_binary", "tanh", "tanh", "linear"))
    before = net.state()
    check_invariants(net, x, y, skip=("first_order_descent",))
    after = net.state()
    for name in before:
        for k in before[name]:
            assert np.asarray(before[name][k]).tobytes() == np.asarray(after[name][k]).tobytes(), (name, k)


def test_record_step_records_inboxes_and_changes_nothing():
    net, x, y = fixed_case("dtp", 4, acts=("stochastic_binary", "tanh", "tanh", "linear"))
    before = net.state()
    records = record_step(net, x, y)
    again = record_step(net, x, y)
    for name in net.layers:
        assert "forward" not in vars(net.layers[name]) and "backward" not in vars(net.layers[name])
        assert records[name].received == "target"  # first target on the output: every layer learns from a target
        np.testing.assert_array_equal(records[name].h, again[name].h)  # same generator state: same samples
        assert set(records[name].grads) == {"W", "b"}
    np.testing.assert_array_equal(records["l1"].forward_inbox["activation"], x)
    np.testing.assert_array_equal(records["l2"].forward_inbox["activation"], records["l1"].activation)
    np.testing.assert_array_equal(records["l1"].backward_inbox["target"], records["l2"].outbox["target"])
    for name in before:
        for k in before[name]:
            assert np.asarray(before[name][k]).tobytes() == np.asarray(net.state()[name][k]).tobytes(), (name, k)


# --------------------------------------------------------------------------------------------------------------
# Each check can fail: broken rules and kernels
# --------------------------------------------------------------------------------------------------------------
class Halfway(DifferenceTargetPropagation):
    """A wrong DTP: half the difference correction. Exact inverses no longer give TP's targets."""
    name = "test_halfway"

    def target_below(self, layer, x, h, target):
        return x + 0.5 * (layer.g(target) - layer.g(h))


class Offset(DifferenceTargetPropagation):
    """A wrong DTP: a constant added to every target sent down (an error out of nothing)."""
    name = "test_offset"

    def target_below(self, layer, x, h, target):
        return super().target_below(layer, x, h, target) + 0.01


class Stateful(DifferenceTargetPropagation):
    """A non-local DTP: one rule object serves every layer, and this one carries what it computed for one layer
    into the next layer's target."""
    name = "test_stateful"

    def __init__(self):
        self.last = None

    def target_below(self, layer, x, h, target):
        out = super().target_below(layer, x, h, target)
        if self.last is not None:
            out = out + 1e-3 * float(np.mean(self.last))
        self.last = np.array(out)
        return out


PEEK = []


class Peeking(DifferenceTargetPropagation):
    """A non-local DTP: it reads the first layer's weights of the most recently built network."""
    name = "test_peeking"

    def target_below(self, layer, x, h, target):
        W = PEEK[-1].layers["l1"].forward_params["W"]
        return super().target_below(layer, x, h, target) + 1e-3 * float(W.sum())


class Unseeded(DifferenceTargetPropagation):
    """A non-deterministic DTP: noise from numpy's global generator instead of the layer's own."""
    name = "test_unseeded"

    def target_below(self, layer, x, h, target):
        return super().target_below(layer, x, h, target) + 1e-6 * np.random.standard_normal(x.shape)


@pytest.fixture
def broken_rules():
    for rule in (Halfway, Offset, Stateful, Peeking, Unseeded):
        register_rule(rule)
    yield
    for rule in (Halfway, Offset, Stateful, Peeking, Unseeded):
        unregister_rule(rule.name)


@pytest.mark.usefixtures("broken_rules")
def test_each_check_catches_a_broken_rule(monkeypatch):
    net, x, y = fixed_case("test_halfway", 5)
    with pytest.raises(AssertionError, match="differs from TP's g"):
        check_exact_inverse_dtp_equals_tp(net, x, y)
    with pytest.raises(AssertionError, match="g\\(ĥ\\) − ĥ_below and g\\(h\\) − h_below differ"):
        check_difference_identity(net, x, y)
    check_no_error_no_change(net, x, y)  # with η̂ = 0 its halved correction is still zero

    net, x, y = fixed_case("test_offset", 5)
    with pytest.raises(AssertionError, match="its target differs from its activation"):
        check_no_error_no_change(net, x, y)

    net, x, y = fixed_case("test_stateful", 5)
    with pytest.raises(AssertionError, match="is not local"):
        check_locality(net, x, y)

    original = localnet.network.Network.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PEEK.append(self)

    monkeypatch.setattr(localnet.network.Network, "__init__", remember)
    net, x, y = fixed_case("test_peeking", 5)
    with pytest.raises(AssertionError, match="layer 'l\\d': what it sends down .* changed when only other layers"):
        check_locality(net, x, y)
    monkeypatch.setattr(localnet.network.Network, "__init__", original)
    PEEK.clear()

    net, x, y = fixed_case("test_unseeded", 5)
    with pytest.raises(AssertionError, match="the same seed does not give the same numbers"):
        check_determinism(net, x, y)
    with pytest.raises(AssertionError, match="is not local"):  # numpy's global generator is outside the layer
        check_locality(net, x, y)


def test_first_order_descent_catches_a_kernel_that_drops_the_derivative(monkeypatch):
    """A backend whose parameter gradient forgets s'(a): the update is no longer the local loss's gradient."""
    net, x, y = fixed_case("dtp", 7)
    check_first_order_descent(net, x, y)

    def no_derivative(a, h, delta, act):
        return delta

    monkeypatch.setattr(numpy_dense, "pre_activation_error", no_derivative)
    with pytest.raises(AssertionError, match="its loss changes at rate .* its update says"):
        check_first_order_descent(net, x, y)


def test_first_order_descent_needs_differentiable_units():
    net, x, y = fixed_case("dtp", 8, acts=("step", "tanh", "tanh", "linear"))
    with pytest.raises(ValueError, match="surrogate derivative"):
        check_first_order_descent(net, x, y)
    with pytest.raises(ValueError, match="unknown checks"):
        check_invariants(net, x, y, skip=("descent",))


# --------------------------------------------------------------------------------------------------------------
# A user's rule, in three lines
# --------------------------------------------------------------------------------------------------------------
class ReorderedDTP(DifferenceTargetPropagation):
    """A user's rule: DTP with the correction written another way, ĥ_{i-1} = g(ĥ_i) + (h_{i-1} − g(h_i))."""
    name = "reordered_dtp"

    def target_below(self, layer, x, h, target):
        return layer.g(target) + (x - layer.g(h))


@pytest.fixture
def users_rule():
    register_rule(ReorderedDTP)
    yield
    unregister_rule("reordered_dtp")


@pytest.mark.usefixtures("users_rule")
def test_a_user_defined_rule_is_tested_in_three_lines():
    @given(cases("reordered_dtp"))                   # 1
    def test_my_rule(case):                          # 2
        check_invariants(*case)                      # 3

    settings(max_examples=15, deadline=None)(test_my_rule)()


@pytest.mark.usefixtures("broken_rules")
def test_a_broken_user_rule_fails_the_three_lines():
    @settings(max_examples=5, deadline=None, database=None, phases=[Phase.generate])  # no shrinking: faster
    @given(cases("test_halfway"))
    def test_my_rule(case):
        check_invariants(*case)

    with pytest.raises(AssertionError, match=r"invariants fail:\n\[exact_inverse\]"):
        test_my_rule()


def test_registering_rules():
    assert "reordered_dtp" not in RULES
    spec = {"name": "r", "data": {"name": "digits"}, "network": {"layers": [{"name": "out", "size": 10}]},
            "rule": {"name": "reordered_dtp"}}
    with pytest.raises(SpecError, match="rule.name: unknown name; expected one of 'dtp', 'tp', 'bp'"):
        localnet.load_spec(spec)
    assert register_rule(ReorderedDTP) is ReorderedDTP  # a class decorator
    try:
        assert localnet.load_spec(spec).rule.name == "reordered_dtp"
        with pytest.raises(ValueError, match="already registered"):
            register_rule(ReorderedDTP)
        register_rule(ReorderedDTP(), replace=True)
        with pytest.raises(ValueError, match="already registered"):
            register_rule(type("Mine", (DifferenceTargetPropagation,), {"name": "dtp"}), replace=True)
        with pytest.raises(ValueError, match="a rule's name"):
            register_rule(type("Bad", (DifferenceTargetPropagation,), {"name": "no spaces"}))
        with pytest.raises(TypeError):
            register_rule(object())
    finally:
        unregister_rule("reordered_dtp")
    with pytest.raises(ValueError, match="built-in"):
        unregister_rule("bp")
    with pytest.raises(SpecError):
        localnet.load_spec(spec)


# --------------------------------------------------------------------------------------------------------------
# The strategies
# --------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(st.data(), st.sampled_from(sorted(HOLDS)))
def test_strategies_draw_valid_specs_networks_and_batches(data, rule):
    spec = data.draw(specs(rule, depth=(2, 3), dtype=["float32", "float64"]))
    loaded = localnet.load_spec(spec)
    assert loaded.rule.name == rule and loaded.backend == "numpy"
    net = data.draw(networks(rule, width=3, n_features=4))
    assert net.n_features == 4 and all(layer.size == 3 for layer in list(net.layers.values())[:-1])
    if rule != "bp":  # a feedback rule always gets at least one feedback map
        assert any(layer.has_feedback for layer in net.layers.values())
    params = data.draw(parameter_sets(net))
    net.load_parameters(params)
    assert all(np.any(v != 0) for p in params.values() for v in p.values())
    x, y = data.draw(batches(4, net.n_classes, size=(2, 5), dtype="float32"))
    assert x.shape[1] == 4 and x.dtype == np.float32 and 2 <= len(x) <= 5 and y.max() < net.n_classes
    case = data.draw(cases(rule, batch_size=3))
    net, x, y = case
    assert len(x) == 3 and f"rule={rule}" in repr(case)


def test_strategies_refuse_an_unknown_rule():
    for strategy in (specs, networks, cases):
        with pytest.raises(ValueError, match="unknown rule 'nope'"):
            strategy("nope")


def test_the_plugin_loads_a_profile_without_deadlines(pytestconfig):
    """The `localnet` pytest11 entry point (pyproject.toml) loads the `localnet` hypothesis profile."""
    if not pytestconfig.pluginmanager.has_plugin("localnet"):
        pytest.skip("the localnet pytest plugin is not installed (pip install -e . registers its entry point)")
    assert settings.default.deadline is None
