"""The successors of DTP that share its machinery: DDTP-linear (Meulemans et al. 2020), checked against numpy
computations written here, independent of localnet's kernels."""

import numpy as np
import pytest
from hypothesis import given, settings

from localnet.audit import RESPONSE, TARGET_OUTPUT, audit_network
from localnet.errors import LocalnetError
from localnet.network import Network
from localnet.spec import load_spec
from localnet.spec.validate import SpecError
from localnet.testing import cases, check_determinism, check_first_order_descent, check_locality
from localnet.testing import check_no_error_no_change

N_FEATURES, N_CLASSES = 6, 3


def ddtp_spec(**rule):
    return {
        "name": "ddtp", "seed": 3, "dtype": "float64", "backend": "numpy", "data": {"name": "digits"},
        "network": {"layers": [{"name": "h1", "size": 5}, {"name": "h2", "size": 4},
                               {"name": "out", "size": N_CLASSES, "activation": "linear"}],
                    "feedback": {"activation": "linear", "bias": False}},
        "rule": {"name": "ddtp_linear", "target_step": 0.3, "feedback_noise": 0.2, **rule},
        "optimizer": {"forward": {"type": "sgd", "lr": 0.1}, "feedback": {"type": "sgd", "lr": 0.05}},
    }


def build(spec):
    return Network(load_spec(spec), 3, N_FEATURES, N_CLASSES)


def batch(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, N_FEATURES)), rng.integers(0, N_CLASSES, n)


def numpy_forward(params, x):
    hs = []
    for name, act in (("h1", np.tanh), ("h2", np.tanh), ("out", lambda a: a)):
        x = act(x @ params[name]["W"] + params[name]["b"])
        hs.append(x)
    return hs


def softmax_grad(logits, y):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p / len(y)  # batch-mean cross-entropy


def test_chain_makes_direct_channels_and_linear_maps():
    net = build(ddtp_spec())
    direct = {(c.sender, c.receiver) for c in net.graph.channels if c.kind == "target"}
    assert direct == {("loss", "out"), ("out", "h2"), ("out", "h1")}
    assert net.graph.feedback_layers == ("h1", "h2")
    shapes = {c.receiver: c.shape for c in net.graph.channels if c.kind == "target" and c.sender == "out"}
    assert shapes == {"h1": (N_CLASSES,), "h2": (N_CLASSES,)}  # the output's displacement, in its own space
    params = net.parameters()
    assert params["h1"]["V"].shape == (N_CLASSES, 5) and params["h2"]["V"].shape == (N_CLASSES, 4)
    assert "c" not in params["h1"] and "V" not in params["out"]


def test_targets_match_numpy():
    """ĥ_L = h_L − η̂ ∂ℒ/∂h_L and ĥ_i = h_i + (ĥ_L − h_L) Q_i, computed here."""
    net = build(ddtp_spec())
    x, y = batch()
    params = net.parameters()
    h1, h2, out = numpy_forward(params, x)
    t_out = out - 0.3 * softmax_grad(out, y)
    expected = [h1 + (t_out - out) @ params["h1"]["V"], h2 + (t_out - out) @ params["h2"]["V"], t_out]
    for got, want in zip(net.targets(x, y), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_forward_updates_descend_local_losses():
    """Each hidden layer's W gradient is that of ‖h_i − ĥ_i‖² (summed over units, batch mean), ĥ_i held fixed."""
    net = build(ddtp_spec())
    x, y = batch(1)
    params = net.parameters()
    h1, h2, out = numpy_forward(params, x)
    t_out = out - 0.3 * softmax_grad(out, y)
    t1 = h1 + (t_out - out) @ params["h1"]["V"]  # targets through Q as it was before the step's feedback update
    net.train_step(x, y)
    e = 2 * (h1 - t1) / len(x) * (1 - h1 ** 2)
    np.testing.assert_allclose(net.parameters()["h1"]["W"], params["h1"]["W"] - 0.1 * x.T @ e, rtol=1e-9, atol=1e-12)


def test_drl_feedback_step_matches_numpy():
    """One SGD step on (1/σ²)‖(r_L − h_L) Q_i − ε‖², ε drawn by the layer, r_L the output's response to h_i + ε
    through the layers above, computed here."""
    net = build(ddtp_spec())
    x, y = batch(2)
    params = net.parameters()
    h1, h2, out = numpy_forward(params, x)
    states = {n: net.layers[n].rng.bit_generator.state for n in ("h1", "h2")}
    net.feedback_step(x, y)
    sigma, lr = 0.2, 0.05

    def above(h, names):
        for name in names:
            h = h @ params[name]["W"] + params[name]["b"]
            h = h if name == "out" else np.tanh(h)
        return h

    for name, h, names in (("h1", h1, ("h2", "out")), ("h2", h2, ("out",))):
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = states[name]
        eps = sigma * rng.standard_normal(h.shape)
        r = above(h + eps, names) - above(h, names)
        Q = params[name]["V"]
        grad = 2 * r.T @ (r @ Q - eps) / (sigma ** 2 * len(x))
        np.testing.assert_allclose(net.parameters()[name]["V"], Q - lr * grad, rtol=1e-9, atol=1e-12)
        loss = np.sum((r @ Q - eps) ** 2) / (sigma ** 2 * len(x))
        assert net.layers[name].reconstruction_loss == pytest.approx(loss, rel=1e-9)


def test_affine_feedback_property():
    """DESIGN §4, for DDTP-linear: ĥ_i − h_i = (ĥ_L − h_L) Q_i, linear in η̂."""
    x, y = batch(3)
    gaps = []
    for step in (0.1, 0.2, 0.4):
        net = build(ddtp_spec(target_step=step))
        hs, ts = net.forward(x, train=True), net.targets(x, y)
        Q = net.parameters()
        np.testing.assert_allclose(ts[0] - hs[0], (ts[2] - hs[2]) @ Q["h1"]["V"], rtol=1e-10, atol=1e-13)
        gaps.append(ts[0] - hs[0])
    np.testing.assert_allclose(gaps[1], 2 * gaps[0], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(gaps[2], 4 * gaps[0], rtol=1e-9, atol=1e-13)


def test_no_error_no_change_hand():
    net = build(ddtp_spec(target_step=0.0))
    x, y = batch(4)
    for h, t in zip(net.forward(x, train=True), net.targets(x, y)):
        np.testing.assert_array_equal(h, t)


@settings(max_examples=15)
@given(cases("ddtp_linear", first_target="output", feedback_activations="linear", feedback_noise=(0.05, 0.3)))
def test_invariants(case):
    net, x, y = case
    check_no_error_no_change(net, x, y)
    check_first_order_descent(net, x, y)
    check_locality(net, x, y)
    check_determinism(net, x, y)


def test_audit_reports_direct_targets_and_the_response():
    net = build(ddtp_spec())
    report = audit_network(net, *batch(5))
    for name in ("h1", "h2"):
        assert TARGET_OUTPUT in report.categories(name, "backward")
        assert RESPONSE in report.categories(name, "feedback")
        assert report.verdicts[name][0] == "non-local"
    assert report.consistent


def test_refusals():
    with pytest.raises(SpecError, match="sends its messages directly from the output layer"):
        build({**ddtp_spec(), "network": {**ddtp_spec()["network"], "chain": None, "channels": [
            {"from": "input", "to": "h1", "kind": "activation"}, {"from": "h1", "to": "h2", "kind": "activation"},
            {"from": "h2", "to": "out", "kind": "activation"}, {"from": "out", "to": "loss", "kind": "activation"},
            {"from": "input", "to": "loss", "kind": "label"}, {"from": "loss", "to": "out", "kind": "target"},
            {"from": "out", "to": "h2", "kind": "target"}, {"from": "h2", "to": "h1", "kind": "target"}]}})
    dtp = ddtp_spec()
    dtp["rule"]["name"] = "dtp"
    dtp["network"]["channels"] = [
        {"from": "input", "to": "h1", "kind": "activation"}, {"from": "h1", "to": "h2", "kind": "activation"},
        {"from": "h2", "to": "out", "kind": "activation"}, {"from": "out", "to": "loss", "kind": "activation"},
        {"from": "input", "to": "loss", "kind": "label"}, {"from": "loss", "to": "out", "kind": "target"},
        {"from": "out", "to": "h2", "kind": "target"}, {"from": "out", "to": "h1", "kind": "target"}]
    with pytest.raises(SpecError, match="runs against an activation channel") as refused:
        build(dtp)
    assert "needs a rule with direct channels (ddtp_linear, dfa, drtp)" in str(refused.value)
    assert "expected h1 -> out to carry activations" in str(refused.value)
    tanh = ddtp_spec()
    tanh["network"]["feedback"] = {"activation": "tanh", "bias": False}
    with pytest.raises(LocalnetError, match="must be linear"):
        build(tanh)
    with pytest.raises(LocalnetError, match="feedback_noise"):
        build(ddtp_spec(feedback_noise=0.0))
    with pytest.raises(SpecError):
        build(ddtp_spec(first_target="last_hidden"))


def test_shipped_spec_builds_and_audits(tmp_path):
    from localnet.audit import audit
    spec = load_spec("specs/fashion-mnist-ddtp-linear.yaml")
    report = audit(spec, batch=4)
    assert TARGET_OUTPUT in report.categories("h1", "backward") and report.consistent


def test_jfjg_diagnostics_match_numpy():
    """Shibuya et al.'s diagnostics of J_f J_g (fraction of eigenvalues with positive real part, trace), with J_f and
    J_g averaged over the batch, against a hand computation."""
    from localnet.diagnostics import measure
    spec = ddtp_spec()
    spec["rule"] = {"name": "dtp", "target_step": 0.3, "feedback_noise": 0.2}
    spec["network"]["feedback"] = {"activation": "tanh"}
    net = build(spec)
    x, y = batch(6)
    seen = {}

    def probe(n):
        seen["fields"], seen["params"] = measure(n, y), n.parameters()
    net.probe = probe
    net.train_step(x, y)
    p = seen["params"]
    h1 = np.tanh(x @ p["h1"]["W"] + p["h1"]["b"])
    a2 = h1 @ p["h2"]["W"] + p["h2"]["b"]
    h2 = np.tanh(a2)
    jf = np.mean([np.diag(1 - np.tanh(a) ** 2) @ p["h2"]["W"].T for a in a2], axis=0)
    q = h2 @ p["h2"]["V"] + p["h2"]["c"]
    jg = np.mean([np.diag(1 - np.tanh(r) ** 2) @ p["h2"]["V"].T for r in q], axis=0)
    ev = np.linalg.eigvals(jf @ jg)
    fields = seen["fields"]["h2"]
    assert fields["jfjg_positive"] == pytest.approx(np.mean(ev.real > 0))
    assert fields["jfjg_trace"] == pytest.approx(np.trace(jf @ jg), rel=1e-10)
    assert seen["fields"]["h1"]["jfjg_trace"] is None  # h1 owns no g
