"""Networks that are not chains (DESIGN §8): layers with several inputs, layers with several consumers, identity
skips (`add`). Backprop's gradients and DTP's targets against an independent numpy computation written here, on
drawn DAGs; DESIGN §8's identity (linear maps, transposed linear feedback: the summed displacement is −η̂ times
backprop's delta, exactly); DESIGN §4's invariants through localnet.testing; the audit; numba against numpy; and
the spec errors a graph can raise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localnet.audit import audit_network
from localnet.errors import SpecError
from localnet.network import Network
from localnet.spec import load_spec
from localnet.testing import (check_determinism, check_difference_identity, check_first_order_descent,
                              check_locality, check_no_error_no_change)
from localnet.testing.strategies import cases

N_IN, N_OUT = 5, 3


def graph_spec(layers, rule="bp", **extra):
    spec = {"name": "g", "seed": 1, "dtype": "float64", "backend": "numpy", "data": {"name": "digits"},
            "network": {"layers": layers, "feedback": {"activation": "linear"}},
            "rule": {"name": rule, "target_step": 0.3, "feedback_noise": 0.1},
            "optimizer": {"forward": {"type": "sgd", "lr": 0.1}, "feedback": {"type": "sgd", "lr": 0.1}}}
    for key, value in extra.items():
        section, _, field = key.partition("__")
        spec[section][field] = value
    return spec


SKIP = [{"name": "h1", "size": 4}, {"name": "h2", "size": 4}, {"name": "h3", "size": 4},
        {"name": "r", "type": "add", "inputs": ["h3", "h1"]},
        {"name": "cat", "size": 6, "inputs": ["r", "h2", "input"]}, {"name": "out", "size": N_OUT, "activation": "linear"}]


def build(layers, rule="bp", backend="numpy", seed=1, **extra):
    spec = graph_spec(layers, rule, **extra)
    spec["backend"] = backend
    return Network(load_spec(spec), seed, N_IN, N_OUT)


def batch(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, N_IN)), rng.integers(0, N_OUT, n)


# -- an independent transcription: forward and backprop over the DAG, float64 --------------------------------------
def inputs_of(layers, i):
    return layers[i].get("inputs") or ([layers[i - 1]["name"]] if i else ["input"])


def naive(params, layers, x, y):
    """(outputs, ∂ℒ/∂output, ∂ℒ/∂params) for dense/add DAGs with tanh or linear units and the mean softmax
    cross-entropy, by an explicit reverse sweep."""
    h, pre = {"input": x}, {}
    for i, spec in enumerate(layers):
        xs = [h[s].reshape(len(x), -1) for s in inputs_of(layers, i)]
        if spec.get("type") == "add":
            h[spec["name"]] = sum(xs)
            continue
        a = np.concatenate(xs, axis=1) @ params[spec["name"]]["W"] + params[spec["name"]]["b"]
        pre[spec["name"]] = a
        h[spec["name"]] = np.tanh(a) if spec.get("activation", "tanh") == "tanh" else a
    top = layers[-1]["name"]
    p = np.exp(h[top] - h[top].max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dh = {name: np.zeros_like(v) for name, v in h.items()}
    dh[top] = (p - np.eye(p.shape[1])[y]) / len(x)
    grads = {}
    for i in reversed(range(len(layers))):
        spec, name = layers[i], layers[i]["name"]
        senders = inputs_of(layers, i)
        if spec.get("type") == "add":
            for s in senders:
                dh[s] = dh[s] + dh[name].reshape(dh[s].shape)
            continue
        e = dh[name] * (1 - h[name] ** 2) if spec.get("activation", "tanh") == "tanh" else dh[name]
        xs = np.concatenate([h[s].reshape(len(x), -1) for s in senders], axis=1)
        grads[name] = {"W": xs.T @ e, "b": e.sum(axis=0)}
        dx, at = e @ params[name]["W"].T, 0
        for s in senders:
            width = h[s].shape[1]
            dh[s] = dh[s] + dx[:, at:at + width]
            at += width
    return h, dh, grads


@st.composite
def dags(draw):
    """Dense and add layers wired into a drawn DAG: each layer takes the one before it and a drawn subset of
    the earlier nodes (the data included); add layers join a layer with an earlier one of its width."""
    case = draw(cases("bp", architecture="graph", activations=("tanh", "linear"), bias=True, depth=(2, 5),
                      n_classes=N_OUT, n_features=N_IN))
    return [{k: v for k, v in layer.items() if k in ("name", "type", "size", "activation", "inputs")}
            for layer in case.spec["network"]["layers"]], draw(st.integers(0, 1000))


@settings(max_examples=25, deadline=None)
@given(dags())
def test_backprop_on_drawn_dags_matches_an_independent_computation(drawn):
    layers, seed = drawn
    net = build(layers, "bp", seed=seed)
    x, y = batch(seed=seed)
    outs = net.forward(x)
    h, dh, grads = naive(net.parameters(), layers, x, y)
    for spec, out in zip(layers, outs):
        np.testing.assert_allclose(out, h[spec["name"]], rtol=1e-12, atol=1e-12)
    net.engine.forward(*net._batch(x, y), train=True)  # a step's phases up to its update:
    net.engine.backward()  # each layer's target is h − η̂ ∂ℒ/∂h, its gradients are backprop's
    for spec in layers:
        name = spec["name"]
        np.testing.assert_allclose(net.layers[name].target, h[name] - 0.3 * dh[name], rtol=1e-10, atol=1e-12)
        if name in grads:
            for key, value in grads[name].items():
                np.testing.assert_allclose(net.layers[name].grads[key], value, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(dags())
def test_dtp_displacements_are_backprops_deltas_on_drawn_dags(drawn):
    """DESIGN §8: linear layers, linear feedback g_j(z) = z W_jᵀ (no bias): every layer's target is
    h − η̂ ∂ℒ/∂h exactly, its consumers' displacements summed, on any DAG."""
    layers, seed = drawn
    layers = [{**spec, "activation": "linear"} for spec in layers]
    net = build(layers, "dtp", seed=seed, network__feedback={"activation": "linear", "bias": False})
    params = net.parameters()
    for name, p in params.items():
        if "V" in p:
            p["V"] = p["W"].T.copy()
    net.load_parameters(params)
    x, y = batch(seed=seed)
    targets = net.targets(x, y)
    h, dh, _ = naive(params, layers, x, y)
    for spec, target in zip(layers, targets):
        name = spec["name"]
        np.testing.assert_allclose(target - h[name], -0.3 * dh[name], rtol=1e-9, atol=1e-12)


def test_a_skip_net_with_an_average_of_targets_would_fail_the_identity():
    """The identity above is about the sum: h1 feeds h2 and the add layer, and its target moves by both
    displacements (half of each would be off by a factor the test sees)."""
    layers = [{"name": "h1", "size": 4, "activation": "linear"}, {"name": "h2", "size": 4, "activation": "linear"},
              {"name": "r", "type": "add", "inputs": ["h2", "h1"]}, {"name": "out", "size": N_OUT, "activation": "linear"}]
    net = build(layers, "dtp", network__feedback={"activation": "linear", "bias": False})
    params = net.parameters()
    for p in params.values():
        if "V" in p:
            p["V"] = p["W"].T.copy()
    net.load_parameters(params)
    x, y = batch()
    targets = dict(zip(["h1", "h2", "r", "out"], net.targets(x, y)))
    h, dh, _ = naive(params, layers, x, y)
    via_h2 = -0.3 * (dh["r"] @ params["h2"]["W"].T)  # the displacement h2 sends down
    via_r = -0.3 * dh["r"]  # the add layer's
    np.testing.assert_allclose(targets["h1"] - h["h1"], via_h2 + via_r, rtol=1e-9, atol=1e-12)
    assert np.abs(via_h2).max() > 1e-3 and np.abs(via_r).max() > 1e-3


@settings(max_examples=12, deadline=None)
@given(cases("dtp", architecture="graph"))
def test_dtp_invariants_hold_on_drawn_graphs(case):
    for check in (check_no_error_no_change, check_difference_identity, check_first_order_descent, check_locality,
                  check_determinism):
        check(*case)


@settings(max_examples=8, deadline=None)
@given(cases("ldrl", architecture="graph"))
def test_ldrl_and_bp_updates_descend_their_losses_on_drawn_graphs(case):
    check_first_order_descent(*case)
    check_locality(*case)
    net, x, y = case
    bp = Network(load_spec(net.spec, ["rule.name=bp"]), 0, net.input_shape, net.n_classes)
    check_first_order_descent(bp, x, y)


def test_the_layers_parameters_have_one_block_per_input():
    net = build(SKIP, "dtp")
    p = net.parameters()
    assert p["cat"]["W"].shape == (4 + 4 + N_IN, 6) and p["cat"]["V"].shape == (6, 4 + 4 + N_IN)
    assert p["r"] == {} and net.layers["r"].describe()["input"] == "4 + 4"
    shapes = {(c.sender, c.receiver, c.kind): c.shape for c in net.graph.channels}
    assert shapes["cat", "r", "target"] == (4,) and shapes["r", "h1", "target"] == (4,)
    assert shapes["cat", "h2", "target"] == (4,) and ("cat", "input", "target") not in shapes


@pytest.mark.parametrize("rule", ["bp", "dtp"])
def test_audit_verdicts_on_a_skip_net(rule):
    x, y = batch(16)
    report = audit_network(build(SKIP, rule), x, y)
    assert report.verdict.startswith("local" if rule == "dtp" else "non-local"), report.reason
    assert all(ok for *_, ok in report.provenance_checked)
    senders = {u.sender for u in report.uses if u.receiver == "h1" and u.phase == "backward"}
    assert senders == {"h2", "r"}  # one message from each consumer


@pytest.mark.parametrize("rule", ["bp", "dtp"])
def test_numba_graph_steps_match_numpy(rule):
    """Without feedback noise (numba's dense kernels draw their own streams) whole steps agree."""
    nets = {b: build(SKIP, rule, backend=b, rule__feedback_noise=0.0) for b in ("numpy", "numba")}
    x, y = batch(16)
    for _ in range(3):
        metrics = {b: net.train_step(x, y) for b, net in nets.items()}
    assert metrics["numpy"]["loss"] == pytest.approx(metrics["numba"]["loss"], rel=1e-9)
    for name, p in nets["numpy"].parameters().items():
        for key, value in p.items():
            np.testing.assert_allclose(nets["numba"].parameters()[name][key], value, rtol=1e-8, atol=1e-10)


def test_show_draws_the_graph():
    from localnet.cli import graph_text
    text = "\n".join(graph_text(build(SKIP, "dtp")))
    assert "r: add 4 ╾ h1: dense 4" in text and "cat: dense 6 ╾" in text and "loss" in text


# -- what a graph cannot be, said at spec load with the line ---------------------------------------------------------
def spec_error(layers, rule="dtp", **extra):
    with pytest.raises(SpecError) as info:
        build(layers, rule, **extra)
    return str(info.value)


@pytest.mark.parametrize("layers, rule, expected", [
    ([{"name": "h1", "size": 4, "inputs": ["h2"]}, {"name": "h2", "size": 3}], "dtp",
     "'h2' comes later: the graph must be acyclic"),
    ([{"name": "h1", "size": 4}, {"name": "h2", "size": 3, "inputs": ["h1", "h1"]}], "dtp", "takes 'h1' twice"),
    ([{"name": "h1", "size": 4}, {"name": "h2", "size": 4, "inputs": ["input"]}, {"name": "out", "size": 3}],
     "dtp", "layer 'h1' feeds no other layer"),
    ([{"name": "h1", "size": 4}, {"name": "h2", "size": 4}, {"name": "h3", "size": 3, "inputs": ["h2", "h1"]}],
     "tp", "rule 'tp' has no way to combine the targets of several consumers"),
    ([{"name": "h1", "size": 4}, {"name": "h2", "size": 4}, {"name": "h3", "size": 3, "inputs": ["h2", "h1"]}],
     "ddtp_linear", "rule 'ddtp_linear' runs on chains of layers only"),
    ([{"name": "h1", "size": 4}, {"name": "h2", "size": 5}, {"name": "r", "type": "add", "inputs": ["h2", "h1"]},
      {"name": "out", "size": 3}], "dtp", "cannot take its inputs h2 (5), h1 (4): its inputs must have one shape"),
    ([{"name": "h1", "size": 4}, {"name": "r", "type": "add", "inputs": ["h1"]}, {"name": "out", "size": 3}],
     "dtp", "merges two or more inputs"),
    ([{"name": "h1", "size": 4}, {"name": "h2", "size": 4}, {"name": "r", "type": "add", "inputs": ["h2", "h1"]},
      {"name": "out", "size": 3}], "tp", "an add layer ('r') has no identity target"),
])
def test_graph_spec_errors(layers, rule, expected):
    assert expected in spec_error(layers, rule)


def test_graph_spec_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndata: {name: digits}\nnetwork:\n  layers:\n    - {name: c, type: conv2d, channels: 2, kernel: 3}\n"
                    "    - {name: c2, type: conv2d, channels: 2, kernel: 3, inputs: [c, input]}\n"
                    "    - {name: out, size: 10}\n")
    from localnet.network import build as build_spec
    with pytest.raises(SpecError) as info:
        build_spec(str(path))
    message = str(info.value)
    assert "bad.yaml" in message and ":6" in message and "conv2d layer takes one input" in message


def test_delays_on_a_graph_are_refused():
    msg = spec_error(SKIP, "dtp", network__constraints=[{"kind": "target", "type": "delay", "steps": 1}])
    assert "delayed messages need a chain" in msg
