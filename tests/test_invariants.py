"""Property tests of the invariants of targets (DESIGN §4), on drawn widths, depths, batches, seeds and inputs.

Every reference value is computed here from `net.parameters()` with plain numpy (nothing from
`localnet.backends` or `localnet.rules`). The public checks of `localnet.testing` (and the angles of
`localnet.diagnostics`) are run on the same networks, so they are held to this independent oracle too; their own
tests, on every rule and on broken rules, are in test_testing.py.

Tolerances are scaled by the size of the quantities involved:
`ulps(M) = 1e-12 · (1 + M)` where M bounds the magnitudes that were added or subtracted. float64 rounding is
2.2e-16 relative per operation; the longest chains here (four layers, matrix products of width ≤ 6, weights
O(1)) amplify it by at most ~1e2–1e3, so 1e-12 keeps a safety factor of 10 or more while any wrong formula would
miss by orders of magnitude.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import localnet
from localnet.diagnostics import diagnose
from localnet.testing import (check_determinism, check_difference_identity, check_exact_inverse_dtp_equals_tp,
                              check_no_error_no_change)
from oracle import act

SETTINGS = settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
SMOOTH = ["tanh", "sigmoid", "linear", "relu"]
BACKEND = "numpy"  # the reference backend; `auto` may pick a JIT backend whose compile time and tolerances differ


def ulps(*arrays):
    return 1e-12 * (1.0 + max(float(np.max(np.abs(a))) for a in arrays))


def spec_dict(widths, acts, *, rule="dtp", first_target="output", eta=0.3, fb_act="tanh", fb_bias=True,
              bias=True, noise=0.0, opt="sgd", seed=0):
    layers = [{"name": f"l{i + 1}", "size": w, "activation": a, "bias": bias}
              for i, (w, a) in enumerate(zip(widths, acts))]
    return {"name": "prop", "data": {"name": "digits"}, "seed": seed, "dtype": "float64", "backend": BACKEND,
            "network": {"layers": layers, "feedback": {"activation": fb_act, "bias": fb_bias},
                        "loss": "softmax_cross_entropy"},
            "rule": {"name": rule, "target_step": eta, "first_target": first_target, "feedback_noise": noise,
                     "feedback_iterations": 1},
            "optimizer": {"forward": {"type": opt, "lr": 0.1}, "feedback": {"type": opt, "lr": 0.05}}}


def build(d, n_features, seed=None):
    return localnet.build(localnet.load_spec(d), seed=seed, n_features=n_features,
                          n_classes=d["network"]["layers"][-1]["size"])


def randomize(net, seed, scale=0.6):
    rng = np.random.default_rng(seed)
    net.load_parameters({name: {k: scale * rng.standard_normal(v.shape) for k, v in p.items()}
                         for name, p in net.parameters().items()})
    return net.parameters()


def own_forward(params, acts, x):
    h = [x]
    for name, a in zip(params, acts):
        p = params[name]
        h.append(act(a, h[-1] @ p["W"] + p.get("b", 0.0)))
    return h  # h[0] = x, h[i] = h_i


def own_g(p, fb_act, h):
    return act(fb_act, h @ p["V"] + p.get("c", 0.0))


def softmax_grad(hL, y):
    z = np.exp(hL - hL.max(axis=1, keepdims=True))
    g = z / z.sum(axis=1, keepdims=True)
    g[np.arange(len(y)), y] -= 1.0
    return g / len(y)


@st.composite
def problems(draw, acts=SMOOTH, min_width=1, max_depth=4):
    """A chain network (2–4 layers) with drawn widths and activations, a first-target placement, a network seed, a
    parameter seed and a batch (x from hypothesis, labels in range)."""
    depth = draw(st.integers(2, max_depth))
    n_classes = draw(st.integers(2, 5))
    widths = draw(st.lists(st.integers(min_width, 6), min_size=depth - 1, max_size=depth - 1)) + [n_classes]
    layer_acts = draw(st.lists(st.sampled_from(acts), min_size=depth - 1, max_size=depth - 1)) + ["linear"]
    n_features = draw(st.integers(1, 6))
    n = draw(st.integers(1, 8))
    x = draw(hnp.arrays(np.float64, (n, n_features),
                        elements=st.floats(-2, 2, allow_nan=False, allow_infinity=False)))
    y = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)), dtype=np.int64)
    return {"widths": widths, "acts": layer_acts, "n_features": n_features, "x": x, "y": y,
            "first_target": draw(st.sampled_from(["output", "last_hidden"])),
            "seed": draw(st.integers(0, 2**32 - 1)), "param_seed": draw(st.integers(0, 2**32 - 1))}


def feedback_layers(d):
    """1-based numbers of the layers that own g (DESIGN §2): 2..L on the output, 2..L-1 under last_hidden."""
    L = len(d["network"]["layers"])
    top = L if d["rule"]["first_target"] == "output" else L - 1
    return list(range(2, top + 1))


# --------------------------------------------------------------------------------------------------------------
# No error, no change
# --------------------------------------------------------------------------------------------------------------
def rounding_bound(params, fb_act, hs, fb_layers):
    """How far (x + g(ĥ)) − g(h) may land from x when ĥ = h: one or two ulps of |x| + |g(h)| per layer, carried down
    through the g's below (O(1) gains here), so 16 ulps of the largest magnitude. See
    test_no_error_no_change_is_bit_exact for why it is not exactly 0."""
    names = list(params)
    mags = [np.abs(h) for h in hs]
    for i in fb_layers:
        mags.append(np.abs(own_g(params[names[i - 1]], fb_act, hs[i - 1])))
    return 16 * np.finfo(np.float64).eps * (1.0 + max(float(m.max()) for m in mags))


@SETTINGS
@given(problems(), st.sampled_from(["tanh", "linear", "sigmoid"]))
def test_no_error_no_change_dtp(pb, fb_act):
    """η̂ = 0: every DTP target equals its activation (for random, untrained feedback maps) and forward_step
    leaves the forward parameters of every layer trained on its local loss where they were. Under last_hidden
    the output layer is trained on ℒ itself, so it is the one layer allowed to move.

    Equality is to rounding (a few ulps, see rounding_bound); with SGD an update from a rounding-sized local error
    is lr·O(1e-16), so "unchanged" is checked to 1e-13 — a real step would be lr·O(1/B) ≈ 1e-2."""
    d = spec_dict(pb["widths"], pb["acts"], first_target=pb["first_target"], eta=0.0, fb_act=fb_act)
    net = build(d, pb["n_features"], pb["seed"])
    params = randomize(net, pb["param_seed"])
    x, y = pb["x"], pb["y"]
    hs = net.forward(x)
    ts = net.targets(x, y)
    tol = rounding_bound(params, fb_act, hs, feedback_layers(d))
    for i, (h, t) in enumerate(zip(hs, ts), start=1):
        np.testing.assert_allclose(t, h, rtol=0, atol=tol, err_msg=f"layer {i}")
    check_no_error_no_change(net, x, y)  # the public check agrees
    net.forward_step(x, y)
    after = net.parameters()
    names = list(params)
    local = names if pb["first_target"] == "output" else names[:-1]
    for name in names:
        for k, v in params[name].items():
            if k in ("V", "c"):  # forward_step never trains feedback
                np.testing.assert_array_equal(after[name][k], v, err_msg=f"{k} of {name}")
            elif name in local:
                np.testing.assert_allclose(after[name][k], v, rtol=0, atol=1e-13, err_msg=f"{k} of {name}")


def test_no_error_no_change_is_bit_exact():
    """The smallest reproduction: η̂ = 0, random parameters, Adam. Mathematically ĥ_1 = h_1 + g(h_2) − g(h_2) = h_1
    and the local loss gradient is exactly zero, so W must not move at all."""
    d = spec_dict([3, 2], ["tanh", "linear"], eta=0.0, opt="adam")
    net = build(d, 2, 0)
    params = randomize(net, 0, scale=1.0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 2)), np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(net.targets(x, y)[0], net.forward(x)[0])
    net.forward_step(x, y)
    np.testing.assert_array_equal(net.parameters()["l1"]["W"], params["l1"]["W"])


@SETTINGS
@given(depth=st.integers(2, 4), width=st.integers(2, 6), n=st.integers(2, 8), n_features=st.integers(2, 6),
       first_target=st.sampled_from(["output", "last_hidden"]), seed=st.integers(0, 2**32 - 1))
def test_tp_fails_no_error_no_change(depth, width, n, n_features, first_target, seed):
    """The contrast: with η̂ = 0, plain TP's targets g_i(h_i) are not the activations h_{i-1} for random g. Inputs
    and parameters are Gaussian (so no degenerate all-zero batch) and tanh everywhere; the largest gap over the
    layers is O(0.1–1), so a 1e-3 threshold is never near the boundary."""
    if first_target == "last_hidden" and depth == 2:
        depth = 3  # so that at least one layer owns g
    widths = [width] * (depth - 1) + [3]
    d = spec_dict(widths, ["tanh"] * (depth - 1) + ["linear"], rule="tp", first_target=first_target, eta=0.0)
    net = build(d, n_features, seed % 1000)
    randomize(net, seed)
    rng = np.random.default_rng(seed + 1)
    x, y = rng.standard_normal((n, n_features)), rng.integers(0, 3, n)
    hs, ts = net.forward(x), net.targets(x, y)
    gap = max(float(np.max(np.abs(t - h))) for h, t in zip(hs, ts))
    assert gap > 1e-3
    with pytest.raises(AssertionError, match="no error, no change fails for rule 'tp'"):
        check_no_error_no_change(net, x, y)
    # and DTP on the very same network and parameters does satisfy it
    dtp = build(dict(d, rule=dict(d["rule"], name="dtp")), n_features, seed % 1000)
    dtp.load_parameters(net.parameters())
    tol = rounding_bound(net.parameters(), "tanh", hs, feedback_layers(d))
    assert tol < 1e-10
    for h, t in zip(dtp.forward(x), dtp.targets(x, y)):
        np.testing.assert_allclose(t, h, rtol=0, atol=tol)
    check_no_error_no_change(dtp, x, y)


# --------------------------------------------------------------------------------------------------------------
# Exact inverse
# --------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(depth=st.integers(2, 4), width=st.integers(2, 5), n=st.integers(1, 8), n_features=st.integers(1, 6),
       first_act=st.sampled_from(SMOOTH), first_target=st.sampled_from(["output", "last_hidden"]),
       eta=st.floats(0.01, 3.0), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_exact_inverse_makes_dtp_equal_tp(depth, width, n, n_features, first_act, first_target, eta, seed, data):
    """Square linear layers above the first, linear g with V = W⁻¹, c = −b W⁻¹ (W a scaled orthogonal matrix, so
    well conditioned): g_i(f_i(h)) = h, hence DTP targets = TP targets, and the inverse is two-sided:
    f_i(ĥ_{i-1}) = ĥ_i for every layer that owns g."""
    x = data.draw(hnp.arrays(np.float64, (n, n_features),
                             elements=st.floats(-2, 2, allow_nan=False, allow_infinity=False)))
    y = np.array(data.draw(st.lists(st.integers(0, width - 1), min_size=n, max_size=n)), dtype=np.int64)
    widths = [width] * depth
    acts = [first_act] + ["linear"] * (depth - 1)
    d = spec_dict(widths, acts, first_target=first_target, eta=eta, fb_act="linear")
    dtp = build(d, n_features, seed % 1000)
    tp = build(dict(d, rule=dict(d["rule"], name="tp")), n_features, seed % 1000)
    rng = np.random.default_rng(seed)
    params = dtp.parameters()
    for name, p in params.items():
        p["b"] = rng.standard_normal(p["b"].shape)
        if "V" in p:
            q, _ = np.linalg.qr(rng.standard_normal((width, width)))
            W = rng.uniform(0.5, 2.0) * q
            p["W"] = W
            p["V"] = np.linalg.inv(W)
            p["c"] = -p["b"] @ p["V"]
    dtp.load_parameters(params)
    tp.load_parameters(params)
    params = dtp.parameters()

    td, tt = dtp.targets(x, y), tp.targets(x, y)
    for a, b in zip(td, tt):
        np.testing.assert_allclose(a, b, rtol=0, atol=ulps(a, b, *td))
    names = list(params)
    for i in feedback_layers(d):
        p = params[names[i - 1]]
        f = act(acts[i - 1], td[i - 2] @ p["W"] + p["b"])
        np.testing.assert_allclose(f, td[i - 1], rtol=0, atol=ulps(f, *td))
    # the public check builds its own exact inverses (on a variant of the network) and agrees, for both rules
    if feedback_layers(d):
        check_exact_inverse_dtp_equals_tp(dtp, x, y, seed=seed)
        check_exact_inverse_dtp_equals_tp(tp, x, y, seed=seed)


# --------------------------------------------------------------------------------------------------------------
# Difference identity
# --------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(problems(), st.sampled_from(["tanh", "linear", "sigmoid", "relu"]), st.booleans(), st.floats(0.0, 5.0))
def test_difference_identity(pb, fb_act, fb_bias, eta):
    """g_i(ĥ_i) − ĥ_{i-1} = g_i(h_i) − h_{i-1} for every layer that owns g, with g computed here."""
    d = spec_dict(pb["widths"], pb["acts"], first_target=pb["first_target"], eta=eta, fb_act=fb_act,
                  fb_bias=fb_bias)
    net = build(d, pb["n_features"], pb["seed"])
    params = randomize(net, pb["param_seed"])
    x, y = pb["x"], pb["y"]
    hs = [x] + net.forward(x)
    ts = [None] + net.targets(x, y)
    names = list(params)
    assert [i for i in range(1, len(names) + 1) if "V" in params[names[i - 1]]] == feedback_layers(d)
    for i in feedback_layers(d):
        p = params[names[i - 1]]
        g_t, g_h = own_g(p, fb_act, ts[i]), own_g(p, fb_act, hs[i])
        np.testing.assert_allclose(g_t - ts[i - 1], g_h - hs[i - 1], rtol=0,
                                   atol=ulps(g_t, g_h, ts[i - 1], hs[i - 1]), err_msg=f"layer {i}")
    if feedback_layers(d):
        check_difference_identity(net, x, y)
    else:  # two layers under last_hidden: no g anywhere; the public check refuses to pass vacuously
        with pytest.raises(AssertionError, match="nothing to check"):
            check_difference_identity(net, x, y)


# --------------------------------------------------------------------------------------------------------------
# Affine feedback: displacements propagate by V, are linear in η̂ and independent of c
# --------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(problems(), st.floats(0.01, 3.0), st.integers(0, 2**32 - 1))
def test_affine_feedback_displacements(pb, eta, c_seed):
    d = spec_dict(pb["widths"], pb["acts"], first_target=pb["first_target"], eta=eta, fb_act="linear")
    net = build(d, pb["n_features"], pb["seed"])
    params = randomize(net, pb["param_seed"])
    x, y = pb["x"], pb["y"]
    hs = net.forward(x)
    ts = net.targets(x, y)
    disp = [t - h for t, h in zip(ts, hs)]
    names = list(params)
    tol = ulps(*hs, *ts, *[own_g(params[names[i - 1]], "linear", hs[i - 1]) for i in feedback_layers(d)])
    for i in feedback_layers(d):
        np.testing.assert_allclose(disp[i - 2], disp[i - 1] @ params[names[i - 1]]["V"], rtol=0, atol=tol,
                                   err_msg=f"layer {i}")

    def displacements(step, new_params):
        other = build(dict(d, rule=dict(d["rule"], target_step=step)), pb["n_features"], pb["seed"])
        other.load_parameters(new_params)
        return [t - h for t, h in zip(other.targets(x, y), other.forward(x))]

    for factor in (2.0, 0.5):
        for a, b in zip(displacements(factor * eta, params), disp):
            np.testing.assert_allclose(a, factor * b, rtol=0, atol=4 * tol)
    # a different c changes g's outputs but not the displacements
    rng = np.random.default_rng(c_seed)
    shifted = {name: {k: (v + 3 * rng.standard_normal(v.shape) if k == "c" else v) for k, v in p.items()}
               for name, p in params.items()}
    tol_c = tol + 1e-12 * 4 * max((float(np.max(np.abs(p["c"]))) for p in shifted.values() if "c" in p),
                                  default=0.0)
    for a, b in zip(displacements(eta, shifted), disp):
        np.testing.assert_allclose(a, b, rtol=0, atol=4 * tol_c)


# --------------------------------------------------------------------------------------------------------------
# Transposed feedback is backprop
# --------------------------------------------------------------------------------------------------------------
def angle(u, v):
    """Angle between two arrays, well conditioned near 0 (arccos is not): 2·asin(|û − v̂| / 2)."""
    u, v = u.ravel() / np.linalg.norm(u), v.ravel() / np.linalg.norm(v)
    return 2 * np.arcsin(min(1.0, np.linalg.norm(u - v) / 2))


@SETTINGS
@given(problems(acts=["linear"]), st.floats(0.01, 3.0))
def test_transposed_feedback_is_backprop(pb, eta):
    """Linear layers without biases, linear g without c, V_i = W_iᵀ, first target on the output: DTP targets are
    h_i − η̂ δ_i with δ from backprop computed here, and each layer's DTP update is parallel to backprop's
    gradient (angle 0; the local loss gives 2η̂/B times it)."""
    d = spec_dict(pb["widths"], pb["acts"], first_target="output", eta=eta, fb_act="linear", fb_bias=False,
                  bias=False)
    d["optimizer"]["forward"]["lr"] = 1.0
    net = build(d, pb["n_features"], pb["seed"])
    params = randomize(net, pb["param_seed"])
    for p in params.values():
        assert set(p) <= {"W", "V"}
        if "V" in p:
            p["V"] = p["W"].T.copy()
    net.load_parameters(params)
    x, y = pb["x"], pb["y"]
    names = list(params)
    h = own_forward(params, pb["acts"], x)
    L = len(names)
    delta = {L: softmax_grad(h[L], y)}
    for i in range(L, 1, -1):
        delta[i - 1] = delta[i] @ params[names[i - 1]]["W"].T
    ts = net.targets(x, y)
    for i in range(1, L + 1):
        want = h[i] - eta * delta[i]
        np.testing.assert_allclose(ts[i - 1], want, rtol=0, atol=ulps(want, h[i]), err_msg=f"layer {i}")
    # the diagnostics probe, on the same network: angle 0 wherever backprop's gradient has a direction
    probed = diagnose(net, x, y)
    for i in range(1, L + 1):
        if np.linalg.norm(h[i - 1].T @ delta[i]) >= 1e-6:
            assert probed[names[i - 1]]["angle_bp"] < 1e-5, f"layer {i}"

    net.forward_step(x, y)
    after = net.parameters()
    B = len(x)
    for i in range(1, L + 1):
        dtp_grad = params[names[i - 1]]["W"] - after[names[i - 1]]["W"]  # lr = 1
        bp_grad = h[i - 1].T @ delta[i]
        # a zero gradient (all-zero inputs) has no direction; everything else must be exactly parallel
        if np.linalg.norm(bp_grad) < 1e-6:
            continue
        assert angle(dtp_grad, bp_grad) < 1e-7, f"layer {i}"
        np.testing.assert_allclose(dtp_grad, 2 * eta / B * bp_grad, rtol=1e-8, atol=1e-12)
    assume(np.linalg.norm(h[L - 1].T @ delta[L]) >= 1e-6)  # the output layer's check above actually ran


# --------------------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(problems(acts=SMOOTH + ["stochastic_binary", "step"]), st.sampled_from(["dtp", "tp", "bp"]),
       st.sampled_from(["sgd", "adam", "rmsprop"]))
def test_same_seed_same_numbers(pb, rule, opt):
    """Same spec and seed: bit-identical parameters, optimiser and generator states and metrics after three
    train_steps (noise, sampling and all: the public check_determinism); another seed: other parameters (initial
    weights are drawn from the seed)."""
    d = spec_dict(pb["widths"], pb["acts"], rule=rule, first_target=pb["first_target"], eta=0.3, noise=0.2,
                  opt=opt)
    x, y = pb["x"], pb["y"]
    check_determinism(build(d, pb["n_features"], pb["seed"]), x, y, steps=3)
    p1, p3 = (build(d, pb["n_features"], seed).parameters() for seed in (pb["seed"], pb["seed"] + 1))
    assert any(not np.array_equal(p1[name][k], p3[name][k]) for name in p1 for k in p1[name])


# --------------------------------------------------------------------------------------------------------------
# Read-only messages
# --------------------------------------------------------------------------------------------------------------
# Inspected behaviour (localnet/network.py, messages.py): `forward` returns each layer's own freshly computed
# output array — writable, but a new array on every call, so writing into it cannot reach the next step.
# `targets` returns, for a layer that received a target message, the delivered payload, which is a read-only
# view (writing raises ValueError); a layer that received a gradient instead (BP, or the output under
# last_hidden) reports h − η̂ δ, a fresh writable array.
@SETTINGS
@given(problems(), st.sampled_from(["dtp", "tp", "bp"]))
def test_messages_cannot_be_written_back_into_the_network(pb, rule):
    d = spec_dict(pb["widths"], pb["acts"], rule=rule, first_target=pb["first_target"], eta=0.5)
    net = build(d, pb["n_features"], pb["seed"])
    randomize(net, pb["param_seed"])
    x, y = pb["x"], pb["y"]
    first = net.forward(x)
    snapshot = [h.copy() for h in first]
    for h in first:
        h[...] = 1e6  # does not raise ...
    again = net.forward(x)
    for h, s in zip(again, snapshot):  # ... and does not change the next output
        np.testing.assert_array_equal(h, s)
    assert all(a is not b for a, b in zip(again, first))

    ts = net.targets(x, y)
    t_snapshot = [t.copy() for t in ts]
    for t in ts:  # the API hands out copies: writing into them is allowed and reaches nothing
        t[...] = 7.0
    for t, s in zip(net.targets(x, y), t_snapshot):
        np.testing.assert_array_equal(t, s)
    # earlier results are not overwritten by later calls either
    net.forward(x + 1.0)
    for h in first:
        assert np.all(h == 1e6)
