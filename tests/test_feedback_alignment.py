"""The feedback-alignment family (DESIGN §9): feedback alignment, direct feedback alignment, sign symmetry and
direct random target projection,
each step's updates against an independent numpy transcription of its paper's equations (written here from the
equations: row vectors, h_i = s_i(h_{i−1} W_i + b_i), the mean softmax cross-entropy); B never changes; conv
blocks under feedback alignment send their error through a transposed convolution with B; the audit's verdicts;
the spec errors; and the invariants each rule declares, through localnet.testing."""

from __future__ import annotations

import numpy as np
import pytest

from localnet.audit import FIRST_TARGET, LOCAL, NON_LOCAL, audit_network
from localnet.errors import SpecError
from localnet.network import Network
from localnet.rules import get_rule
from localnet.spec import load_spec
from localnet.testing import CHECKS, check_invariants

N_IN, N_OUT, BATCH, LR = 5, 3, 6, 0.1
LAYERS = [{"name": "h1", "size": 4}, {"name": "h2", "size": 6, "activation": "sigmoid"},
          {"name": "out", "size": N_OUT, "activation": "linear"}]


def spec_of(rule, layers=LAYERS, **rule_keys):
    return {"name": "fa", "seed": 2, "dtype": "float64", "backend": "numpy", "data": {"name": "digits"},
            "network": {"layers": layers, "feedback": {"activation": "linear", "bias": False}},
            "rule": {"name": rule, **rule_keys}, "optimizer": {"forward": {"type": "sgd", "lr": LR}}}


def net_of(rule, shape=N_IN, layers=LAYERS, backend="numpy"):
    spec = spec_of(rule, layers)
    spec["backend"] = backend
    return Network(load_spec(spec), 4, shape, N_OUT)


def batch(shape=(N_IN,), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, *shape)), rng.integers(0, N_OUT, BATCH)


def ds(act, h):
    return {"tanh": 1 - h ** 2, "sigmoid": h * (1 - h), "linear": np.ones_like(h)}[act]


def oracle(rule, params, x, y):
    """{layer: (dW, db)} of one step of `rule` from DESIGN §9's equations."""
    acts = [layer.get("activation", "tanh") for layer in LAYERS]
    names = [layer["name"] for layer in LAYERS]
    hs = [x]
    for name, act in zip(names, acts):
        a = hs[-1] @ params[name]["W"] + params[name]["b"]
        hs.append({"tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "linear": lambda v: v}[act](a))
    p = np.exp(hs[-1] - hs[-1].max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    e = (p - np.eye(N_OUT)[y]) / len(x)  # ∂ℒ/∂a_L, the output being linear
    deltas = {names[-1]: e}
    for i in reversed(range(len(names) - 1)):
        above = names[i + 1]
        if rule == "fa":  # δ_i = (δ_{i+1} B_{i+1}) ⊙ s'_i, B_{i+1} fixed of W_{i+1}ᵀ's shape
            down = deltas[above] @ params[above]["V"]
        elif rule == "sign_symmetry":  # B_{i+1} = sign(W_{i+1})ᵀ
            down = deltas[above] @ np.sign(params[above]["W"]).T
        elif rule == "dfa":  # δ_i = (e B_i) ⊙ s'_i, B_i fixed of shape (n_L, n_i)
            down = e @ params[names[i]]["V"]
        else:  # drtp: δ_i = (−ȳ B_i) ⊙ s'_i, the one-hot label scaled as ℒ's batch mean is
            down = (-np.eye(N_OUT)[y] / len(x)) @ params[names[i]]["V"]
        deltas[names[i]] = down * ds(acts[i], hs[i + 1])
    return {name: (hs[i].T @ deltas[name], deltas[name].sum(axis=0)) for i, name in enumerate(names)}


@pytest.mark.parametrize("rule", ["fa", "dfa", "sign_symmetry", "drtp"])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_matches_the_papers_equations(rule, seed):
    net = net_of(rule)
    x, y = batch(seed=seed)
    before = {n: {k: np.array(v) for k, v in p.items()} for n, p in net.parameters().items()}
    net.train_step(x, y)
    after = net.parameters()
    want = oracle(rule, before, x, y)
    for name, (dW, db) in want.items():
        np.testing.assert_allclose((before[name]["W"] - after[name]["W"]) / LR, dW, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose((before[name]["b"] - after[name]["b"]) / LR, db, rtol=1e-9, atol=1e-12)
        if "V" in before[name]:  # B is fixed: drawn once, never trained
            np.testing.assert_array_equal(after[name]["V"], before[name]["V"])


def test_who_owns_b():
    assert net_of("fa").graph.feedback_layers == ("h2", "out")  # each layer that sends an error down
    assert net_of("dfa").graph.feedback_layers == ("h1", "h2")  # each layer the output's error reaches
    assert net_of("sign_symmetry").graph.feedback_layers == ()  # the forward weights' signs, no B
    assert net_of("drtp").graph.feedback_layers == ("h1", "h2")  # each layer the label reaches
    out, h2 = net_of("fa").layers["out"], net_of("dfa").layers["h2"]
    assert out.feedback_params["V"].shape == (N_OUT, 6) and h2.feedback_params["V"].shape == (N_OUT, 6)
    assert out.feedback_fixed and h2.feedback_fixed


def test_feedback_alignment_with_b_equal_to_w_transposed_is_backprop():
    fa, bp = net_of("fa"), net_of("bp")
    params = bp.parameters()
    fa.load_parameters({n: {**{k: v for k, v in params[n].items()},
                            **({"V": params[n]["W"].T.copy()} if n in fa.graph.feedback_layers else {})}
                        for n in params})
    x, y = batch(seed=3)
    fa.train_step(x, y)
    bp.train_step(x, y)
    for name in params:
        np.testing.assert_allclose(fa.parameters()[name]["W"], bp.parameters()[name]["W"], rtol=1e-12, atol=1e-14)


CONV = [{"name": "c1", "type": "conv2d", "channels": 2, "kernel": 3, "padding": 1, "pool": "max", "pool_size": 2},
        {"name": "c2", "type": "conv2d", "channels": 3, "kernel": 2, "stride": 2},
        {"name": "f", "type": "flatten"}, {"name": "out", "size": N_OUT, "activation": "linear"}]


def conv_step(rule, seed):
    """A conv net of `rule` after one step's backward phase (no update yet), and its batch's labels."""
    net = net_of(rule, (1, 8, 8), CONV)
    x, y = batch((1, 8, 8), seed=seed)
    net.engine.forward(*net._batch(x, y), train=True)
    net.engine.backward()
    return net, y


@pytest.mark.parametrize("rule", ["fa", "sign_symmetry"])
def test_conv_blocks_send_their_error_through_b_or_the_signs(rule):
    net, _ = conv_step(rule, 5)
    c2 = net.layers["c2"]
    ref = c2.reference()  # float64 maps written apart from the backends (window views and einsum)
    e = c2._error[1]
    B = c2.feedback_params["V"] if rule == "fa" else np.sign(c2.forward_params["W"])
    sent = net.engine._sent["backward"]["c2"]["gradient"]
    np.testing.assert_allclose(sent, ref.input_vjp(e, {"W": B}), rtol=1e-10, atol=1e-12)
    assert not np.allclose(sent, ref.input_vjp(e))  # and not through W itself


@pytest.mark.parametrize("rule, layer, verdict, words", [
    ("fa", "h1", LOCAL, "through their own feedback weights (no weight transport)"),
    ("fa", "out", FIRST_TARGET, "the loss gradient"),
    ("dfa", "h1", FIRST_TARGET, "the output's error ∂ℒ/∂a, broadcast from out (direct)"),
    ("sign_symmetry", "h1", NON_LOCAL, "the signs of h2's W (weight transport of signs)"),
    ("drtp", "h1", LOCAL, "the label from loss, through its own fixed feedback weights (no error)"),
])
def test_the_audit_finds_each_rules_locality(rule, layer, verdict, words):
    report = audit_network(net_of(rule), *batch(seed=1))
    assert report.consistent  # what each message declares is what perturbing its sender's W and V shows
    assert report.verdicts[layer][0] == verdict and words in report.verdicts[layer][1]


@pytest.mark.parametrize("change, words", [
    ({"network": {"layers": LAYERS, "feedback": {"activation": "tanh"}}}, "fixed linear maps B, with no bias"),
    ({"rule": {"name": "dfa", "first_target": "last_hidden"}}, "cannot place its first target on the last hidden layer; expected output"),
    ({"network": {"layers": [*LAYERS[:2], {**LAYERS[2], "inputs": ["h2", "h1"]}],
                  "feedback": {"activation": "linear", "bias": False}}, "rule": {"name": "dfa"}},
     "rule 'dfa' runs on chains of layers only"),
    ({"network": {"layers": LAYERS, "feedback": {"activation": "linear", "bias": False}, "loss": "mse"},
      "rule": {"name": "drtp"}}, "rule 'drtp' projects one-hot class labels; expected softmax_cross_entropy"),
])
def test_spec_errors(change, words):
    spec = {**spec_of("fa"), **change}
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Network(load_spec(spec), 0, N_IN, N_OUT)  # at spec load, or where the graph is built


@pytest.mark.parametrize("rule", ["fa", "dfa", "sign_symmetry", "drtp"])
def test_the_declared_invariants_hold_and_name_real_checks(rule):
    declared = get_rule(rule).invariants
    assert declared <= set(CHECKS)
    net = net_of(rule)
    assert set(check_invariants(net, *batch(seed=2))) == declared


def test_numba_runs_feedback_alignment_as_numpy_does():
    x, y = batch(seed=7)
    nets = [net_of("fa", backend=b) for b in ("numpy", "numba")]
    for net in nets:
        net.train_step(x, y)
    for name, params in nets[0].parameters().items():
        for key, value in params.items():
            np.testing.assert_allclose(nets[1].parameters()[name][key], value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rule", ["dfa", "drtp"])
def test_direct_rules_reach_conv_blocks_through_a_dense_b(rule):
    from localnet.diagnostics import reference as ref
    net, y = conv_step(rule, 6)
    assert net.graph.feedback_layers == ("c1", "c2")  # flatten only reshapes: no direct channel reaches it
    p = np.exp(net.loss.output - net.loss.output.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    signal = (p - np.eye(N_OUT)[y]) / BATCH if rule == "dfa" else -np.eye(N_OUT)[y] / BATCH
    for name in ("c1", "c2"):
        layer = net.layers[name]
        r = layer.reference()
        B = layer.feedback_params["V"]
        assert B.shape == (N_OUT, np.prod(layer.out_shape))
        dh = (signal @ B).reshape(BATCH, *layer.out_shape)  # δ at the block's output: the signal through B
        e = r.pool_vjp(dh) * ref.derivative(layer.activation, r.a)
        for key, value in r.param_vjp(r.x, e).items():
            np.testing.assert_allclose(layer.grads[key], value, rtol=1e-9, atol=1e-12)
