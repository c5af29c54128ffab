"""The numba backend against the numpy reference (the oracle), kernel by kernel, and its own determinism.

Random numbers. The numba backend does not use NumPy's streams: each kernel call takes one 64-bit key from the
layer's generator and draws SplitMix64 outputs from it (see localnet/backends/numba/dense.py). So stochastic
kernels are compared by replay: the test takes the same key from an identically seeded generator, asks the backend
for the normals / uniforms that key yields, and feeds exactly those to the reference through a stand-in generator.
The generator itself is checked separately: against an independent transcription of SplitMix64 + Box–Muller, and
for its distribution.

Tolerances. float64: both backends do the same arithmetic in a different order (BLAS blocking, libm), so they agree
to a few ulps of O(1) quantities: rtol 1e-9, atol 1e-11. float32: tanh is a rational approximation (≤ 3.5e-7
absolute) and products of up to 12 terms are summed in a different order, so values of order 1 agree to ~1e-6;
rtol 1e-4 / atol 2e-5 leaves an order of magnitude of slack and still catches any wrong factor, sign or transpose.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from helpers import ACTS, DTYPES, TOL, Replay, arrays, dense_case, gen, near_a_jump

pytest.importorskip("numba")

import localnet  # noqa: E402
from localnet.backends import get_backend  # noqa: E402
from localnet.backends import numpy as ref  # noqa: E402
from localnet.backends.numba import dense as nbd  # noqa: E402
from localnet.spec.schema import OptimizerSpec  # noqa: E402

nb = get_backend("numba")
SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


# ----------------------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------------------


def readonly(a):
    """Layers hand kernels read-only message views: the kernels must accept them."""
    if a is None:
        return None
    v = a.view()
    v.flags.writeable = False
    return v


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Compile (or load from Numba's cache) every kernel signature the tests use, outside hypothesis' timing."""
    for dtype in DTYPES:
        x = np.ones((2, 3), dtype)
        W, V, b, c, h = np.ones((3, 2), dtype), np.ones((2, 3), dtype), np.ones(2, dtype), np.ones(3, dtype), x[:, :2]
        for bias, fbias in ((b, c), (None, None), (b, None), (None, c)):
            for xx in (x, readonly(x)):
                nb.dense.forward(xx, W, bias, "tanh", gen(0), sample=True)
                nb.dense.feedback_grads(xx, W, bias, "tanh", V, fbias, "tanh", 0.1, gen(0))
                nb.dense.difference_target(xx, h, h, V, fbias, "tanh")
                nb.dense.pre_activation_error(h, h, h, "tanh")
                nb.dense.weight_grads(xx, h)
        nb.dense.local_delta(h, h)
        nb.dense.input_grad(h, W)
    yield


# ----------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------
def test_backend_is_registered_and_auto_picks_it():
    assert nb.NAME == "numba"
    assert get_backend("auto").NAME == "numba"
    assert "numba" in localnet.spec.names.BACKENDS


def test_same_interface_as_the_reference():
    for module in ("dense", "loss", "optim", "activations"):
        for name in dir(getattr(ref, module)):
            if not name.startswith("_") and callable(getattr(getattr(ref, module), name)) \
                    and getattr(getattr(ref, module), name).__module__ == getattr(ref, module).__name__:
                assert hasattr(getattr(nb, module), name), f"numba backend lacks {module}.{name}"
    assert set(nb.optim.STEPS) == set(ref.optim.STEPS)


# ----------------------------------------------------------------------------------------------------------------
# Dense kernels
# ----------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(dense_case())
def test_forward_matches_reference(case):
    x, W, b, act, dtype = readonly(case["x"]), case["W"], case["b"], case["act"], case["dtype"]
    a, h = nb.dense.forward(x, W, b, act)
    a_ref, _ = ref.dense.forward(x, W, b, act)
    assert a.dtype == h.dtype == dtype and a.shape == h.shape == (x.shape[0], W.shape[1])
    close(a, a_ref, dtype, scale=np.abs(x).sum(axis=1, keepdims=True).max() + 1)
    # the activation is compared at the numba pre-activation, so that step/relu cannot flip on a rounding
    close(h, ref.activations.apply(act, a), dtype)


@SETTINGS
@given(dense_case(acts=("stochastic_binary",)))
def test_stochastic_samples_replay_through_the_reference(case):
    x, W, b, dtype = case["x"], case["W"], case["b"], case["dtype"]
    a, h = nb.dense.forward(x, W, b, "stochastic_binary", gen(case["seed"]), sample=True)
    u = nbd.uniforms(nbd.random_key(gen(case["seed"])), h.shape, dtype)
    p = ref.activations.sigmoid(a)
    assume(np.all(np.abs(u - p) > 1e-5))  # a sample on the knife's edge may go either way within float tolerance
    _, h_ref = ref.dense.forward(x, W, b, "stochastic_binary", Replay(uniforms=u), sample=True)
    np.testing.assert_array_equal(h, h_ref)
    assert set(np.unique(h)) <= {0, 1}


@SETTINGS
@given(dense_case())
def test_feedback_matches_reference(case):
    h, V, c, dtype = readonly(case["h"]), case["V"], case["c"], case["dtype"]
    assume(not near_a_jump(case["fb_act"], h, V, c))
    close(nb.dense.feedback(h, V, c, case["fb_act"]), ref.dense.feedback(h, V, c, case["fb_act"]), dtype,
          scale=np.abs(h).sum(axis=1).max() + 1)


@SETTINGS
@given(dense_case())
def test_local_delta_and_input_grad_match_reference(case):
    h, target, dtype = readonly(case["h"]), readonly(case["target"]), case["dtype"]
    close(nb.dense.local_delta(h, target), ref.dense.local_delta(h, target), dtype)
    e, W = readonly(case["delta"]), case["W"]
    close(nb.dense.input_grad(e, W), ref.dense.input_grad(e, W), dtype, scale=np.abs(e).sum(axis=1).max() + 1)


@SETTINGS
@given(dense_case())
def test_param_grads_match_reference(case):
    x, dtype, act = readonly(case["x"]), case["dtype"], case["act"]
    a = case["h"]  # any pre-activation; h is its activation (mean for stochastic units)
    h = ref.activations.apply(act, a)
    e = nb.dense.pre_activation_error(readonly(a), readonly(h), readonly(case["delta"]), act)
    want = ref.dense.pre_activation_error(a, h, case["delta"], act)
    assert e.dtype == dtype and e.shape == want.shape
    close(e, want, dtype)
    got, want = nb.dense.weight_grads(x, readonly(want)), ref.dense.weight_grads(x, want)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape
        close(g, w, dtype, scale=x.shape[0] * 4 + 1)


@SETTINGS
@given(dense_case())
def test_difference_target_matches_reference(case):
    x, h, target, V, c = (readonly(case[k]) for k in ("x", "h", "target", "V", "c"))
    assume(not near_a_jump(case["fb_act"], h, V, c) and not near_a_jump(case["fb_act"], target, V, c))
    got = nb.dense.difference_target(x, h, target, V, c, case["fb_act"])
    want = ref.dense.difference_target(x, h, target, V, c, case["fb_act"])
    close(got, want, case["dtype"], scale=np.abs(h).sum(axis=1).max() + np.abs(target).sum(axis=1).max() + 1)


@SETTINGS
@given(dense_case())
def test_feedback_grads_replay_through_the_reference(case):
    """Same seed: the numba kernel's noise (and Bernoulli samples) replayed through the reference."""
    x, W, b, V, c, dtype = case["x"], case["W"], case["b"], case["V"], case["c"], case["dtype"]
    act, fb_act, sigma = case["act"], case["fb_act"], 0.3
    got = nb.dense.feedback_grads(readonly(x), W, b, act, V, c, fb_act, sigma, gen(case["seed"]))
    key = nbd.random_key(gen(case["seed"]))
    noise = nbd.normals(key, x.shape, dtype)
    u = nbd.uniforms(nbd.sample_key(key), (x.shape[0], W.shape[1]), dtype)
    x_noisy = x + dtype(sigma) * noise
    if act == "stochastic_binary":
        a_noisy = x_noisy @ W + (0 if b is None else b)
        assume(np.all(np.abs(u - ref.activations.sigmoid(a_noisy)) > 1e-4))
    assume(not near_a_jump(act, x_noisy, W, b))
    h_noisy = ref.dense.forward(x_noisy, W, b, act, Replay(uniforms=u), sample=True)[1]
    assume(not near_a_jump(fb_act, h_noisy, V, c, derivative=True))
    want = ref.dense.feedback_grads(x, W, b, act, V, c, fb_act, sigma, Replay(normals=noise, uniforms=u))
    scale = (np.abs(x).max() + 3) * 4 * W.shape[1]
    close(got[0], want[0], dtype, scale=scale)
    close(got[1], want[1], dtype, scale=scale)
    np.testing.assert_allclose(got[2], want[2], rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * scale)
    # and the explicit-noise entry point agrees with the seeded one exactly
    again = nbd.feedback_grads_from_noise(x, noise, W, b, act, V, c, fb_act, sigma, nbd.sample_key(key))
    for g, w in zip(got, again):
        np.testing.assert_array_equal(g, w)


def test_feedback_grads_draws_from_the_layer_generator():
    x, W, V = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32) * 0.1, np.ones((5, 3), np.float32) * 0.1
    rng = gen(7)
    first = nb.dense.feedback_grads(x, W, None, "tanh", V, None, "tanh", 0.5, rng)
    second = nb.dense.feedback_grads(x, W, None, "tanh", V, None, "tanh", 0.5, rng)
    assert not np.array_equal(first[0], second[0])  # the generator moved on
    again = nb.dense.feedback_grads(x, W, None, "tanh", V, None, "tanh", 0.5, gen(7))
    np.testing.assert_array_equal(first[0], again[0])


# ----------------------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(st.sampled_from(ACTS), st.sampled_from(DTYPES), st.data())
def test_activations_and_derivatives_match_reference(act, dtype, data):
    a = data.draw(arrays(dtype, (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))), -12, 12))
    h = nb.activations.apply(act, a)
    close(h, ref.activations.apply(act, a), dtype)
    close(nb.activations.derivative(act, a, h), ref.activations.derivative(act, a, h), dtype)


def test_elu_is_the_textbook_elu_in_both_the_backend_and_the_reference():
    """ELU (α = 1): a for a > 0, e^a − 1 otherwise; its derivative 1, or e^a (a central difference away from 0)."""
    from localnet.diagnostics import reference
    a = np.array([[-30.0, -2.0, -0.5, -1e-9, 0.0, 1e-9, 0.5, 3.0]])
    want = np.array([[np.exp(v) - 1 if v <= 0 else v for v in a[0]]])
    for values in (ref.activations.apply("elu", a), reference.activation("elu", a)):
        np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-15)
    step = 1e-6
    numeric = (reference.activation("elu", a + step) - reference.activation("elu", a - step)) / (2 * step)
    for slope in (ref.activations.derivative("elu", a, want), reference.derivative("elu", a)):
        np.testing.assert_allclose(slope, numeric, rtol=1e-6, atol=1e-9)


def test_float32_tanh_error_bound_and_special_values():
    a = np.concatenate([np.linspace(-20, 20, 400_001), [0.0, -0.0, 1e-30, -1e-30, 3e-4, 5e-4, 8.0, -8.0]])
    a = a.astype(np.float32)
    h = nb.activations.apply("tanh", a.reshape(1, -1)).ravel()
    assert np.abs(h.astype(np.float64) - np.tanh(a.astype(np.float64))).max() < 4e-7
    special = nb.activations.apply("tanh", np.array([[np.nan, np.inf, -np.inf]], np.float32)).ravel()
    assert np.isnan(special[0]) and special[1] == 1 and special[2] == -1


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_through_kernels(dtype):
    """No fastmath: a NaN anywhere must reach the loss, so the trainer's divergence check sees it."""
    x = np.ones((3, 4), dtype)
    x[1, 2] = np.nan
    W = np.ones((4, 5), dtype) * 0.1
    for act in ("tanh", "sigmoid", "relu", "linear"):
        _, h = nb.dense.forward(x, W, None, act)
        assert np.isnan(h[1]).all() and np.isfinite(h[[0, 2]]).all()
    logits = np.zeros((3, 10), dtype)
    logits[0, 3] = np.nan
    assert np.isnan(nb.loss.softmax_cross_entropy(logits, np.array([0, 1, 2]))[0])
    assert np.isnan(nb.loss.mse(logits, np.array([0, 1, 2]))[0])
    loss = nb.dense.feedback_grads(x, W, None, "tanh", W.T.copy(), None, "tanh", 0.1, gen(0))[2]
    assert np.isnan(loss)


# ----------------------------------------------------------------------------------------------------------------
# Loss and optimisers
# ----------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(st.sampled_from(("softmax_cross_entropy", "mse")), st.sampled_from(DTYPES), st.data())
def test_losses_match_reference(loss, dtype, data):
    n, k = data.draw(st.integers(1, 9)), data.draw(st.integers(2, 10))
    out = data.draw(arrays(dtype, (n, k), -30, 30))
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    value, grad, correct = getattr(nb.loss, loss)(readonly(out), labels)
    value_ref, grad_ref, correct_ref = getattr(ref.loss, loss)(out, labels)
    assert grad.dtype == dtype
    np.testing.assert_allclose(value, value_ref, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * 100)
    close(grad, grad_ref, dtype)
    assert correct == correct_ref  # both take the first maximum, as argmax does


OPTIMISERS = [
    OptimizerSpec(type="sgd", lr=0.1),
    OptimizerSpec(type="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
    OptimizerSpec(type="rmsprop", lr=0.01, alpha=0.95, eps=1e-3),
    OptimizerSpec(type="rmsprop", lr=0.01, alpha=0.95, eps=1e-3, centered=True, momentum=0.9, weight_decay=0.1),
    OptimizerSpec(type="adam", lr=0.01, betas=(0.9, 0.99), eps=1e-8),
    OptimizerSpec(type="adam", lr=0.01, betas=(0.99, 0.999), eps=1e-6, weight_decay=0.05),
]


@SETTINGS
@given(st.sampled_from(OPTIMISERS), st.sampled_from(DTYPES), st.data())
def test_optimiser_steps_match_reference(spec, dtype, data):
    shape = data.draw(st.sampled_from([(5,), (3, 4), (1, 1)]))
    p0 = data.draw(arrays(dtype, shape))
    grads = [data.draw(arrays(dtype, shape)) for _ in range(3)]
    assert nb.optim.state_names(spec) == ref.optim.state_names(spec)
    ps = []
    for k in (nb, ref):
        p = p0.copy()
        state = {s: np.zeros_like(p) for s in k.optim.state_names(spec)}
        for t, g in enumerate(grads, start=1):
            k.optim.STEPS[spec.type](p, readonly(g), state, spec, t)
        ps.append((p, state))
    (p, state), (p_ref, state_ref) = ps
    # Adam's first steps move each weight by ~lr, dividing by sqrt(v) of tiny gradients: allow lr-relative slack
    close(p, p_ref, dtype, scale=100 * spec.lr + 1)
    for s in state:
        close(state[s], state_ref[s], dtype, scale=10)


@pytest.mark.parametrize("spec", [OptimizerSpec(type="sgd", lr=0.1, momentum=0.9),
                                  OptimizerSpec(type="rmsprop", lr=0.01, alpha=0.95, centered=True, momentum=0.9),
                                  OptimizerSpec(type="adam", lr=0.01, betas=(0.9, 0.99))], ids=lambda s: s.type)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decaying_states_flush_to_zero_as_the_reference_does(spec, dtype):
    """States just above the smallest normal number, gradients zero: both backends end with all states exactly 0
    (unflushed, they would stop among the subnormal numbers: tests/test_optim.py)."""
    rng = np.random.default_rng(0)
    p0, tiny = rng.standard_normal(7).astype(dtype), np.finfo(dtype).tiny
    out = []
    for k in (nb, ref):
        p = p0.copy()
        state = {s: np.full_like(p, 3 * tiny) for s in k.optim.state_names(spec)}
        for t in range(1, 301):
            k.optim.STEPS[spec.type](p, np.zeros_like(p), state, spec, t)
        out.append((p, state))
    (p, state), (p_ref, state_ref) = out
    for s in state:
        assert not state[s].any() and not state_ref[s].any(), s
    close(p, p_ref, dtype)


def test_optimiser_refuses_a_non_contiguous_parameter():
    spec = OptimizerSpec(type="sgd", lr=0.1)
    p = np.zeros((4, 4), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        nb.optim.STEPS["sgd"](p, np.ones_like(p), {}, spec, 1)


# ----------------------------------------------------------------------------------------------------------------
# Element-wise passes split across a job's cores (backends/numba/cores.py): the serial kernels' bits, any split
# ----------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(dense_case(acts=ACTS[:-1]), st.integers(2, 5))
def test_split_forward_gives_the_serial_kernels_bits(case, parts):
    x, W, dtype = case["x"], case["W"], case["dtype"]
    b, has_b = nbd._bias(case["b"], W)
    c = nbd.code(case["act"])
    outs = []
    for split in (False, True):
        a, h = np.empty((len(x), W.shape[1]), dtype), np.empty((len(x), W.shape[1]), dtype)
        if split:  # parts may exceed the rows: the blocks past the last row are empty
            nbd._forward_parts(readonly(x), W, b, has_b, c, a, h, parts)
        else:
            nbd._forward(readonly(x), W, b, has_b, c, np.uint64(0), False, a, h)
        outs.append((a, h))
    for serial, split in zip(*outs):
        np.testing.assert_array_equal(split, serial)


@SETTINGS
@given(st.sampled_from(OPTIMISERS), st.sampled_from(DTYPES), st.integers(1, 40), st.integers(2, 5), st.data())
def test_split_optimiser_steps_give_the_serial_kernels_bits(spec, dtype, n, parts, data):
    p0, m0, v0 = (data.draw(arrays(dtype, (n,))) for _ in range(3))
    g = data.draw(arrays(dtype, (n,)))
    v0 = np.abs(v0)
    f, o, tiny = float, nb.optim, float(np.finfo(dtype).tiny)
    runs = []
    for split in (False, True):
        p, m, v, w = p0.copy(), m0.copy(), v0.copy(), v0.copy()
        if spec.type == "sgd":
            args = (p, g, m, f(spec.lr), f(spec.momentum), f(spec.weight_decay), tiny)
            serial, parted = o._sgd, o._sgd_parts
        elif spec.type == "rmsprop":
            args = (p, g, v, m, w, f(spec.lr), f(spec.alpha), f(1 - spec.alpha), f(spec.eps), f(spec.momentum),
                    f(spec.weight_decay), bool(spec.centered), tiny)
            serial, parted = o._rmsprop, o._rmsprop_parts
        else:
            b1, b2 = spec.betas
            args = (p, g, m, v, f(spec.lr / (1 - b1 ** 3)), f(b1), f(1 - b1), f(b2), f(1 - b2), f(1 / (1 - b2 ** 3)),
                    f(spec.eps), f(spec.weight_decay), tiny)
            serial, parted = o._adam, o._adam_parts
        parted(*args, parts) if split else serial(*args)
        runs.append((p, m, v, w))
    for serial, split in zip(*runs):
        np.testing.assert_array_equal(split, serial)


def test_kernels_split_where_the_job_has_cores(monkeypatch):
    """A one-thread layout with BLAS on 2 cores splits the large passes (where MKL's OpenMP threads can run them) and
    gets the same numbers as with one core; a job with one core never splits."""
    from localnet import threads
    from localnet.backends.numba import cores
    calls = []
    for name in ("_forward_parts", "_adam_parts"):
        module = nbd if name == "_forward_parts" else nb.optim
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, k=kernel, n=name: (calls.append((n, args[-1])), k(*args)))
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((128, 200), np.float32), rng.standard_normal((200, 256), np.float32) * 0.1
    g = rng.standard_normal(W.shape, np.float32)
    spec = OptimizerSpec(type="adam", lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    results, saved = [], threads._current
    try:
        for n in (1, 2):
            threads.set_blas(n)
            p, state = W.copy(), {"m": np.zeros_like(W), "v": np.zeros_like(W)}
            nb.optim.STEPS["adam"](p, g, state, spec, 1)
            results.append((*nb.dense.forward(x, W, None, "tanh"), p))
    finally:  # as the suite had it
        threads.set_blas(saved or 1)
        threads._current = saved
    expected = [("_adam_parts", 2), ("_forward_parts", 2)] if cores._SPLIT else []
    assert sorted(calls) == expected
    for one, two in zip(*results):
        np.testing.assert_array_equal(two, one)


# ----------------------------------------------------------------------------------------------------------------
# The random streams
# ----------------------------------------------------------------------------------------------------------------
MASK = (1 << 64) - 1


def splitmix64(key, n):
    """SplitMix64 (Steele, Lea & Flood 2014), transcribed with Python integers."""
    out, s = [], key
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & MASK
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_normals_are_box_muller_of_splitmix64(n):
    key = 0xDEADBEEF12345678
    got32, got64 = nbd.normals(key, (n,), np.float32), nbd.normals(key, (n,), np.float64)
    half = n // 2
    want32, want64 = np.empty(n), np.empty(n)
    z = splitmix64(key, 2 * half + 2)
    for i in range(half + (n % 2)):  # float32: one output per pair, 24 bits per uniform
        u1, u2 = ((z[i] >> 40) + 1) * 2.0**-24, ((z[i] >> 16) & 0xFFFFFF) * 2.0**-24
        r = np.sqrt(-2 * np.log(u1))
        pair = (r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2))
        if i < half:
            want32[i], want32[half + i] = pair
        else:
            want32[n - 1] = pair[0]
    for i in range(half + (n % 2)):  # float64: two outputs per pair, 53 bits per uniform
        u1, u2 = ((z[2 * i] >> 11) + 1) * 2.0**-53, (z[2 * i + 1] >> 11) * 2.0**-53
        r = np.sqrt(-2 * np.log(u1))
        pair = (r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2))
        if i < half:
            want64[i], want64[half + i] = pair
        else:
            want64[n - 1] = pair[0]
    np.testing.assert_allclose(got32, want32, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got64, want64, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nbd.uniforms(key, (n,), np.float64), [(v >> 11) * 2.0**-53 for v in z[:n]],
                               rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normals_and_uniforms_are_distributed_as_claimed(dtype):
    from scipy import stats
    z = nbd.normals(12345, (400_001,), dtype).astype(np.float64)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01
    assert abs(np.mean(z**4) - 3) < 0.05  # the tails: kurtosis of a normal
    half = len(z) // 2
    assert abs(np.corrcoef(z[:half], z[half:2 * half])[0, 1]) < 0.01  # the two outputs of each pair
    assert abs(np.corrcoef(z[:half] ** 2, z[half:2 * half] ** 2)[0, 1]) < 0.01
    u = nbd.uniforms(999, (200_000,), dtype)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u.astype(np.float64), "uniform").pvalue > 1e-4
    other = nbd.normals(12346, (1000,), dtype)
    assert not np.array_equal(other, z[:1000].astype(dtype))


# ----------------------------------------------------------------------------------------------------------------
# Whole networks
# ----------------------------------------------------------------------------------------------------------------
def small_spec(backend, rule="dtp", dtype="float32", noise=0.3, act="tanh", schedule_seed=3):
    layers = [{"name": "h1", "size": 16, "activation": act}, {"name": "h2", "size": 12, "activation": "tanh"},
              {"name": "out", "size": 4, "activation": "linear"}]
    spec = {"name": "small", "seed": schedule_seed, "dtype": dtype, "backend": backend,
            "data": {"name": "digits"}, "network": {"layers": layers}, "rule": {"name": rule},
            "optimizer": {"forward": {"type": "adam", "lr": 0.01}, "feedback": {"type": "adam", "lr": 0.01}}}
    if rule != "bp":
        spec["rule"].update(target_step=0.3, feedback_noise=noise)
    return localnet.load_spec(spec)


def batches(n=6, rows=10, features=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((rows, features)), rng.integers(0, 4, rows)) for _ in range(n)]


@pytest.mark.parametrize("rule,act", [("dtp", "tanh"), ("dtp", "stochastic_binary"), ("bp", "tanh")])
def test_same_seed_gives_bit_identical_parameters(rule, act):
    runs = []
    for _ in range(2):
        net = localnet.build(small_spec("numba", rule, act=act), n_features=8, n_classes=4)
        for x, y in batches():
            net.train_step(x, y)
        runs.append(net.parameters())
    for layer in runs[0]:
        for k in runs[0][layer]:
            np.testing.assert_array_equal(runs[0][layer][k], runs[1][layer][k])
    other = localnet.build(small_spec("numba", rule, act=act, schedule_seed=4), n_features=8, n_classes=4)
    for x, y in batches():
        other.train_step(x, y)
    assert not np.array_equal(other.parameters()["h1"]["W"], runs[0]["h1"]["W"])


@pytest.mark.parametrize("rule", ["dtp", "tp", "bp"])
def test_networks_agree_with_numpy_without_noise(rule):
    """With no feedback noise nothing random is drawn, so whole training steps match the reference (float64)."""
    nets = [localnet.build(small_spec(b, rule, dtype="float64", noise=0.0), n_features=8, n_classes=4)
            for b in ("numba", "numpy")]
    for x, y in batches():
        metrics = [net.train_step(x, y) for net in nets]
        np.testing.assert_allclose(metrics[0]["loss"], metrics[1]["loss"], rtol=1e-9)
        assert metrics[0]["correct"] == metrics[1]["correct"]
    p, q = nets[0].parameters(), nets[1].parameters()
    for layer in p:
        for k in p[layer]:
            np.testing.assert_allclose(p[layer][k], q[layer][k], rtol=1e-8, atol=1e-10)
