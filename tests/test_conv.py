"""The conv2d and flatten families on the layer protocol: forward, targets and updates against an independent numpy
computation written here (naive loops), DESIGN §4's invariants through localnet.testing on drawn conv networks,
the transposed-feedback identity of DESIGN §8, the audit's verdicts, numba against numpy, exact state round trips
and the spec errors a conv layer can raise."""

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
from localnet.testing.strategies import conv_layers


# -- an independent transcription of the block (DESIGN §8), loops and float64 --------------------------------------
def naive_conv(x, W, b, stride, pad):
    n, c, hgt, wid = x.shape
    co, _, k, _ = W.shape
    xp = np.zeros((n, c, hgt + 2 * pad, wid + 2 * pad))
    xp[:, :, pad:pad + hgt, pad:pad + wid] = x
    ho, wo = (hgt + 2 * pad - k) // stride + 1, (wid + 2 * pad - k) // stride + 1
    out = np.zeros((n, co, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3]))
    return out if b is None else out + b[None, :, None, None]


def naive_pool(s, mode, k):
    if mode is None:
        return s
    n, c, hgt, wid = s.shape
    out = np.zeros((n, c, hgt // k, wid // k))
    for i in range(hgt // k):
        for j in range(wid // k):
            window = s[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k]
            out[:, :, i, j] = window.max(axis=(2, 3)) if mode == "max" else window.mean(axis=(2, 3))
    return out


def naive_forward(params, x, layers):
    """Every layer's output for a chain of conv2d / flatten / dense layers (tanh or linear)."""
    outs = []
    for spec in layers:
        p = params[spec["name"]]
        act = np.tanh if spec.get("activation", "tanh") == "tanh" else (lambda a: a)
        if spec.get("type") == "conv2d":
            x = naive_pool(act(naive_conv(x, p["W"], p.get("b"), spec.get("stride", 1), spec.get("padding", 0))),
                           spec.get("pool"), spec.get("pool_size", 2))
        elif spec.get("type") == "flatten":
            x = x.reshape(len(x), -1)
        else:
            x = act(x.reshape(len(x), -1) @ p["W"] + p.get("b", 0.0))
        outs.append(x)
    return outs


def softmax_ce(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    return float(-(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(len(y)), y].mean())


LAYERS = [
    {"name": "c1", "type": "conv2d", "channels": 3, "kernel": 3, "padding": 1, "pool": "max", "pool_size": 2},
    {"name": "c2", "type": "conv2d", "channels": 4, "kernel": 2, "stride": 2, "pool": "avg", "pool_size": 1},
    {"name": "fl", "type": "flatten"},
    {"name": "out", "size": 5, "activation": "linear"},
]


def conv_spec(rule="dtp", layers=LAYERS, **extra):
    spec = {"name": "conv-test", "data": {"name": "digits"}, "dtype": "float64", "backend": "numpy", "seed": 3,
            "network": {"layers": [dict(layer) for layer in layers]},
            "rule": {"name": rule, "target_step": 0.2, "feedback_noise": 0.1},
            "optimizer": {"forward": {"type": "sgd", "lr": 0.1}, "feedback": {"type": "sgd", "lr": 0.05}}}
    if "network_feedback" in extra:
        spec["network"]["feedback"] = extra.pop("network_feedback")
    spec.update(extra)
    return spec


def conv_net(rule="dtp", layers=LAYERS, shape=(2, 7, 7), n_classes=5, **extra):
    return Network(load_spec(conv_spec(rule, layers, **extra)), 3, shape, n_classes)


def batch(shape=(2, 7, 7), n=4, n_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(0, n_classes, n)


def test_forward_matches_a_naive_convolution_pooling_and_dense_readout():
    net = conv_net()
    x, _ = batch()
    got = net.forward(x)
    want = naive_forward(net.parameters(), x, LAYERS)
    assert [g.shape for g in got] == [(4, 3, 3, 3), (4, 4, 1, 1), (4, 4), (4, 5)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_backprop_gradients_match_finite_differences_of_the_loss():
    """bp's update of every conv weight is ∂ℒ/∂W of the network computed here (central differences)."""
    net = conv_net("bp")
    x, y = batch()
    params = net.parameters()
    net.engine.forward(*net._batch(x, y), train=True)  # a step's forward and backward phases, no update
    net.engine.backward()
    records = {name: {k: np.array(v) for k, v in net.layers[name].grads.items()} for name in ("c1", "c2", "out")}
    rng = np.random.default_rng(1)
    for name in ("c1", "c2"):
        for key in ("W", "b"):
            for _ in range(4):
                index = tuple(rng.integers(0, d) for d in params[name][key].shape)
                bumped = []
                for step in (1e-6, -1e-6):
                    p = {n: {k: v.copy() for k, v in d.items()} for n, d in params.items()}
                    p[name][key][index] += step
                    bumped.append(softmax_ce(naive_forward(p, x, LAYERS)[-1], y))
                numeric = (bumped[0] - bumped[1]) / 2e-6
                assert abs(records[name][key][index] - numeric) <= 1e-7 * (1 + abs(numeric)), (name, key, index)


def test_transposed_linear_feedback_makes_dtp_targets_backprops():
    """DESIGN §8: linear blocks without pooling, g with V = W (conv) or Wᵀ (dense) and linear s̄: every DTP
    displacement is −η̂ times dℒ/dh, computed here by finite differences of the naive network."""
    layers = [dict(LAYERS[0], activation="linear", pool=None), dict(LAYERS[1], activation="linear"), LAYERS[2],
              LAYERS[3]]
    net = conv_net("dtp", layers, network_feedback={"activation": "linear"})
    params = net.parameters()
    for name, p in params.items():
        if "V" in p:
            p["V"] = p["W"].copy() if p["W"].ndim == 4 else p["W"].T.copy()
    net.load_parameters(params)
    x, y = batch()
    hs, targets = net.forward(x), net.targets(x, y)
    for i, name in enumerate(["c1", "c2", "out"]):
        at = {"c1": 0, "c2": 1, "out": 3}[name]
        grad = np.zeros_like(hs[at])
        for index in np.ndindex(*hs[at].shape):
            bumped = []
            for step in (1e-6, -1e-6):
                h = hs[at].copy()
                h[index] += step
                rest = naive_forward(params, h, layers[at + 1:]) if at + 1 < len(layers) else [h]
                bumped.append(softmax_ce(rest[-1], y))
            grad[index] = (bumped[0] - bumped[1]) / 2e-6
        np.testing.assert_allclose(targets[at] - hs[at], -0.2 * grad, rtol=1e-6, atol=1e-9, err_msg=name)


@st.composite
def conv_cases(draw, rule="dtp"):
    """A drawn conv chain (conv2d blocks, flatten, dense read-out) with a drawn geometry, and a batch."""
    c, hgt, wid = draw(st.integers(1, 2)), draw(st.integers(4, 8)), draw(st.integers(4, 8))
    layers = [*draw(conv_layers((c, hgt, wid))), {"name": "out", "size": 3, "activation": "linear"}]
    net = Network(load_spec(conv_spec(rule, layers, seed=draw(st.integers(0, 1000)))), 0, (c, hgt, wid), 3)
    x, y = batch((c, hgt, wid), draw(st.integers(1, 4)), 3, draw(st.integers(0, 1000)))
    return net, x, y


@settings(max_examples=15)
@given(conv_cases("dtp"))
def test_dtp_invariants_hold_on_drawn_conv_networks(case):
    for check in (check_no_error_no_change, check_difference_identity, check_first_order_descent, check_locality,
                  check_determinism):
        check(*case)


@settings(max_examples=8)
@given(conv_cases("ldrl"))
def test_ldrl_and_bp_updates_descend_their_losses_on_drawn_conv_networks(case):
    check_first_order_descent(*case)
    check_locality(*case)
    net, x, y = case
    check_first_order_descent(Network(load_spec(net.spec, ["rule.name=bp"]), 0, net.input_shape, 3), x, y)


@settings(max_examples=8)
@given(conv_cases("tp"))
def test_plain_tp_fails_no_error_no_change_on_conv_networks(case):
    with pytest.raises(AssertionError, match="no error, no change fails"):
        check_no_error_no_change(*case)


def test_audit_verdicts_on_a_conv_net():
    x, y = batch()
    assert audit_network(conv_net("dtp"), x, y, measure=False).verdict.startswith("local")
    assert audit_network(conv_net("bp"), x, y, measure=False).verdict.startswith("non-local")


@pytest.mark.parametrize("rule", ["bp", "dtp", "ldrl"])
def test_numba_conv_steps_match_numpy(rule):
    """Conv layers draw their noise from their own numpy generator on both backends, so whole steps agree."""
    layers = [LAYERS[0], LAYERS[1], {"name": "c3", "type": "conv2d", "channels": 5, "kernel": 1,
                                     "activation": "linear"}, {"name": "fl", "type": "flatten"}]
    nets = {b: Network(load_spec(conv_spec(rule, layers, backend=b)), 3, (2, 7, 7), 5) for b in ("numpy", "numba")}
    x, y = batch()
    for _ in range(3):
        metrics = {b: net.train_step(x, y) for b, net in nets.items()}
    assert metrics["numpy"]["correct"] == metrics["numba"]["correct"]
    assert metrics["numpy"]["loss"] == pytest.approx(metrics["numba"]["loss"], rel=1e-9)
    for name, p in nets["numpy"].parameters().items():
        for key, value in p.items():
            np.testing.assert_allclose(nets["numba"].parameters()[name][key], value, rtol=1e-8, atol=1e-10)


def test_state_round_trip_continues_bit_for_bit():
    x, y = batch()
    a = conv_net("ldrl")
    a.train_step(x, y)
    saved = a.state()
    b = conv_net("ldrl")
    b.load_state(saved)
    for _ in range(2):
        a.train_step(x, y)
        b.train_step(x, y)
    for name, p in a.parameters().items():
        for key, value in p.items():
            assert np.array_equal(b.parameters()[name][key], value), (name, key)


@pytest.mark.parametrize("change,message", [
    ({"rule": {"name": "dtp_drl"}}, "rule 'dtp_drl' does not support conv2d layers"),
    ({"backend": "cuda"}, "backend 'cuda' has no conv2d kernels"),
    ({"layer": {"kernel": None}}, "missing required key 'kernel'"),
    ({"layer": {"activation": "step"}}, "activation 'step' is not supported in a conv block"),
    ({"layer": {"kernel": 11}}, "cannot take its input of shape 1x8x8: a 11×11 kernel"),
])
def test_conv_spec_errors_name_the_line_before_anything_runs(tmp_path, change, message):
    import yaml
    spec = conv_spec(layers=[dict(LAYERS[0]), LAYERS[2], LAYERS[3]])
    spec["network"]["layers"][-1]["size"] = 10
    for key, value in change.items():
        if key == "layer":
            spec["network"]["layers"][0].update(value)
            spec["network"]["layers"][0] = {k: v for k, v in spec["network"]["layers"][0].items() if v is not None}
        else:
            spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError, match=message) as info:
        from localnet.network import build
        build(load_spec(path))
    assert str(info.value).startswith(f"{path}:") and info.value.line is not None


def test_a_dense_layer_cannot_feed_a_conv_layer():
    layers = [{"name": "h", "size": 8}, {"name": "c", "type": "conv2d", "channels": 2, "kernel": 1},
              {"name": "fl", "type": "flatten"}, {"name": "out", "size": 5, "activation": "linear"}]
    with pytest.raises(SpecError, match="a conv2d layer takes C×H×W inputs"):
        conv_net(layers=layers)


def test_ddtp_reaches_conv_blocks_with_a_dense_q():
    """DDTP's direct targets on a conv chain: ĥ_i = h_i + (ĥ_L − h_L) Q_i, Q_i of shape (n_L, C·H·W)."""
    spec = {"name": "ddtp-conv", "seed": 0, "dtype": "float64", "backend": "numpy", "data": {"name": "digits"},
            "network": {"layers": [*LAYERS[:2], {"name": "f", "type": "flatten"},
                                   {"name": "out", "size": 3, "activation": "linear"}],
                        "feedback": {"activation": "linear", "bias": False}},
            "rule": {"name": "ddtp_linear", "target_step": 0.5, "feedback_noise": 0.1},
            "optimizer": {"forward": {"type": "sgd", "lr": 0.1}, "feedback": {"type": "sgd", "lr": 0.1}}}
    net = Network(load_spec(spec), 0, (1, 8, 8), 3)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 8, 8)), rng.integers(0, 3, 4)
    net.engine.forward(*net._batch(x, y), train=True)
    net.engine.backward()
    out = net.layers["out"]
    for name in ("c1", "c2"):
        layer = net.layers[name]
        Q = layer.feedback_params["V"]
        want = layer.h + ((out.target - out.h) @ Q).reshape(layer.h.shape)
        np.testing.assert_allclose(layer.target, want, rtol=1e-12, atol=1e-14)
    net.train_step(x, y)  # and Q trains on the output's response to noise (through flatten's f)
