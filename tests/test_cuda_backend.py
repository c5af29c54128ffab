"""The cuda backend against the numpy reference (the oracle), kernel by kernel, and whole networks.

Runs under Numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 before numba is imported) unless
LOCALNET_CUDA_REAL=1 is set, when the same tests run on the GPU. Simulated kernels run every thread as a Python
thread, so shapes are tiny and examples few; the simulator's tiles are 4 wide, so shapes up to 9 still cross tile
edges.

Random numbers. Like the numba CPU backend, the kernels draw from SplitMix64 streams keyed by one draw from the
layer's generator, not from NumPy's. Stochastic kernels are compared by replay: the test takes the same key from an
identically seeded generator, computes the stream's normals and uniforms with the independent transcription
below, and hands exactly those to the reference through a stand-in generator.

Tolerances. float64: the same arithmetic in a different order: rtol 1e-9. float32: sums of up to 9 products in
another order and the device's tanh/exp: rtol 1e-4 / atol 2e-5, which still catches a wrong factor, sign or transpose.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from helpers import ACTS, DTYPES, TOL, Replay, arrays, dense_case, gen, near_a_jump

pytest.importorskip("numba.cuda")

import localnet  # noqa: E402
from localnet.backends import get_backend  # noqa: E402
from localnet.backends import numpy as ref  # noqa: E402
from localnet.errors import LocalnetError, SpecError  # noqa: E402
from localnet.spec.schema import OptimizerSpec  # noqa: E402

try:
    cu = get_backend("cuda")
except LocalnetError as exc:  # numba was imported without the simulator and there is no GPU
    pytest.skip(f"no GPU and no CUDA simulator: {exc}", allow_module_level=True)

FEW = settings(deadline=None, max_examples=6)
SIM_CASE = dict(rows=6, n_in=9, n_out=6)  # the simulator runs every thread in Python: small cases
# under the simulator SplitMix64 runs on NumPy uint64 scalars, which warn about the wrap-around the device does silently
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")
MASK = (1 << 64) - 1


def host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def close(actual, expected, dtype):
    np.testing.assert_allclose(host(actual), expected, **TOL[dtype])


# ----------------------------------------------------------------------------------------------------------------
# An independent transcription of the streams (Python integers; numpy float64 transcendental functions)
# ----------------------------------------------------------------------------------------------------------------
def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def splitmix64(key, n):
    return [mix((key + (i + 1) * 0x9E3779B97F4A7C15) & MASK) for i in range(n)]


def replay_normals(key, shape, dtype):
    n = int(np.prod(shape))
    half = n // 2
    single = dtype == np.float32
    z = splitmix64(int(key), 2 * (half + 1))
    out = np.empty(n)
    for i in range(half + n % 2):
        if single:
            u1, u2 = ((z[i] >> 40) + 1) * 2.0**-24, ((z[i] >> 16) & 0xFFFFFF) * 2.0**-24
        else:
            u1, u2 = ((z[2 * i] >> 11) + 1) * 2.0**-53, (z[2 * i + 1] >> 11) * 2.0**-53
        r = np.sqrt(-2 * np.log(u1))
        pair = (r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2))
        if i < half:
            out[i], out[half + i] = pair
        else:
            out[n - 1] = pair[0]
    return out.astype(dtype).reshape(shape)


def replay_uniforms(key, shape, dtype):
    shift, scale = (40, 2.0**-24) if dtype == np.float32 else (11, 2.0**-53)
    return np.array([(v >> shift) * scale for v in splitmix64(int(key), int(np.prod(shape)))], dtype).reshape(shape)


def sample_key(key):
    """The Bernoulli stream's key of a feedback-training call (the numba CPU backend's derivation)."""
    return mix(int(key) ^ ((0x5DEECE66D * 0x9E3779B97F4A7C15) & MASK))


# ----------------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------------


def test_registered_simulated_and_never_picked_by_auto():
    assert cu.NAME == "cuda" and cu.SIMULATED == (os.environ.get("LOCALNET_CUDA_REAL") != "1")
    assert tiny_spec("cuda").backend == "cuda"
    if cu.SIMULATED:
        assert get_backend("auto").NAME != "cuda"


def test_bench_times_cuda_only_on_a_real_gpu():
    from localnet import bench
    assert ("cuda" in bench._backends()) == (not cu.SIMULATED)


def test_bench_gpu_section_runs_on_tiny_sizes(tmp_path, monkeypatch):
    """The GPU part of `localnet bench` end to end, shrunk so that the simulator can run it (no timing asserted)."""
    from localnet import bench
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\ndata: {name: digits}\nnetwork:\n  layers:\n    - {name: h1, size: 5}\n"
                    "    - {name: out, size: 3, activation: linear}\nrule: {name: dtp}\n")
    rate = bench.measure_cuda_gemm_rate
    monkeypatch.setattr(bench, "measure_cuda_gemm_rate", lambda: rate(size=6, repeats=1))
    monkeypatch.setattr(bench, "WIDE", 6)
    monkeypatch.setattr(bench, "WIDE_BATCH", 4)
    x, y = np.random.default_rng(0).random((8, 4), dtype=np.float32), np.arange(8) % 3
    report = bench.time_cuda({"dtp": spec}, x, y, 3, epochs=1, warmup=1, batches=1, torch=False)
    assert report["gemm_gflops"] > 0 and report["device"]
    (row,) = report["rows"]
    assert row["layers"] == [6, 3] and row["batch_size"] == 4 and row["seconds"] > 0 and row["vs_gemm_floor"] > 0


def test_same_interface_as_the_reference():
    assert "ldrl" not in cu.RULES  # refused at build (below): its feedback kernels are not needed
    only_refused = {"ldrl_grads", "ldrl_grads_from_noise"}
    for module in ("dense", "loss", "optim", "activations", "arrays"):
        want = {n for n, v in vars(getattr(ref, module)).items() if callable(v) and not n.startswith("_")
                and getattr(v, "__module__", "").startswith("localnet")} - only_refused
        got = {n for n, v in vars(getattr(cu, module)).items() if callable(v)}
        assert want <= got, (module, want - got)
    assert set(cu.optim.STEPS) == set(ref.optim.STEPS)


@FEW
@given(dense_case(**SIM_CASE))
def test_forward_and_feedback_match_reference(case):
    d, dt = case, case["dtype"]
    a, h = cu.dense.forward(d["x"], d["W"], d["b"], d["act"])
    a0, h0 = ref.dense.forward(d["x"], d["W"], d["b"], d["act"])
    close(a, a0, dt)
    close(h, ref.activations.apply(d["act"], host(a)), dt)  # at the device's a: a step cannot flip on a rounding
    assume(not near_a_jump(d["fb_act"], d["h"], d["V"], d["c"]))
    args = (d["h"], d["V"], d["c"], d["fb_act"])
    close(cu.dense.feedback(*args), ref.dense.feedback(*args), dt)


@FEW
@given(dense_case(acts=("stochastic_binary",), **SIM_CASE))
def test_bernoulli_samples_replay_through_the_reference(case):
    d, dt = case, case["dtype"]
    key = gen(d["seed"]).bit_generator.random_raw()
    a, h = cu.dense.forward(d["x"], d["W"], d["b"], d["act"], gen(d["seed"]), sample=True)
    uniforms = replay_uniforms(key, host(a).shape, dt)
    _, h0 = ref.dense.forward(d["x"], d["W"], d["b"], d["act"], Replay(uniforms=uniforms), sample=True)
    np.testing.assert_array_equal(host(h), h0)


@FEW
@given(dense_case(**SIM_CASE))
def test_local_delta_gradients_input_grad_and_targets_match_reference(case):
    d, dt = case, case["dtype"]
    close(cu.dense.local_delta(d["h"], d["target"]), ref.dense.local_delta(d["h"], d["target"]), dt)
    a, h = ref.dense.forward(d["x"], d["W"], d["b"], d["act"])
    e = ref.dense.pre_activation_error(a, h, d["delta"], d["act"])
    close(cu.dense.pre_activation_error(a, h, d["delta"], d["act"]), e, dt)
    for g, w in zip(cu.dense.weight_grads(d["x"], e), ref.dense.weight_grads(d["x"], e)):
        close(g, w, dt)
    close(cu.dense.input_grad(e, d["W"]), ref.dense.input_grad(e, d["W"]), dt)
    assume(not near_a_jump(d["fb_act"], d["h"], d["V"], d["c"]) and
           not near_a_jump(d["fb_act"], d["target"], d["V"], d["c"]))
    close(cu.dense.difference_target(d["x"], d["h"], d["target"], d["V"], d["c"], d["fb_act"]),
          ref.dense.difference_target(d["x"], d["h"], d["target"], d["V"], d["c"], d["fb_act"]), dt)
    close(cu.arrays.descend(cu.arrays.to_device(d["h"]), cu.arrays.to_device(d["delta"]), 0.3),
          d["h"] - 0.3 * d["delta"], dt)


@FEW
@given(dense_case(**SIM_CASE), st.floats(0.0, 1.0))
def test_feedback_grads_replay_through_the_reference(case, sigma):
    d, dt = case, case["dtype"]
    key = gen(d["seed"]).bit_generator.random_raw()
    dV, dc, loss = cu.dense.feedback_grads(d["x"], d["W"], d["b"], d["act"], d["V"], d["c"], d["fb_act"], sigma,
                                           gen(d["seed"]))
    replay = Replay(replay_normals(key, d["x"].shape, dt),
                    replay_uniforms(sample_key(key), (len(d["x"]), d["W"].shape[1]), dt))
    x_noisy = d["x"] + dt(sigma) * replay.normals  # what the kernel's units saw, to rule out draws on a knife's edge
    a_noisy = x_noisy @ d["W"] + (0 if d["b"] is None else d["b"])
    if d["act"] == "stochastic_binary":
        assume(np.all(np.abs(replay.uniforms - ref.activations.sigmoid(a_noisy)) > 1e-4))
    assume(not near_a_jump(d["act"], x_noisy, d["W"], d["b"]))
    h_noisy = ref.dense.forward(x_noisy, d["W"], d["b"], d["act"], Replay(uniforms=replay.uniforms), sample=True)[1]
    assume(not near_a_jump(d["fb_act"], h_noisy, d["V"], d["c"], derivative=True))
    dV0, dc0, loss0 = ref.dense.feedback_grads(d["x"], d["W"], d["b"], d["act"], d["V"], d["c"], d["fb_act"],
                                               dt(sigma), replay)
    close(dV, dV0, dt)
    close(dc, dc0, dt)
    np.testing.assert_allclose(loss, loss0, **TOL[dt])


@pytest.mark.parametrize("n", [1, 2, 7])
def test_noise_is_box_muller_of_splitmix64(n):
    key = 0xDEADBEEF12345678
    np.testing.assert_allclose(cu.dense.normals(key, (n,), np.float32), replay_normals(key, (n,), np.float32),
                               rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(cu.dense.normals(key, (n,), np.float64), replay_normals(key, (n,), np.float64),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cu.dense.uniforms(key, (n,), np.float64), replay_uniforms(key, (n,), np.float64))


@pytest.mark.parametrize("act", ACTS)
def test_activations_and_derivatives_match_reference(act):
    a = np.array([[-3.0, -1.0, -0.25, 0.0], [0.5, 1.0, 2.0, np.nan]], np.float32)
    h = ref.activations.apply(act, a)
    np.testing.assert_allclose(host(cu.activations.apply(act, a)), h, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(host(cu.activations.derivative(act, a, h)), ref.activations.derivative(act, a, h),
                               rtol=1e-6, atol=1e-7)


@FEW
@given(st.sampled_from(["softmax_cross_entropy", "mse", "reconstruction"]), st.sampled_from(DTYPES), st.data())
def test_losses_match_reference(name, dtype, data):
    rows, k = data.draw(st.integers(1, 6)), data.draw(st.integers(2, 5))
    out = data.draw(arrays(dtype, (rows, k), -5, 5))
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=rows, max_size=rows)))
    if name == "reconstruction":  # an auto-encoder's: against the clean input, not labels
        labels = data.draw(arrays(dtype, (rows, k), -5, 5))
    loss, grad, correct = getattr(cu.loss, name)(out, labels)
    loss0, grad0, correct0 = getattr(ref.loss, name)(out, labels)
    np.testing.assert_allclose(loss, loss0, rtol=1e-5 if dtype == np.float32 else 1e-10)
    close(grad, grad0, dtype)
    assert correct == correct0


@FEW
@given(st.sampled_from([OptimizerSpec(type="sgd", lr=0.1), OptimizerSpec(type="sgd", lr=0.05, momentum=0.9,
                                                                         weight_decay=0.01),
                        OptimizerSpec(type="rmsprop", lr=0.01, centered=True, momentum=0.5),
                        OptimizerSpec(type="rmsprop", lr=0.01), OptimizerSpec(type="adam", lr=0.01)]),
       st.sampled_from(DTYPES), st.data())
def test_optimiser_steps_match_reference(spec, dtype, data):
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5)))
    p0 = data.draw(arrays(dtype, shape))
    grads = [data.draw(arrays(dtype, shape)) for _ in range(3)]
    p_ref, p_dev = p0.copy(), cu.arrays.to_device(p0)
    s_ref = {n: np.zeros_like(p0) for n in ref.optim.state_names(spec)}
    s_dev = {n: cu.arrays.zeros_like(p_dev) for n in cu.optim.state_names(spec)}
    for t, g in enumerate(grads, 1):
        ref.optim.STEPS[spec.type](p_ref, g, s_ref, spec, t)
        cu.optim.STEPS[spec.type](p_dev, cu.arrays.to_device(g), s_dev, spec, t)
    close(p_dev, p_ref, dtype)
    for n in s_ref:
        close(s_dev[n], s_ref[n], dtype)


@pytest.mark.parametrize("spec", [OptimizerSpec(type="sgd", lr=0.1, momentum=0.9),
                                  OptimizerSpec(type="rmsprop", lr=0.01, alpha=0.95, centered=True, momentum=0.9),
                                  OptimizerSpec(type="adam", lr=0.01, betas=(0.9, 0.99))], ids=lambda s: s.type)
def test_decaying_states_flush_to_zero_as_the_reference_does(spec):
    """As tests/test_numba_backend.py: states just above the smallest normal number and no gradient end at 0."""
    p0 = np.linspace(-1, 1, 5, dtype=np.float32)
    p_ref, p_dev = p0.copy(), cu.arrays.to_device(p0)
    s_ref = {n: np.full_like(p0, 3 * np.finfo(np.float32).tiny) for n in ref.optim.state_names(spec)}
    s_dev = {n: cu.arrays.to_device(a) for n, a in s_ref.items()}
    zero = cu.arrays.to_device(np.zeros_like(p0))
    for t in range(1, 301):
        ref.optim.STEPS[spec.type](p_ref, np.zeros_like(p0), s_ref, spec, t)
        cu.optim.STEPS[spec.type](p_dev, zero, s_dev, spec, t)
    for n in s_ref:
        assert not host(s_dev[n]).any() and not s_ref[n].any(), n
    close(p_dev, p_ref, np.float32)


def test_sums_and_the_finiteness_check():
    x = np.arange(2 * 45, dtype=np.float32).reshape(2, 45) / 7  # several blocks of the first reduction stage
    assert cu.arrays.total(cu.arrays.to_device(x)) == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-12)
    x[1, 30] = np.inf
    assert not cu.arrays.sum_is_finite(cu.arrays.to_device(x))
    x[1, 30] = np.nan
    assert not cu.arrays.sum_is_finite(cu.arrays.to_device(x))
    assert cu.arrays.sum_is_finite(cu.arrays.zeros_like(cu.arrays.to_device(x)))


# ----------------------------------------------------------------------------------------------------------------
# Whole networks
# ----------------------------------------------------------------------------------------------------------------
def tiny_spec(backend, rule="dtp", dtype="float64", noise=0.0, seed=3, **extra):
    layers = [{"name": "h1", "size": 5, "activation": "tanh"}, {"name": "h2", "size": 4, "activation": "tanh"},
              {"name": "out", "size": 3, "activation": "linear"}]
    spec = {"name": "tiny", "seed": seed, "dtype": dtype, "backend": backend, "data": {"name": "digits"},
            "network": {"layers": layers}, "rule": {"name": rule},
            "optimizer": {"forward": {"type": "adam", "lr": 0.02}, "feedback": {"type": "adam", "lr": 0.02}},
            **extra}
    if rule != "bp":
        spec["rule"].update(target_step=0.3, feedback_noise=noise)
    return localnet.load_spec(spec)


def batches(n=3, rows=6, features=4, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((rows, features)), rng.integers(0, 3, rows)) for _ in range(n)]


def build(spec):
    return localnet.build(spec, n_features=4, n_classes=3)


def assert_parameters_close(p, q, **tol):
    for layer in p:
        for k in p[layer]:
            np.testing.assert_allclose(p[layer][k], q[layer][k], **tol)


@pytest.mark.parametrize("rule", ["dtp", "tp", "bp"])
def test_networks_agree_with_numpy_without_noise(rule):
    """With no feedback noise nothing random is drawn, so whole steps match the reference (float64)."""
    nets = [build(tiny_spec(b, rule)) for b in ("cuda", "numpy")]
    for x, y in batches():
        got, want = (net.train_step(x, y) for net in nets)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-12)
        assert got["correct"] == want["correct"]
    assert_parameters_close(nets[0].parameters(), nets[1].parameters(), rtol=1e-9, atol=1e-12)
    x, y = batches(1, seed=5)[0]
    for a, b in zip(nets[0].targets(x, y), nets[1].targets(x, y)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_noisy_dtp_agrees_with_the_numba_backend_that_draws_the_same_streams():
    """With noise, the numba CPU backend (itself tested against the reference) draws the same SplitMix64 streams;
    float64 noise is the same Box–Muller arithmetic, so the two agree to rounding."""
    pytest.importorskip("scipy")
    nets = [build(tiny_spec(b, noise=0.3)) for b in ("cuda", "numba")]
    for x, y in batches(2):
        got, want = (net.train_step(x, y) for net in nets)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-9)
    assert_parameters_close(nets[0].parameters(), nets[1].parameters(), rtol=1e-8, atol=1e-11)
    assert nets[0].layers["h2"].reconstruction_loss == pytest.approx(nets[1].layers["h2"].reconstruction_loss,
                                                                     rel=1e-9)


def test_same_seed_same_parameters_and_checkpoints_resume_exactly():
    runs = []
    for _ in range(2):
        net = build(tiny_spec("cuda", dtype="float32", noise=0.3))
        for x, y in batches(2, rows=4):
            net.train_step(x, y)
        runs.append(net)
    p = [net.parameters() for net in runs]
    for layer in p[0]:
        for k in p[0][layer]:
            np.testing.assert_array_equal(p[0][layer][k], p[1][layer][k])
    resumed = build(tiny_spec("cuda", dtype="float32", noise=0.3, seed=9))
    resumed.load_state(runs[0].state())
    x, y = batches(1, rows=4, seed=7)[0]
    assert resumed.train_step(x, y) == runs[0].train_step(x, y)
    q, r = resumed.parameters(), runs[0].parameters()
    for layer in q:
        for k in q[layer]:
            np.testing.assert_array_equal(q[layer][k], r[layer][k])
    assert resumed.looks_finite() and resumed.find_nonfinite() is None


def test_parameters_stay_on_the_device():
    net = build(tiny_spec("cuda"))
    x, y = batches(1)[0]
    net.train_step(x, y)
    layer = net.layers["h1"]
    arrays = [*layer.parameters().values(), layer.h, layer.target,
              *(a for s in layer.forward_optimizer.state.values() for a in s.values())]
    assert all(hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray) for a in arrays)


def test_audit_gives_the_same_verdicts_on_the_device():
    from localnet.audit import audit_network
    x, y = batches(1, rows=3)[0]
    reports = [audit_network(build(tiny_spec(b)), x.astype(np.float64), y).to_dict() for b in ("cuda", "numpy")]
    assert any(u["measured"] for layer in reports[0]["layers"].values() for u in layer["uses"])  # perturbed W, V
    assert reports[0] == reports[1]


@pytest.mark.parametrize("extra,path", [
    ({"rule": {"name": "ddtp_linear"}, "network": {"layers": [{"name": "h1", "size": 5}, {
        "name": "out", "size": 3, "activation": "linear"}], "feedback": {"activation": "linear"}}}, "rule.name"),
    ({"network": {"layers": [{"name": "h1", "size": 5}, {"name": "out", "size": 3, "activation": "linear"}],
                  "constraints": [{"type": "noise", "std": 0.1}]}}, "network.constraints.0"),
    ({"diagnostics": {"every": 5}}, "diagnostics.every"),
    ({"rule": {"name": "ldrl"}}, "rule.name"),
])
def test_what_does_not_run_on_the_device_is_refused_at_build_time(extra, path):
    spec = localnet.load_spec({"name": "r", "backend": "cuda", "data": {"name": "digits"},
                               "network": {"layers": [{"name": "h1", "size": 5},
                                                      {"name": "out", "size": 3, "activation": "linear"}]},
                               **extra})
    with pytest.raises(SpecError, match=path.replace(".", r"\.")):
        build(spec)
    with pytest.raises(LocalnetError, match="local engine"):
        cu.check_supported(tiny_spec("cuda"), engine=object())


def test_fixed_feedback_runs_on_the_device():
    from localnet.spec import to_data
    data = to_data(tiny_spec("cuda", noise=0.3))
    data["network"]["layers"][1]["constraints"] = [{"type": "fixed_feedback"}]
    net = build(localnet.load_spec(data))
    before = net.parameters()["h2"]["V"]
    x, y = batches(1, rows=3)[0]
    net.train_step(x, y)
    after = net.parameters()
    np.testing.assert_array_equal(after["h2"]["V"], before)
    assert not np.array_equal(after["h2"]["W"], build(localnet.load_spec(data)).parameters()["h2"]["W"])


@pytest.mark.skipif(os.environ.get("LOCALNET_CUDA_REAL") == "1", reason="a GPU is present")
def test_no_gpu_and_no_simulator_is_a_clear_error():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    code = "from localnet.backends import get_backend\nget_backend('cuda')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "LocalnetError: backend 'cuda': no CUDA GPU is available" in done.stderr


def test_graphs_other_than_chains_are_refused_at_build_time():
    spec = localnet.load_spec({"name": "r", "backend": "cuda", "data": {"name": "digits"},
                               "network": {"layers": [{"name": "h1", "size": 5}, {"name": "h2", "size": 5},
                                                      {"name": "r", "type": "add", "inputs": ["h2", "h1"]},
                                                      {"name": "out", "size": 3, "activation": "linear"}]}})
    with pytest.raises(SpecError, match="backend 'cuda' runs chains of layers only"):
        build(spec)
