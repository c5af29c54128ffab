"""Locality you can prove: what a layer may read (its inbox, checked per read), what it may hold (its own state,
checked at build and before checkpoints), what it may write (nothing it received), and the audit of what each
rule's layers actually used in a real step, with its verdict."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import localnet
import localnet.network
from localnet.audit import (ACTIVATION, FIRST_TARGET, GRADIENT_ABOVE, LABEL, LOCAL, LOSS_GRADIENT, NON_LOCAL,
                            TARGET_ABOVE, WEIGHTS, audit, audit_network)
from localnet.cli import main
from localnet.errors import LocalityError
from localnet.layers import FAMILIES
from localnet.layers.dense import DenseLayer
from localnet.messages import Outbox

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"
SMALL = ["backend=numpy", "network.layers.h1.size=12", "network.layers.h2.size=9"]


def spec(*overrides):
    return localnet.load_spec(QUICKSTART, SMALL + list(overrides))


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 64)), rng.integers(0, 10, n)


def net_of(*overrides):
    return localnet.build(spec(*overrides), n_features=64, n_classes=10)


# --------------------------------------------------------------------------------------------------------------
# Reads: only declared kinds, only in their phase
# --------------------------------------------------------------------------------------------------------------
class ReadsGradient(DenseLayer):
    """A DTP layer that also asks for a gradient, which no DTP channel brings it."""

    def backward(self, inbox):
        inbox["gradient"]
        return super().backward(inbox)


class ReadsTargetEarly(DenseLayer):
    def forward(self, inbox, train):
        inbox["target"]  # declared, but it arrives in the backward phase
        return super().forward(inbox, train)


def test_reading_an_undeclared_kind_fails_naming_layer_and_kind():
    net = net_of()
    net.layers["h2"].__class__ = ReadsGradient
    with pytest.raises(LocalityError, match=r"layer 'h2' asked for 'gradient' in the backward phase, but no "
                                            r"declared channel brings it a 'gradient' message; its inbox holds: "
                                            r"target from 'out'"):
        net.train_step(*batch())


def test_reading_a_kind_in_the_wrong_phase_fails_naming_layer_and_kind():
    net = net_of()
    net.layers["out"].__class__ = ReadsTargetEarly
    with pytest.raises(LocalityError, match=r"layer 'out' asked for 'target' in the forward phase, but its target "
                                            r"channel delivers in another phase"):
        net.forward(batch()[0])


def test_the_inbox_lag_query_is_checked_like_a_read():
    net = net_of()
    net.train_step(*batch())
    inbox = net.engine.inboxes["backward"]["h1"]
    assert inbox.lag("target") == 0
    with pytest.raises(LocalityError, match="'h1' asked for 'gradient'"):
        inbox.lag("gradient")
    with pytest.raises(LocalityError):
        inbox.get("gradient")  # asking is reading: no silent default for an undeclared kind
    assert "gradient" not in inbox and "target" in inbox  # is the port connected? not a read


# --------------------------------------------------------------------------------------------------------------
# Writes: what a node receives is read-only, and a write names the layer
# --------------------------------------------------------------------------------------------------------------
class WritesInput(DenseLayer):
    def forward(self, inbox, train):
        x = inbox["activation"]
        x *= 0.5  # in place, into the sender's memory
        return super().forward(inbox, train)


class WritesTarget(DenseLayer):
    def backward(self, inbox):
        inbox["target"][0, 0] = 0.0
        return super().backward(inbox)


@pytest.mark.parametrize("cls,layer,phase", [(WritesInput, "h2", "forward"), (WritesTarget, "h1", "backward")])
def test_writing_into_a_received_array_fails_naming_the_layer(cls, layer, phase):
    net = net_of()
    before = net.parameters()
    net.layers[layer].__class__ = cls
    with pytest.raises(LocalityError, match=rf"layer '{layer}' tried to write into a read-only array in the "
                                            rf"{phase} phase .*read-only"):
        net.train_step(*batch())
    after = net.parameters()  # the step stopped before any forward update
    assert all(np.array_equal(before[n][k], after[n][k]) for n in before for k in ("W", "b"))


class UnlocksInput(DenseLayer):
    def forward(self, inbox, train):
        inbox["activation"].flags.writeable = True  # numpy allows it: the sender's array is writable
        return super().forward(inbox, train)


def test_making_a_received_array_writable_again_is_caught_naming_the_layer():
    net = net_of()
    net.layers["out"].__class__ = UnlocksInput
    with pytest.raises(LocalityError, match=r"layer 'out' made the activation it received from 'h2' writable in "
                                            r"the forward phase"):
        net.forward(batch()[0])


@pytest.mark.parametrize("overrides", [[], ["rule.name=bp"], ["rule.first_target=last_hidden"],
                                       ["network.constraints=[{kind: target, type: delay, steps: 1}]"]])
def test_every_received_payload_is_read_only(overrides):
    net = net_of(*overrides)
    for _ in range(3):
        net.train_step(*batch())
    for phase, inboxes in net.engine.inboxes.items():
        for name, inbox in inboxes.items():
            for message in inbox.messages():
                assert not message.payload.flags.writeable, (phase, name, message.kind)
    assert not net.layers["h2"].x.flags.writeable


# --------------------------------------------------------------------------------------------------------------
# Holding: no node keeps another node, another's parameters, or memory another may write
# --------------------------------------------------------------------------------------------------------------
def rogue(keep):
    """A DenseLayer class whose second instance (h2) keeps `keep(the first)` as `self.peer`."""
    built = []

    class Rogue(DenseLayer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if len(built) == 1:
                self.peer = keep(built[0])
            built.append(self)
    return Rogue


@pytest.mark.parametrize("keep,message", [
    (lambda other: other, r"layer 'h2' holds a reference to node 'h1' \(at h2\.peer\)"),
    (lambda other: {"cache": [other]}, r"layer 'h2' holds a reference to node 'h1' \(at h2\.peer\['cache'\]\[0\]\)"),
    (lambda other: other.forward, r"layer 'h2' holds a reference to node 'h1' \(at h2\.peer\.__self__\)"),
    (lambda other: (lambda: other.size), r"layer 'h2' holds a reference to node 'h1' \(at h2\.peer closure other\)"),
    (lambda other: other.forward_params["W"], r"layer 'h2' holds memory of node 'h1''s W \(at h2\.peer\)"),
    (lambda other: other.forward_params["W"][:3, ::2].T, r"layer 'h2' holds memory of node 'h1''s W"),
    (lambda other: other.forward_optimizer.state["W"]["m"][1:], r"holds memory of node 'h1''s "
                                                                 r"forward_optimizer\.W\.m"),
    (lambda other: other.forward_params, r"layer 'h2' shares a mutable dict with node 'h1'"),
    (lambda other: other.rng, r"layer 'h2' shares a mutable Generator with node 'h1'"),
])
def test_a_layer_holding_another_fails_at_build(monkeypatch, keep, message):
    monkeypatch.setitem(FAMILIES, "dense", rogue(keep))  # every dense layer the network builds is a Rogue
    with pytest.raises(LocalityError, match=message):
        net_of()


def test_a_layer_that_grabs_another_at_run_time_is_caught_before_the_next_checkpoint(tmp_path):
    net = net_of()
    net.train_step(*batch())
    net.check_isolation()  # clean: read-only views of what it received are allowed
    net.layers["out"].stash = net.layers["h2"].forward_params["b"][2:]
    with pytest.raises(LocalityError, match=r"layer 'out' holds memory of node 'h2''s b \(at out\.stash\)"):
        net.check_isolation()
    del net.layers["out"].stash
    net.layers["h1"].scratch = net.layers["h2"].h  # h2's own output, writable: two writers of one memory
    with pytest.raises(LocalityError, match=r"can both write the same memory \(h1\.scratch and h2\.h\)|"
                                            r"can both write the same memory \(h2\.h and h1\.scratch\)"):
        net.check_isolation()


def test_a_layer_holding_another_layers_weights_at_checkpoint_stops_the_run(tmp_path, monkeypatch):
    from localnet.training import train
    original = DenseLayer.apply_update
    victims = {}

    def thief(self):
        original(self)
        victims[self.name] = self.forward_params["W"]
        if self.name == "h1" and "out" in victims:
            self.loot = victims["out"]
    monkeypatch.setattr(DenseLayer, "apply_update", thief)
    with pytest.raises(LocalityError, match=r"layer 'h1' holds memory of node 'out''s W \(at h1\.loot\)"):
        train(spec("train.epochs=1"), runs_root=tmp_path)


# --------------------------------------------------------------------------------------------------------------
# DESIGN §4: a layer's update depends only on its own state and its inbox
# --------------------------------------------------------------------------------------------------------------
def _replay(net, name):
    """The layer's gradients and outbox from its backward phase, re-run on the inbox it received this step."""
    from localnet.messages import Inbox
    layer = net.layers[name]
    inbox = Inbox(name, "backward", net.engine.inboxes["backward"][name].messages())
    saved = dict(vars(layer))
    try:
        out = layer.backward(inbox)
        return {k: v.copy() for k, v in layer.grads.items()}, {k: np.array(v) for k, v in out.items()}
    finally:
        vars(layer).clear()
        vars(layer).update(saved)


@pytest.mark.parametrize("overrides", [[], ["rule.name=tp"], ["rule.name=bp"], ["rule.first_target=last_hidden"]])
def test_perturbing_other_layers_leaves_a_layers_update_unchanged(overrides):
    net = net_of(*overrides)
    x, y = batch()
    net.engine.forward(*net._batch(x, y), train=True)
    net.engine.backward()
    rng = np.random.default_rng(1)
    for name in net.layers:
        grads, out = _replay(net, name)
        saved = net.parameters()
        for other, layer in net.layers.items():
            if other != name:
                for p in layer.parameters().values():
                    p += rng.standard_normal(p.shape).astype(p.dtype)
        grads2, out2 = _replay(net, name)
        net.load_parameters(saved)
        for k in grads:
            np.testing.assert_array_equal(grads[k], grads2[k], err_msg=f"{name} {k}")
        for k in out:
            np.testing.assert_array_equal(out[k], out2[k], err_msg=f"{name} sends {k}")


def test_the_invariant_catches_a_layer_that_reads_another_layers_weights():
    """The test above can fail: a layer that keeps (and uses) another layer's weights breaks it."""
    net = net_of()
    x, y = batch()
    net.engine.forward(*net._batch(x, y), train=True)
    net.engine.backward()
    h1 = net.layers["h1"]
    h1.__class__ = UsesOthersWeights
    h1.spy = net.layers["out"].forward_params["W"]
    grads, _ = _replay(net, "h1")
    net.layers["out"].forward_params["W"] += 1.0
    grads2, _ = _replay(net, "h1")
    assert not np.array_equal(grads["W"], grads2["W"])
    with pytest.raises(LocalityError, match="layer 'h1' holds memory of node 'out''s W"):
        net.check_isolation()


class UsesOthersWeights(DenseLayer):
    def backward(self, inbox):
        out = super().backward(inbox)
        self.grads["W"] = self.grads["W"] + self.spy.sum()
        return out


# --------------------------------------------------------------------------------------------------------------
# The audit: categories and verdicts from a real step
# --------------------------------------------------------------------------------------------------------------
FORWARD = {"h1": {ACTIVATION}, "h2": {ACTIVATION}, "out": {ACTIVATION}, "loss": {ACTIVATION, LABEL}}
AUDITS = {
    "dtp-output": ([], FIRST_TARGET, {"h1": {TARGET_ABOVE}, "h2": {TARGET_ABOVE},
                                      "out": {TARGET_ABOVE, LOSS_GRADIENT}}),
    "dtp-last_hidden": (["rule.first_target=last_hidden"], FIRST_TARGET,
                        {"h1": {TARGET_ABOVE}, "h2": {TARGET_ABOVE, LOSS_GRADIENT, WEIGHTS}, "out": {LOSS_GRADIENT}}),
    "tp-output": (["rule.name=tp"], FIRST_TARGET, {"h1": {TARGET_ABOVE}, "h2": {TARGET_ABOVE},
                                                  "out": {TARGET_ABOVE, LOSS_GRADIENT}}),
    "tp-last_hidden": (["rule.name=tp", "rule.first_target=last_hidden"], FIRST_TARGET,
                       {"h1": {TARGET_ABOVE}, "h2": {TARGET_ABOVE, LOSS_GRADIENT, WEIGHTS}, "out": {LOSS_GRADIENT}}),
    "bp": (["rule.name=bp"], NON_LOCAL, {"h1": {GRADIENT_ABOVE, WEIGHTS}, "h2": {GRADIENT_ABOVE, WEIGHTS},
                                         "out": {LOSS_GRADIENT}}),
}
LAYER_VERDICTS = {
    "dtp-output": {"h1": LOCAL, "h2": LOCAL, "out": FIRST_TARGET},
    "dtp-last_hidden": {"h1": LOCAL, "h2": FIRST_TARGET, "out": FIRST_TARGET},
    "bp": {"h1": NON_LOCAL, "h2": NON_LOCAL, "out": FIRST_TARGET},
}


@pytest.mark.parametrize("case", list(AUDITS))
def test_the_audit_of_each_rule(case):
    overrides, verdict, backward = AUDITS[case]
    report = audit(spec(*overrides))
    for layer, cats in FORWARD.items():
        assert report.categories(layer, "forward") == cats, (layer, "forward")
    for layer, cats in backward.items():
        assert report.categories(layer, "backward") == cats, (layer, "backward")
    assert all(not report.categories(layer, "feedback") for layer in report.layers)
    assert report.verdict == verdict
    if case in LAYER_VERDICTS:
        assert {n: v for n, (v, _) in report.verdicts.items()} == LAYER_VERDICTS[case]
    assert report.consistent and report.provenance_checked  # declared provenance matches the measured one
    if verdict == NON_LOCAL:
        assert "h1, h2 learn from gradients that carry the layer above's transposed weights" in report.reason
    if case == "dtp-last_hidden":
        assert "h2: first target from out, ∂ℒ carried through out's Wᵀ and s'" in report.reason


def test_the_audit_comes_from_what_was_recorded():
    """Nothing is recorded before a step; the recorded reads are exactly the channels that delivered; turning the
    recording off records nothing."""
    net = net_of()
    assert net.engine.audit.reads == set()
    net.engine.audit.enabled = False
    net.train_step(*batch())
    assert net.engine.audit.reads == set()
    net.engine.audit.enabled = True
    net.train_step(*batch())
    got = {(r, phase, kind, sender) for r, phase, kind, sender, _ in net.engine.audit.reads}
    channels = {(c.receiver, "forward" if c.kind in ("activation", "label") else "backward", c.kind, c.sender)
                for c in net.graph.channels}
    assert got == channels


class SendsTransportedTarget(DenseLayer):
    """Computes the target it sends down with its forward weights' transpose (like backprop) but declares that it
    used its feedback map: the audit's perturbation check sees through the claim."""

    def backward(self, inbox):
        out = super().backward(inbox)
        if "target" in out:
            W = self.forward_params["W"]
            fake = Outbox()
            fake.send("target", self.x - 0.1 * (self.h - self.target) @ W.T, "target", "V", "c")
            return fake
        return out


def test_the_audit_measures_weight_transport_rather_than_trusting_the_declaration():
    net = net_of()
    net.layers["h2"].__class__ = SendsTransportedTarget
    report = audit_network(net, *batch())
    assert not report.consistent
    bad = [c for c in report.provenance_checked if not c[-1]]
    assert [(s, k, r) for s, k, r, *_ in bad] == [("h2", "target", "h1")]
    assert WEIGHTS in report.categories("h1", "backward")
    assert report.verdicts["h1"][0] == NON_LOCAL and report.verdict == NON_LOCAL


def test_the_audit_leaves_the_step_as_it_was():
    """The provenance probe re-runs backward phases with perturbed weights; afterwards every parameter and
    every layer attribute is what the real step left."""
    a, b = net_of(), net_of()
    x, y = batch()
    audit_network(a, x, y)
    b.train_step(x, y)
    pa, pb = a.parameters(), b.parameters()
    assert all(np.array_equal(pa[n][k], pb[n][k]) for n in pa for k in pa[n])
    for name in a.layers:
        np.testing.assert_array_equal(a.layers[name].target, b.layers[name].target)


# --------------------------------------------------------------------------------------------------------------
# `localnet audit`, end to end
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,args,verdict", [
    ("specs/quickstart.yaml", [], "verdict (dtp, first target on the output): local apart from the first target"),
    ("specs/quickstart.yaml", ["--set", "rule.first_target=last_hidden"],
     "verdict (dtp, first target on the last hidden): local apart from the first target"),
    ("specs/fashion-mnist-dtp.yaml", [], "verdict (dtp, first target on the output): local apart from the first"),
    ("specs/fashion-mnist-tp.yaml", [], "verdict (tp, first target on the output): local apart from the first"),
    ("specs/fashion-mnist-bp.yaml", [], "verdict (bp): non-local: h1, h2, h3, h4, h5 learn from gradients that "
                                        "carry the layer above's transposed weights Wᵀ"),
])
def test_the_audit_command(path, args, verdict, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LOCALNET_NO_DOWNLOAD", "1")  # it needs no data set
    result = CliRunner().invoke(main, ["audit", str(ROOT / path), *args, "--set", "backend=numpy"])
    assert result.exit_code == 0, result.output
    assert verdict in result.output
    assert "provenance checked" in result.output and "isolation: ok" in result.output
    assert "locality audit" in result.output


def test_the_audit_command_json_and_errors(monkeypatch):
    result = CliRunner().invoke(main, ["audit", str(QUICKSTART), "--json", "--set", "rule.name=bp"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["verdict"] == NON_LOCAL and data["layers"]["h1"]["verdict"] == NON_LOCAL
    assert {u["sender"] for u in data["layers"]["h1"]["uses"]} == {"input", "h2"}
    assert all(c["consistent"] for c in data["provenance_checked"])
    result = CliRunner().invoke(main, ["audit", str(QUICKSTART), "--set", "rule.name=nope"])
    assert result.exit_code == 2 and "rule.name" in result.output


def test_the_audit_shows_constraints_on_channels(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(main, ["audit", str(ROOT / "specs" / "constraints-noise.yaml")])
    assert result.exit_code == 0, result.output
    assert "target ← out (V, c) [noise(std=0.01)]" in result.output
    assert "verdict (dtp, first target on the output): local apart from the first target" in result.output
