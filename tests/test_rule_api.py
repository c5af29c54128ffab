"""The open rule API as a user meets it: the example of docs/writing-rules.md runs as written (a rule that is not
DTP, tested with localnet.testing), and a rule written against the API trains, is audited and refused where the
layer families cannot give it what it needs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from localnet.audit import audit_network
from localnet.errors import SpecError
from localnet.network import Network
from localnet.rules import Rule, register_rule, unregister_rule
from localnet.spec import load_spec

PAGE = Path(__file__).parent.parent / "docs" / "writing-rules.md"


def test_the_pages_example_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 2
    namespace = {}
    try:
        for block in blocks:  # the rule, then its hypothesis test, which the page calls
            exec(compile(block, str(PAGE), "exec"), namespace)
        net = Network(load_spec(spec("signed_error_fa")), 0, 5, 3)
        x, y = np.random.default_rng(0).standard_normal((6, 5)), np.arange(6) % 3
        net.engine.forward(*net._batch(x, y), train=True)
        net.engine.backward()
        sent = np.asarray(net.engine._sent["backward"]["h2"]["gradient"])
        assert set(np.unique(np.abs(sent))) <= {0.0, 1e-3}  # one bit per unit crossed the channel
    finally:
        unregister_rule("signed_error_fa")


def spec(rule, layers=None):
    return {"name": "api", "seed": 1, "dtype": "float64", "backend": "numpy", "data": {"name": "digits"},
            "network": {"layers": layers or [{"name": "h1", "size": 4}, {"name": "h2", "size": 4},
                                             {"name": "out", "size": 3, "activation": "linear"}],
                        "feedback": {"activation": "linear", "bias": False}},
            "rule": {"name": rule}, "optimizer": {"forward": {"type": "sgd", "lr": 0.1}}}


class HalfError(Rule):
    """A rule from the base class: each layer learns from half the gradient it received and sends backprop's
    gradient of that down."""
    name = "test_half_error"

    def chain_kinds(self, first_target):
        return "gradient", "gradient"

    def backward_kinds(self, from_loss):
        return ("gradient",)

    def error(self, layer, step):
        return 0.5 * step.message, None


def test_a_rule_from_the_base_class_changes_what_a_layer_learns_from():
    register_rule(HalfError)
    try:
        half, bp = (Network(load_spec(spec(r)), 0, 5, 3) for r in ("test_half_error", "bp"))
        bp.load_parameters(half.parameters())
        x, y = np.random.default_rng(1).standard_normal((6, 5)), np.arange(6) % 3
        for net in (half, bp):
            net.engine.forward(*net._batch(x, y), train=True)
            net.engine.backward()
        # the output layer's error is halved; each layer below gets half of a halved error: 1/2, 1/4, 1/8
        for name, factor in (("out", 0.5), ("h2", 0.25), ("h1", 0.125)):
            np.testing.assert_allclose(half.layers[name].grads["W"], factor * bp.layers[name].grads["W"],
                                       rtol=1e-12, atol=1e-15)
        report = audit_network(half, x, y)
        assert report.consistent and report.verdicts["h1"][0] == "non-local"  # its gradients carry Wᵀ
    finally:
        unregister_rule("test_half_error")


class NeedsDirect(HalfError):
    name = "test_needs_direct"
    needs = frozenset({"round_trip"})


def test_a_rule_needing_what_a_family_does_not_offer_is_refused_at_spec_load():
    register_rule(NeedsDirect)
    conv = [{"name": "c", "type": "conv2d", "channels": 2, "kernel": 3}, {"name": "f", "type": "flatten"},
            {"name": "out", "size": 3, "activation": "linear"}]
    try:
        with pytest.raises(SpecError, match="rule 'test_needs_direct' does not support conv2d layers .layer 'c'.: "
                                            "it needs round_trip"):
            load_spec(spec("test_needs_direct", conv))
    finally:
        unregister_rule("test_needs_direct")
