"""Each rule's targets and updates against an independent numpy transcription of DESIGN §2.

The oracle below is written from the equations alone (row vectors, `h_i = s_i(h_{i-1} @ W_i + b_i)`,
`g_i(h_i) = s̄_i(h_i @ V_i + c_i)`, losses summed over units and averaged over the batch). It reads the layer
description from the dict spec the test wrote and the numbers from `net.parameters()`; it imports nothing from
`localnet.backends` or `localnet.rules`. Updates are read off SGD steps exactly: `grad = (before − after) / lr`.

Tolerances. float64: the oracle and the library do the same arithmetic in a different order, so they agree to a
few ulps of O(1) quantities; a gradient recovered from an SGD step carries an extra error of about
eps·|W|/lr ≈ 1e-15. rtol 1e-10 / atol 1e-12 leaves four orders of magnitude of slack above that and is still
tight enough to catch any wrong factor, sign, transpose or missing derivative. Finite differences (a second,
independent oracle for the oracle's own gradients) use central differences with step 1e-6: truncation error
≈ 1e-12 relative, cancellation ≈ 1e-10 absolute, hence rtol 1e-6 / atol 1e-8.
"""

import numpy as np
import pytest

import localnet
from oracle import act

N_FEATURES, N_CLASSES, BATCH = 5, 4, 7
LR = 0.5  # forward SGD learning rate
FLR = 0.25  # feedback SGD learning rate
F64 = {"rtol": 1e-10, "atol": 1e-12}
FD = {"rtol": 1e-6, "atol": 1e-8}
BACKEND = "numpy"  # the reference backend; `auto` may pick a JIT backend whose compile time and tolerances differ


# --------------------------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------------------------
def dact(name, a):
    if name == "linear":
        return np.ones_like(a)
    if name == "tanh":
        return 1.0 - np.tanh(a) ** 2
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-a))
        return s * (1.0 - s)
    if name == "relu":
        return (a > 0).astype(float)
    if name == "step":  # straight-through surrogate
        return (np.abs(a) <= 1).astype(float)
    raise AssertionError(name)


def onehot(y, n):
    out = np.zeros((len(y), n))
    out[np.arange(len(y)), y] = 1.0
    return out


class Oracle:
    """DESIGN §2 for a chain of dense layers, from a dict spec and a parameter dict."""

    def __init__(self, spec, params):
        net = spec["network"]
        rule = spec["rule"]
        self.layers = net["layers"]
        self.L = len(self.layers)
        self.acts = [layer.get("activation", "tanh") for layer in self.layers]
        default_fb = net.get("feedback", {})
        self.fb_acts = [(layer.get("feedback") or default_fb).get("activation", "tanh") for layer in self.layers]
        self.loss_name = net.get("loss", "softmax_cross_entropy")
        self.rule = rule["name"]
        self.first_target = rule.get("first_target", "output")
        self.eta = rule["target_step"]
        # parameters as float64, indexed by 1-based layer number
        self.p = {i + 1: {k: np.asarray(v, np.float64) for k, v in params[layer["name"]].items()}
                  for i, layer in enumerate(self.layers)}

    # which layers own g_i (DESIGN §2 and the brief): none for BP; 2..L on the output; 2..L-1 under last_hidden
    @property
    def feedback_layers(self):
        if self.rule == "bp":
            return []
        top = self.L if self.first_target == "output" else self.L - 1
        return list(range(2, top + 1))

    def forward(self, x):
        """Pre-activations a[i] and outputs h[i], h[0] = x."""
        h, a = {0: np.asarray(x, np.float64)}, {}
        for i in range(1, self.L + 1):
            p = self.p[i]
            a[i] = h[i - 1] @ p["W"] + (p["b"] if "b" in p else 0.0)
            h[i] = act(self.acts[i - 1], a[i])
        return a, h

    def g(self, i, h):
        p = self.p[i]
        return act(self.fb_acts[i - 1], h @ p["V"] + (p["c"] if "c" in p else 0.0))

    def loss(self, hL, y):
        B = len(y)
        if self.loss_name == "mse":
            return np.sum((hL - onehot(y, hL.shape[1])) ** 2) / B
        z = hL - hL.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(B), y].mean()

    def dloss(self, hL, y):
        B = len(y)
        if self.loss_name == "mse":
            return 2.0 * (hL - onehot(y, hL.shape[1])) / B
        z = np.exp(hL - hL.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True) - onehot(y, hL.shape[1])) / B

    def deltas(self, a, h, y):
        """Backprop: δ_i = ∂ℒ/∂h_i."""
        d = {self.L: self.dloss(h[self.L], y)}
        for i in range(self.L, 1, -1):
            d[i - 1] = (d[i] * dact(self.acts[i - 1], a[i])) @ self.p[i]["W"].T
        return d

    def targets(self, x, y):
        a, h = self.forward(x)
        d = self.deltas(a, h, y)
        eta, L = self.eta, self.L
        if self.rule == "bp":
            return a, h, d, {i: h[i] - eta * d[i] for i in range(1, L + 1)}
        t = {L: h[L] - eta * d[L]}
        top = L
        if self.first_target == "last_hidden":
            # the output layer sends the first target ĥ_{L-1} = h_{L-1} − η̂ ∂ℒ/∂h_{L-1}, with its own W
            t[L - 1] = h[L - 1] - eta * d[L - 1]
            top = L - 1
        for i in range(top, 1, -1):
            if self.rule == "dtp":
                t[i - 1] = h[i - 1] + self.g(i, t[i]) - self.g(i, h[i])
            else:
                t[i - 1] = self.g(i, t[i])
        return a, h, d, t

    def on_global_loss(self, i):
        return self.rule == "bp" or (i == self.L and self.first_target == "last_hidden")

    def forward_grads(self, x, y):
        """{layer number: {"W": dW, "b": db}}: ℒ's gradient where the layer learns from ℒ, else the local loss's."""
        a, h, d, t = self.targets(x, y)
        B = len(x)
        grads = {}
        for i in range(1, self.L + 1):
            dh = d[i] if self.on_global_loss(i) else 2.0 * (h[i] - t[i]) / B
            e = dh * dact(self.acts[i - 1], a[i])
            grads[i] = {"W": h[i - 1].T @ e, "b": e.sum(axis=0)}
        return grads

    def reconstruction_loss(self, i, x, V=None, c=None):
        """‖g_i(f_i(h_{i-1})) − h_{i-1}‖², summed over units, averaged over the batch (no noise)."""
        _, h = self.forward(x)
        p = self.p[i]
        V = p["V"] if V is None else V
        c = p.get("c", 0.0) if c is None else c
        r = act(self.fb_acts[i - 1], h[i] @ V + c)
        return np.sum((r - h[i - 1]) ** 2) / len(x)

    def feedback_grads(self, x):
        _, h = self.forward(x)
        B = len(x)
        grads = {}
        for i in self.feedback_layers:
            p = self.p[i]
            q = h[i] @ p["V"] + (p["c"] if "c" in p else 0.0)
            diff = act(self.fb_acts[i - 1], q) - h[i - 1]
            e = 2.0 * diff / B * dact(self.fb_acts[i - 1], q)
            grads[i] = {"V": h[i].T @ e, "c": e.sum(axis=0)}
        return grads


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def layer(name, size, activation="tanh", bias=True, feedback=None):
    d = {"name": name, "size": size, "activation": activation}
    if not bias:
        d["bias"] = False
    if feedback is not None:
        d["feedback"] = feedback
    return d


def make_spec(layers, *, rule="dtp", first_target="output", eta=0.3, loss="softmax_cross_entropy",
              feedback=None, noise=0.0, iterations=1, dtype="float64", seed=0):
    return {"name": "t", "data": {"name": "digits"}, "seed": seed, "dtype": dtype, "backend": BACKEND,
            "network": {"layers": layers, "feedback": feedback or {"activation": "tanh"}, "loss": loss},
            "rule": {"name": rule, "target_step": eta, "first_target": first_target,
                     "feedback_noise": noise, "feedback_iterations": iterations},
            "optimizer": {"forward": {"type": "sgd", "lr": LR}, "feedback": {"type": "sgd", "lr": FLR}}}


def build(spec, seed=0):
    return localnet.build(localnet.load_spec(spec), seed=seed, n_features=N_FEATURES, n_classes=N_CLASSES)


def randomize(net, seed, scale=0.7):
    """Random W, b, V, c (the initial biases are zero, which would hide a missing or misplaced bias)."""
    rng = np.random.default_rng(seed)
    net.load_parameters({name: {k: scale * rng.standard_normal(v.shape) for k, v in p.items()}
                         for name, p in net.parameters().items()})
    return net.parameters()


def batch(seed=1, n=BATCH, scale=1.0):
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((n, N_FEATURES)), rng.integers(0, N_CLASSES, n)


def sgd_grads(before, after, lr, keys):
    return {name: {k: (before[name][k] - after[name][k]) / lr for k in keys if k in before[name]}
            for name in before}


def check_targets_and_updates(spec, seed=0, x_scale=1.0):
    """targets() and the SGD update of forward_step against the oracle; returns (oracle, net, x, y)."""
    net = build(spec)
    params = randomize(net, seed)
    x, y = batch(seed + 1, scale=x_scale)
    oracle = Oracle(spec, params)
    _, h, _, t = oracle.targets(x, y)

    got = net.targets(x, y)
    assert len(got) == oracle.L
    for i in range(1, oracle.L + 1):
        np.testing.assert_allclose(got[i - 1], t[i], **F64, err_msg=f"target of layer {i}")
    # targets() changes no parameter
    after_targets = net.parameters()
    for name in params:
        for k in params[name]:
            np.testing.assert_array_equal(after_targets[name][k], params[name][k])

    net.forward_step(x, y)
    after = net.parameters()
    grads = sgd_grads(params, after, LR, ("W", "b"))
    want = oracle.forward_grads(x, y)
    for i, spec_layer in enumerate(spec["network"]["layers"], start=1):
        name = spec_layer["name"]
        assert set(grads[name]) == ({"W", "b"} if spec_layer.get("bias", True) else {"W"})
        for k in grads[name]:
            np.testing.assert_allclose(grads[name][k], want[i][k], **F64, err_msg=f"d{k} of layer {name}")
        # forward_step trains no feedback map
        for k in ("V", "c"):
            if k in params[name]:
                np.testing.assert_array_equal(after[name][k], params[name][k])
    return oracle, net, x, y


# --------------------------------------------------------------------------------------------------------------
# Which layers own a feedback map
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule, first_target, owners", [
    ("dtp", "output", {"h2", "h3", "out"}),
    ("dtp", "last_hidden", {"h2", "h3"}),
    ("tp", "output", {"h2", "h3", "out"}),
    ("tp", "last_hidden", {"h2", "h3"}),
    ("bp", "output", set()),
])
def test_feedback_map_ownership(rule, first_target, owners):
    layers = [layer("h1", 6), layer("h2", 5), layer("h3", 3, bias=False),
              layer("out", N_CLASSES, "linear")]
    params = build(make_spec(layers, rule=rule, first_target=first_target,
                             feedback={"activation": "tanh", "bias": False})).parameters()
    assert {name for name, p in params.items() if "V" in p} == owners
    assert all("c" not in p for p in params.values())  # feedback bias switched off
    assert "b" not in params["h3"] and "b" in params["h2"]
    for name, p in params.items():
        n_in, n_out = p["W"].shape
        if "V" in p:
            assert p["V"].shape == (n_out, n_in)
    params = build(make_spec(layers, rule=rule, first_target=first_target)).parameters()
    assert {name for name, p in params.items() if "c" in p} == owners


# --------------------------------------------------------------------------------------------------------------
# DTP, TP, BP: targets and forward updates
# --------------------------------------------------------------------------------------------------------------
def test_dtp_first_target_on_output():
    """ĥ_L = h_L − η̂ ∂ℒ/∂h_L, difference targets down, every layer on its local loss ‖h − ĥ‖²."""
    layers = [layer("h1", 6, "tanh"), layer("h2", 5, "relu"), layer("h3", 6, "sigmoid"),
              layer("out", N_CLASSES, "linear")]
    check_targets_and_updates(make_spec(layers, rule="dtp", first_target="output", eta=0.4))


def test_dtp_first_target_on_last_hidden_with_mse_and_mixed_feedback():
    """Lee et al.: the output layer learns from ℒ (here mse, through a sigmoid) and sends
    ĥ_{L-1} = h_{L-1} − η̂ ∂ℒ/∂h_{L-1}; one layer without bias, one with its own linear feedback map."""
    layers = [layer("h1", 6, "tanh", bias=False), layer("h2", 5, "tanh", feedback={"activation": "linear"}),
              layer("h3", 4, "relu"), layer("out", N_CLASSES, "sigmoid")]
    spec = make_spec(layers, rule="dtp", first_target="last_hidden", eta=0.7, loss="mse",
                     feedback={"activation": "sigmoid", "bias": False})
    oracle, *_ = check_targets_and_updates(spec)
    assert oracle.fb_acts == ["sigmoid", "linear", "sigmoid", "sigmoid"]


@pytest.mark.parametrize("first_target", ["output", "last_hidden"])
def test_tp_targets_are_feedback_images(first_target):
    layers = [layer("h1", 6, "tanh"), layer("h2", 5, "tanh"), layer("h3", 5, "linear", bias=False),
              layer("out", N_CLASSES, "linear")]
    spec = make_spec(layers, rule="tp", first_target=first_target, eta=0.5)
    oracle, net, x, y = check_targets_and_updates(spec)
    # TP and DTP really differ here (otherwise the test above could not tell them apart)
    dtp = build(dict(spec, rule=dict(spec["rule"], name="dtp")))
    dtp.load_parameters(build_params(oracle, spec))
    assert max(np.abs(a - b).max() for a, b in zip(dtp.targets(x, y)[:-1], net.targets(x, y)[:-1])) > 1e-3


def build_params(oracle, spec):
    return {layer_["name"]: oracle.p[i] for i, layer_ in enumerate(spec["network"]["layers"], start=1)}


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_bp_targets_and_gradients(loss):
    """BP reports ĥ_i = h_i − η̂ ∂ℒ/∂h_i and updates W ← W − lr ∂ℒ/∂W."""
    layers = [layer("h1", 6, "sigmoid"), layer("h2", 5, "relu", bias=False), layer("h3", 4, "tanh"),
              layer("out", N_CLASSES, "linear")]
    check_targets_and_updates(make_spec(layers, rule="bp", eta=0.2, loss=loss))


def test_bp_gradient_matches_finite_differences():
    """A second, independent oracle: central differences of ℒ itself (no backprop code involved)."""
    layers = [layer("h1", 4, "tanh"), layer("h2", 3, "sigmoid"), layer("out", N_CLASSES, "linear")]
    spec = make_spec(layers, rule="bp")
    net = build(spec)
    params = randomize(net, 3)
    x, y = batch(4)
    net.forward_step(x, y)
    grads = sgd_grads(params, net.parameters(), LR, ("W", "b"))
    oracle = Oracle(spec, params)
    step = 1e-6
    for i, name in enumerate(["h1", "h2", "out"], start=1):
        for k in ("W", "b"):
            fd = np.zeros_like(oracle.p[i][k])
            for idx in np.ndindex(fd.shape):
                saved = oracle.p[i][k][idx]
                oracle.p[i][k][idx] = saved + step
                up = oracle.loss(oracle.forward(x)[1][oracle.L], y)
                oracle.p[i][k][idx] = saved - step
                down = oracle.loss(oracle.forward(x)[1][oracle.L], y)
                oracle.p[i][k][idx] = saved
                fd[idx] = (up - down) / (2 * step)
            np.testing.assert_allclose(grads[name][k], fd, **FD, err_msg=f"d{k} of {name}")


def test_bp_through_step_units_uses_straight_through_surrogate():
    """Step units: h = sign(a); the surrogate derivative is 1 where |a| <= 1 and 0 elsewhere."""
    layers = [layer("h1", 6, "step"), layer("out", N_CLASSES, "linear")]
    spec = make_spec(layers, rule="bp", eta=0.1)
    oracle, _, x, _ = check_targets_and_updates(spec, x_scale=0.8)
    a, _ = oracle.forward(x)
    inside = np.abs(a[1]) <= 1
    assert inside.any() and (~inside).any()  # the surrogate's both branches are exercised


def test_dtp_local_loss_gradient_matches_finite_differences():
    """The local loss ‖s_i(h_{i-1} W_i + b_i) − ĥ_i‖² with input and target held fixed, differentiated numerically:
    the update goes through the layer's own non-linearity and no further."""
    layers = [layer("h1", 4, "tanh"), layer("h2", 3, "sigmoid"), layer("out", N_CLASSES, "linear")]
    spec = make_spec(layers, rule="dtp", eta=0.5)
    net = build(spec)
    params = randomize(net, 5)
    x, y = batch(6)
    oracle = Oracle(spec, params)
    _, h, _, t = oracle.targets(x, y)
    net.forward_step(x, y)
    grads = sgd_grads(params, net.parameters(), LR, ("W", "b"))
    step = 1e-6
    for i, name in enumerate(["h1", "h2", "out"], start=1):
        p = {k: v.copy() for k, v in oracle.p[i].items()}

        def local(p=p, i=i):
            return np.sum((act(oracle.acts[i - 1], h[i - 1] @ p["W"] + p["b"]) - t[i]) ** 2) / len(x)

        for k in ("W", "b"):
            fd = np.zeros_like(p[k])
            for idx in np.ndindex(fd.shape):
                saved = p[k][idx]
                p[k][idx] = saved + step
                up = local()
                p[k][idx] = saved - step
                down = local()
                p[k][idx] = saved
                fd[idx] = (up - down) / (2 * step)
            np.testing.assert_allclose(grads[name][k], fd, **FD, err_msg=f"d{k} of {name}")


# --------------------------------------------------------------------------------------------------------------
# Feedback training (noise 0: deterministic, so it can be computed exactly)
# --------------------------------------------------------------------------------------------------------------
FEEDBACK_CASES = {
    "dtp-output-tanh": (make_spec([layer("h1", 6, "tanh"), layer("h2", 5, "relu"), layer("out", N_CLASSES, "linear")],
                                  rule="dtp", first_target="output")),
    "tp-last-hidden-mixed": (make_spec([layer("h1", 6, "sigmoid"), layer("h2", 5, "tanh", bias=False,
                                                                          feedback={"activation": "linear"}),
                                        layer("h3", 4, "tanh"), layer("out", N_CLASSES, "linear")],
                                       rule="tp", first_target="last_hidden",
                                       feedback={"activation": "sigmoid", "bias": False})),
}


@pytest.mark.parametrize("case", sorted(FEEDBACK_CASES))
def test_feedback_step_is_sgd_on_reconstruction_loss(case):
    spec = FEEDBACK_CASES[case]
    net = build(spec)
    params = randomize(net, 7, scale=0.5)
    x, y = batch(8)
    oracle = Oracle(spec, params)
    net.feedback_step(x, y)
    after = net.parameters()
    want = oracle.feedback_grads(x)
    assert want  # at least one feedback map
    for i, spec_layer in enumerate(spec["network"]["layers"], start=1):
        name = spec_layer["name"]
        for k in ("W", "b"):  # feedback training touches no forward parameter
            if k in params[name]:
                np.testing.assert_array_equal(after[name][k], params[name][k])
        if i not in want:
            assert "V" not in params[name]
            continue
        for k in ("V", "c"):
            if k in params[name]:
                got = (params[name][k] - after[name][k]) / FLR
                np.testing.assert_allclose(got, want[i][k], **F64, err_msg=f"d{k} of {name}")
        # and the step lowered the (noise-free) reconstruction loss
        new = Oracle(spec, after)
        assert new.reconstruction_loss(i, x) < oracle.reconstruction_loss(i, x)


def test_feedback_gradient_matches_finite_differences():
    spec = make_spec([layer("h1", 4, "tanh"), layer("h2", 3, "tanh"), layer("out", N_CLASSES, "linear")],
                     rule="dtp", feedback={"activation": "tanh"})
    net = build(spec)
    params = randomize(net, 9, scale=0.5)
    x, y = batch(10)
    oracle = Oracle(spec, params)
    net.feedback_step(x, y)
    after = net.parameters()
    step = 1e-6
    for i, name in ((2, "h2"), (3, "out")):
        V, c = oracle.p[i]["V"].copy(), oracle.p[i]["c"].copy()
        for k, arr in (("V", V), ("c", c)):
            fd = np.zeros_like(arr)
            for idx in np.ndindex(arr.shape):
                saved = arr[idx]
                arr[idx] = saved + step
                up = oracle.reconstruction_loss(i, x, V, c)
                arr[idx] = saved - step
                down = oracle.reconstruction_loss(i, x, V, c)
                arr[idx] = saved
                fd[idx] = (up - down) / (2 * step)
            np.testing.assert_allclose((params[name][k] - after[name][k]) / FLR, fd, **FD,
                                       err_msg=f"d{k} of {name}")


def test_feedback_iterations_take_consecutive_steps():
    spec = make_spec([layer("h1", 6, "tanh"), layer("h2", 5, "tanh"), layer("out", N_CLASSES, "linear")],
                     rule="dtp", iterations=3)
    net = build(spec)
    params = randomize(net, 11, scale=0.5)
    x, y = batch(12)
    expected = {name: {k: v.copy() for k, v in p.items()} for name, p in params.items()}
    for _ in range(3):
        grads = Oracle(spec, expected).feedback_grads(x)
        for i, name in ((2, "h2"), (3, "out")):
            for k in ("V", "c"):
                expected[name][k] = expected[name][k] - FLR * grads[i][k]
    net.feedback_step(x, y)
    after = net.parameters()
    for name in ("h2", "out"):
        for k in ("V", "c"):
            np.testing.assert_allclose(after[name][k], expected[name][k], **F64)
    # three steps are not one step
    one = Oracle(spec, params).feedback_grads(x)[2]["V"]
    assert np.abs(after["h2"]["V"] - (params["h2"]["V"] - FLR * one)).max() > 1e-6


def test_feedback_noise_is_applied_and_descends_expected_loss():
    """σ > 0: the update differs from the noise-free one; averaged over independent noise draws (seeds) it lowers
    the expected reconstruction loss E‖g(f(x+ε)) − (x+ε)‖², estimated with common random numbers."""
    sigma = 0.3
    spec = make_spec([layer("h1", 6, "tanh"), layer("h2", 5, "tanh"), layer("out", N_CLASSES, "linear")],
                     rule="dtp", noise=sigma)
    params = randomize(build(spec), 13, scale=0.5)
    x, y = batch(14, n=32)
    updates = []
    for seed in range(40):
        net = build(spec, seed=seed)
        net.load_parameters(params)
        net.feedback_step(x, y)
        updates.append(net.parameters()["h2"]["V"] - params["h2"]["V"])
    noise_free = -FLR * Oracle(spec, params).feedback_grads(x)[2]["V"]
    assert min(np.abs(u - noise_free).max() for u in updates) > 1e-8
    assert np.abs(updates[0] - updates[1]).max() > 1e-8  # fresh noise per seed

    oracle = Oracle(spec, params)
    _, h = oracle.forward(x)
    eps = np.random.default_rng(99).standard_normal((200,) + h[1].shape) * sigma

    def expected_loss(V):
        xt = h[1] + eps
        f = np.tanh(xt @ params["h2"]["W"] + params["h2"]["b"])
        r = np.tanh(f @ V + params["h2"]["c"])
        return np.sum((r - xt) ** 2) / (eps.shape[0] * eps.shape[1])

    mean_update = np.mean(updates, axis=0)
    assert expected_loss(params["h2"]["V"] + mean_update) < expected_loss(params["h2"]["V"])


# --------------------------------------------------------------------------------------------------------------
# The whole step, and float32
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first_target", ["output", "last_hidden"])
def test_train_step_makes_targets_before_training_feedback(first_target):
    """train_step = targets through g as it was before this batch, then the feedback update, then the forward
    update (DESIGN §2's order, Lee et al.'s Algorithm 1)."""
    spec = make_spec([layer("h1", 6, "tanh"), layer("h2", 5, "tanh"), layer("h3", 5, "tanh"),
                      layer("out", N_CLASSES, "linear")], rule="dtp", first_target=first_target, eta=0.6)
    net = build(spec)
    params = randomize(net, 15, scale=0.6)
    x, y = batch(16)
    fb = Oracle(spec, params).feedback_grads(x)
    fwd = Oracle(spec, params).forward_grads(x, y)  # targets through the g of before the step
    names = [layer_["name"] for layer_ in spec["network"]["layers"]]
    expected = {name: {k: v.copy() for k, v in p.items()} for name, p in params.items()}
    for i, g in fb.items():
        for k in g:
            expected[names[i - 1]][k] -= FLR * g[k]
    for i, g in fwd.items():
        for k in g:
            expected[names[i - 1]][k] -= LR * g[k]

    mid = {name: {k: v.copy() for k, v in p.items()} for name, p in params.items()}
    for i, g in fb.items():
        for k in g:
            mid[names[i - 1]][k] -= FLR * g[k]
    fresh = Oracle(spec, mid).forward_grads(x, y)  # what targets through the already trained g would give
    net.train_step(x, y)
    after = net.parameters()
    for name in names:
        for k in after[name]:
            np.testing.assert_allclose(after[name][k], expected[name][k], **F64, err_msg=f"{k} of {name}")
    assert np.abs(after["h1"]["W"] - (params["h1"]["W"] - LR * fresh[1]["W"])).max() > 1e-8


def test_float32_dtp_matches_oracle_within_float32_tolerance():
    """float32 throughout; the oracle runs in float64 on the same (float32) numbers. Targets are O(1): rtol 1e-4
    and atol 1e-5 are ~100 float32 ulps. Gradients recovered from an SGD step carry eps32·|W|/lr ≈ 2e-7."""
    layers = [layer("h1", 6, "tanh"), layer("h2", 5, "sigmoid"), layer("out", N_CLASSES, "linear")]
    spec = make_spec(layers, rule="dtp", eta=0.5, dtype="float32")
    net = build(spec)
    params = randomize(net, 17)
    assert all(v.dtype == np.float32 for p in params.values() for v in p.values())
    x, y = batch(18)
    x = x.astype(np.float32)
    oracle = Oracle(spec, params)
    _, _, _, t = oracle.targets(x, y)
    got = net.targets(x, y)
    for i, ti in enumerate(got, start=1):
        assert ti.dtype == np.float32
        np.testing.assert_allclose(ti, t[i], rtol=1e-4, atol=1e-5)
    hs = net.forward(x)
    _, h = oracle.forward(x)
    for i, hi in enumerate(hs, start=1):
        assert hi.dtype == np.float32
        np.testing.assert_allclose(hi, h[i], rtol=1e-5, atol=1e-6)
    net.forward_step(x, y)
    after = net.parameters()
    want = oracle.forward_grads(x, y)
    for i, name in enumerate(["h1", "h2", "out"], start=1):
        for k in ("W", "b"):
            assert after[name][k].dtype == np.float32
            got_grad = (params[name][k].astype(np.float64) - after[name][k]) / LR
            np.testing.assert_allclose(got_grad, want[i][k], rtol=1e-3, atol=2e-6)


# --------------------------------------------------------------------------------------------------------------
# The built-in rules' numbers do not move (recorded before they were re-expressed on the open rule API)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(__import__("rule_numbers").CASES))
def test_builtin_rules_keep_their_recorded_numbers(case):
    import rule_numbers
    with np.load(rule_numbers.FILE) as recorded:
        same_machine = str(recorded["machine"]) == rule_numbers.machine()
        want = {k.split("/", 1)[1]: recorded[k] for k in recorded.files if k.startswith(case + "/")}
    got = rule_numbers.numbers(case)
    assert set(got) == set(want)
    for key, value in got.items():
        if same_machine:  # the same sums in the same order: bit for bit
            assert np.array_equal(value, want[key]), f"{case} {key} moved (max {np.abs(value - want[key]).max():.3g})"
        else:  # another CPU or BLAS may sum in another order
            np.testing.assert_allclose(value, want[key], rtol=1e-12, atol=1e-13, err_msg=f"{case} {key}")
