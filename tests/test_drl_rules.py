"""DTP-DRL (Meulemans et al. 2020) and L-DRL (Ernoult et al. 2022): their feedback losses and gradients against
numpy computations written here (finite differences, hand-written round trips), DESIGN §4's L-DRL invariant, the
numba kernel against the numpy reference, the audit's verdicts, and the public invariant checks."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localnet.audit import ROUND_TRIP, audit_network
from localnet.backends import numpy as ref
from localnet.errors import LocalnetError
from localnet.network import Network
from localnet.spec import load_spec
from localnet.testing import cases, check_invariants

N_FEATURES, N_CLASSES = 6, 3
ACT = {"tanh": np.tanh, "linear": lambda a: a, "sigmoid": lambda a: 1 / (1 + np.exp(-a))}


def spec(rule, **extra):
    return {
        "name": rule, "seed": 3, "dtype": "float64", "backend": "numpy", "data": {"name": "digits"},
        "network": {"layers": [{"name": "h1", "size": 5}, {"name": "h2", "size": 4},
                               {"name": "out", "size": N_CLASSES, "activation": "linear"}],
                    "feedback": {"activation": "tanh"}},
        "rule": {"name": rule, "target_step": 0.3, "feedback_noise": 0.2, **extra},
        "optimizer": {"forward": {"type": "sgd", "lr": 0.1}, "feedback": {"type": "sgd", "lr": 0.05}},
    }


def build(s):
    return Network(load_spec(s), 3, N_FEATURES, N_CLASSES)


def batch(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, N_FEATURES)), rng.integers(0, N_CLASSES, n)


def generator(state):
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


def fd_grad(loss, P, step=1e-6):
    """Central finite differences of loss() over every entry of P (changed in place and restored)."""
    g = np.zeros_like(P)
    for i in np.ndindex(P.shape):
        old = P[i]
        P[i] = old + step
        up = loss()
        P[i] = old - step
        down = loss()
        P[i] = old
        g[i] = (up - down) / (2 * step)
    return g


# -- L-DRL ----------------------------------------------------------------------------------------------------
def ldrl_loss_by_hand(x, W, b, V, c, dx, dy, sigma, act, fb_act):
    """−2⟨dx, g(f(x+dx)) − g(f(x))⟩ + ‖g(y+dy) − g(y)‖², summed over units, averaged over the batch."""
    f = lambda z: ACT[act](z @ W + b)  # noqa: E731
    g = lambda z: ACT[fb_act](z @ V + c)  # noqa: E731
    y = f(x)
    dx, dy = sigma * dx, sigma * dy
    return (-2 * np.sum(dx * (g(f(x + dx)) - g(y))) + np.sum((g(y + dy) - g(y)) ** 2)) / len(x)


@pytest.mark.parametrize("act,fb_act", [("tanh", "tanh"), ("sigmoid", "linear"), ("linear", "tanh")])
def test_ldrl_kernel_value_and_gradient_against_finite_differences(act, fb_act):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 3)) / 2, rng.standard_normal(3) / 2
    V, c = rng.standard_normal((3, 4)) / 2, rng.standard_normal(4) / 2
    dx, dy, sigma = rng.standard_normal((6, 4)), rng.standard_normal((6, 3)), 0.3
    h = ACT[act](x @ W + b)
    dV, dc, loss = ref.dense.ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma)
    by_hand = lambda: ldrl_loss_by_hand(x, W, b, V, c, dx, dy, sigma, act, fb_act)  # noqa: E731
    assert loss == pytest.approx(by_hand(), rel=1e-12)
    np.testing.assert_allclose(dV, fd_grad(by_hand, V), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dc, fd_grad(by_hand, c), rtol=1e-6, atol=1e-9)


def test_ldrl_expected_loss_for_linear_maps():
    """DESIGN §4: for f = xW, g = yV the expected loss is σ²(‖V − Wᵀ‖² − ‖W‖²) (a Monte Carlo mean here)."""
    rng = np.random.default_rng(2)
    W, V, sigma = rng.standard_normal((4, 3)), rng.standard_normal((3, 4)), 0.5
    x = rng.standard_normal((200_000, 4))
    _, _, loss = ref.dense.ldrl_grads(x, x @ W, W, None, "linear", V, None, "linear", sigma, rng)
    expected = sigma ** 2 * (np.sum((V - W.T) ** 2) - np.sum(W ** 2))
    assert loss == pytest.approx(expected, abs=0.02 * sigma ** 2 * (np.sum(W ** 2) + np.sum(V ** 2)))


def test_ldrl_training_drives_linear_feedback_to_the_transpose():
    """DESIGN §4's property through the layers: feedback steps of a linear network (forward weights fixed) bring
    every V_i to W_iᵀ, starting far from it."""
    s = spec("ldrl", feedback_iterations=4, feedback_noise=0.5)
    s["network"]["layers"] = [{"name": n, "size": k, "activation": "linear"} for n, k in
                              (("h1", 5), ("h2", 4), ("out", N_CLASSES))]
    s["network"]["feedback"] = {"activation": "linear"}
    s["optimizer"]["feedback"] = {"type": "sgd", "lr": 0.1}
    net = build(s)
    x, y = batch(6, n=64)
    start = {n: np.linalg.norm(net.layers[n].feedback_params["V"] - net.layers[n].forward_params["W"].T)
             for n in ("h2", "out")}
    for _ in range(400):  # SGD with fresh noise each step: V settles within a small noise ball around Wᵀ
        net.feedback_step(x, y)
    for name in ("h2", "out"):
        layer = net.layers[name]
        W, V = layer.forward_params["W"], layer.feedback_params["V"]
        assert np.linalg.norm(V - W.T) < 0.1 * start[name], (name, np.linalg.norm(V - W.T), start[name])
        assert np.abs(layer.feedback_params["c"]).max() < 1e-12  # a bias cancels in every difference: no gradient
    assert not net.layers["h1"].has_feedback


def test_ldrl_layer_step_uses_its_own_noise_and_the_kernel():
    """One feedback step of a layer is one SGD step on the loss above, with dx then dy drawn from its generator."""
    net = build(spec("ldrl", feedback_iterations=1))
    x, y = batch(3)
    net.forward(x, train=True)
    layer = net.layers["h2"]
    xin, h = layer.x.copy(), layer.h.copy()
    W, b = layer.forward_params["W"].copy(), layer.forward_params["b"].copy()
    V, c = layer.feedback_params["V"].copy(), layer.feedback_params["c"].copy()
    rng = generator(layer.rng.bit_generator.state)
    dx, dy = rng.standard_normal(xin.shape), rng.standard_normal(h.shape)
    layer.train_feedback()
    by_hand = lambda: ldrl_loss_by_hand(xin, W, b, V, c, dx, dy, 0.2, "tanh", "tanh")  # noqa: E731
    gV, gc = fd_grad(by_hand, V), fd_grad(by_hand, c)
    np.testing.assert_allclose(layer.feedback_params["V"], V - 0.05 * gV, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(layer.feedback_params["c"], c - 0.05 * gc, rtol=1e-7, atol=1e-10)
    assert layer.reconstruction_loss == pytest.approx(by_hand(), rel=1e-10)


def test_per_layer_feedback_noise_and_iterations():
    s = spec("ldrl", feedback_iterations=3)
    s["network"]["layers"][1]["feedback"] = {"activation": "tanh", "noise": 0.05, "iterations": 7}
    net = build(s)
    assert (net.layers["h2"].feedback_noise, net.layers["h2"].feedback_iterations) == (0.05, 7)
    assert (net.layers["out"].feedback_noise, net.layers["out"].feedback_iterations) == (0.2, 3)


# -- DTP-DRL --------------------------------------------------------------------------------------------------
def test_dtpdrl_feedback_step_matches_a_hand_written_round_trip():
    """Each layer: noise ε at its input, forward to the output, DTP targets back down through the feedback maps
    above, then one SGD step of V, c on (1/σ²)‖g(r_i) − g(h_i) − ε‖² (gradient by finite differences)."""
    net = build(spec("dtp_drl"))
    x, y = batch(2)
    p = {n: {k: v.copy() for k, v in d.items()} for n, d in net.parameters().items()}
    f = {n: (lambda z, n=n: (z @ p[n]["W"] + p[n]["b"]) if n == "out" else np.tanh(z @ p[n]["W"] + p[n]["b"]))
         for n in p}
    g = {n: (lambda z, n=n: np.tanh(z @ p[n]["V"] + p[n]["c"])) for n in ("h2", "out")}
    h1 = f["h1"](x)
    h2 = f["h2"](h1)
    out = f["out"](h2)
    states = {n: net.layers[n].rng.bit_generator.state for n in ("h2", "out")}
    net.feedback_step(x, y)
    sigma, lr = 0.2, 0.05
    cases_ = {"h2": (h1, h2, lambda r: h2 + g["out"](f["out"](r)) - g["out"](out)),  # up to out and back
              "out": (h2, out, lambda r: r)}  # the top layer's round trip is empty
    for name, (below, h, trip) in cases_.items():
        eps = sigma * generator(states[name]).standard_normal(below.shape)
        r = trip(f[name](below + eps))
        loss = lambda: np.sum((g[name](r) - g[name](h) - eps) ** 2) / (sigma ** 2 * len(x))  # noqa: E731
        gV, gc = fd_grad(loss, p[name]["V"]), fd_grad(loss, p[name]["c"])
        got = net.parameters()[name]
        np.testing.assert_allclose(got["V"], p[name]["V"] - lr * gV, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(got["c"], p[name]["c"] - lr * gc, rtol=1e-7, atol=1e-10)
        assert net.layers[name].reconstruction_loss == pytest.approx(loss(), rel=1e-10)


def test_dtpdrl_refuses_zero_noise():
    with pytest.raises(LocalnetError, match="feedback_noise"):
        build(spec("dtp_drl", feedback_noise=0.0))


# -- both -----------------------------------------------------------------------------------------------------
def test_audit_verdicts():
    report = audit_network(build(spec("dtp_drl")), *batch(5))
    assert ROUND_TRIP in report.categories("h2", "feedback")
    assert report.verdicts["h2"][0] == "non-local" and "round trip" in report.verdicts["h2"][1]
    assert ROUND_TRIP not in report.categories("out", "feedback")  # its trip is empty: its own f and g
    assert report.verdict == "non-local" and report.consistent
    report = audit_network(build(spec("ldrl")), *batch(5))
    assert not report.categories("h2", "feedback")  # trains g on its own f: reads no message
    assert report.verdict == "local apart from the first target" and report.consistent


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases("ldrl", first_target="output", feedback_noise=(0.05, 0.3)))
def test_invariants_hold_for_ldrl(case):
    check_invariants(*case)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases("dtp_drl", first_target="output", feedback_noise=(0.05, 0.3)))
def test_invariants_hold_for_dtp_drl(case):
    check_invariants(*case)


def test_shipped_specs_build():
    for name in ("dtpdrl", "ldrl"):
        s = load_spec(f"specs/fashion-mnist-{name}.yaml")
        assert s.rule.name == {"dtpdrl": "dtp_drl", "ldrl": "ldrl"}[name]
        Network(s, 0, 784, 10)


# -- the numba kernel against the reference -----------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numba_ldrl_matches_the_reference(data):
    """Hypothesis-drawn shapes, dtypes, activations and biases: the numba kernel on the reference's noise agrees
    with the reference; its seeded entry point replays exactly through its explicit-noise one."""
    nbd = pytest.importorskip("localnet.backends.numba.dense")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    rows, n_in, n_out = (data.draw(st.integers(1, 10)) for _ in range(3))
    act, fb_act = (data.draw(st.sampled_from(["linear", "tanh", "sigmoid", "relu"])) for _ in range(2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-2, 2, (rows, n_in)).astype(dtype)
    W, V = rng.uniform(-1, 1, (n_in, n_out)).astype(dtype), rng.uniform(-1, 1, (n_out, n_in)).astype(dtype)
    b = rng.uniform(-1, 1, n_out).astype(dtype) if data.draw(st.booleans()) else None
    c = rng.uniform(-1, 1, n_in).astype(dtype) if data.draw(st.booleans()) else None
    dx, dy = rng.standard_normal((rows, n_in)).astype(dtype), rng.standard_normal((rows, n_out)).astype(dtype)
    h = ref.dense.forward(x, W, b, act)[1]
    sigma = 0.3
    got = nbd.ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma)
    want = ref.dense.ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma)
    tol = dict(rtol=1e-4, atol=5e-5 * (n_in + n_out + 1)) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    for g, w in zip(got[:2], want[:2]):
        assert g.dtype == dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, **tol)
    np.testing.assert_allclose(got[2], want[2], rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    seed = data.draw(st.integers(0, 2**32 - 1))
    seeded = nbd.ldrl_grads(x, h, W, b, act, V, c, fb_act, sigma, np.random.default_rng(seed))
    keys = np.random.default_rng(seed)
    kx, ky = nbd.random_key(keys), nbd.random_key(keys)
    replay = nbd.ldrl_grads_from_noise(x, h, nbd.normals(kx, x.shape, dtype), nbd.normals(ky, h.shape, dtype), W, b,
                                       act, V, c, fb_act, sigma, nbd.sample_key(kx))
    for a, r in zip(seeded, replay):
        np.testing.assert_array_equal(a, r)


def test_mpi_engine_refuses_dtp_drl_across_ranks_and_runs_ldrl(tmp_path):
    """DTP-DRL's round trip crosses every layer above: refused on two ranks, naming the layers; L-DRL is local and
    runs on two ranks to the same test accuracy as on one."""
    import os
    import shutil
    import subprocess
    import sys
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if mpiexec is None:
        pytest.skip("no mpiexec")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOCALNET_MPI_")}, "OPENBLAS_NUM_THREADS": "1"}
    common = ["specs/quickstart.yaml", "--set", "backend=numpy", "--set", "train.epochs=1", "--set",
              "network.layers.h1.size=16", "--set", "network.layers.h2.size=16", "--engine", "mpi"]

    def run(k, rule):
        return subprocess.run([mpiexec, "-n", str(k), sys.executable, "-m", "localnet", "run", *common, "--set",
                               f"rule.name={rule}", "--runs-dir", str(tmp_path / f"{rule}{k}")],
                              capture_output=True, text=True, timeout=120, env=env, check=False)
    refused = run(2, "dtp_drl")
    assert refused.returncode != 0 and "layers h2 train their feedback maps on the network's round trip" in (
        refused.stdout + refused.stderr), refused.stdout + refused.stderr
    one, two = run(1, "ldrl"), run(2, "ldrl")
    assert one.returncode == two.returncode == 0, two.stdout + two.stderr
    accuracy = [line for line in one.stdout.splitlines() if "test accuracy" in line]
    assert accuracy and accuracy == [line for line in two.stdout.splitlines() if "test accuracy" in line], (
        one.stdout, two.stdout)
