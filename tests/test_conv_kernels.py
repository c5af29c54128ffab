"""The conv2d kernels: the numpy reference (localnet/backends/numpy/conv.py) against a deliberately naive oracle
written here (explicit Python loops, float64), their adjoint and derivative identities, and the numba backend
(localnet/backends/numba/conv.py) against the reference in float32 and float64.

Shapes are drawn small (batch 1-3, channels 1-3, H and W 1-9, kernel 1-4, stride 1-3, padding 0-2, pool size 1-3)
and only valid ones (H + 2p >= kh). Values are either Gaussian or small integers; integers make max-pool ties
common, so the first-maximum rule is exercised.
"""

import inspect

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from localnet.backends.numpy import conv as ref

pytest.importorskip("numba")
from localnet.backends.numba import conv as nbc  # noqa: E402

SETTINGS = settings(max_examples=40)
BACKENDS = pytest.mark.parametrize("mod", [ref, nbc], ids=["numpy", "numba"])
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32])


# ----------------------------------------------------------------------------------------------------------------
# The naive oracle: loops over every index, float64, no library convolution
# ----------------------------------------------------------------------------------------------------------------
def out_len(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def naive_conv(x, W, b, s, p):
    N, C, H, Wd = x.shape
    O, _, kh, kw = W.shape
    Ho, Wo = out_len(H, kh, s, p), out_len(Wd, kw, s, p)
    xl, Wl = x.tolist(), W.tolist()
    a = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for oy in range(Ho):
                for ox in range(Wo):
                    acc = 0.0 if b is None else float(b[o])
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                y, xx = oy * s + i - p, ox * s + j - p
                                if 0 <= y < H and 0 <= xx < Wd:
                                    acc += xl[n][c][y][xx] * Wl[o][c][i][j]
                    a[n, o, oy, ox] = acc
    return a


def naive_conv_transpose(h, V, c, s, p, out_hw):
    """The scatter definition: every input pixel of h adds V times itself into the window it came from."""
    N, O, Ho, Wo = h.shape
    _, C, kh, kw = V.shape
    H, Wd = out_hw
    hl, Vl = h.tolist(), V.tolist()
    y = [[[[0.0 if c is None else float(c[ch])] * Wd for _ in range(H)] for ch in range(C)] for _ in range(N)]
    for n in range(N):
        for o in range(O):
            for oy in range(Ho):
                for ox in range(Wo):
                    v = hl[n][o][oy][ox]
                    for ch in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                yy, xx = oy * s + i - p, ox * s + j - p
                                if 0 <= yy < H and 0 <= xx < Wd:
                                    y[n][ch][yy][xx] += v * Vl[o][ch][i][j]
    return np.array(y).reshape(N, C, H, Wd)


def naive_weight_grads(x, e, kernel, s, p):
    N, C, H, Wd = x.shape
    _, O, Ho, Wo = e.shape
    kh, kw = kernel
    xl, el = x.tolist(), e.tolist()
    dW = np.zeros((O, C, kh, kw))
    db = np.zeros(O)
    for o in range(O):
        for n in range(N):
            for oy in range(Ho):
                for ox in range(Wo):
                    db[o] += el[n][o][oy][ox]
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    acc = 0.0
                    for n in range(N):
                        for oy in range(Ho):
                            for ox in range(Wo):
                                y, xx = oy * s + i - p, ox * s + j - p
                                if 0 <= y < H and 0 <= xx < Wd:
                                    acc += el[n][o][oy][ox] * xl[n][c][y][xx]
                    dW[o, c, i, j] = acc
    return dW, db


def naive_pool(s, mode, k):
    N, C, H, W = s.shape
    h = np.zeros((N, C, H // k, W // k))
    idx = np.zeros(h.shape, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oy in range(H // k):
                for ox in range(W // k):
                    vals = [float(s[n, c, oy * k + di, ox * k + dj]) for di in range(k) for dj in range(k)]
                    if mode == "avg":
                        h[n, c, oy, ox] = sum(vals) / (k * k)
                    else:
                        best = 0
                        for q in range(1, k * k):
                            if vals[q] > vals[best]:  # strictly greater: the first maximum wins
                                best = q
                        h[n, c, oy, ox], idx[n, c, oy, ox] = vals[best], best
    return h, (idx if mode == "max" else None)


def naive_unpool(h, idx, mode, k, shape, adjoint=False):
    s = np.zeros(shape)
    N, C, Ho, Wo = h.shape
    for n in range(N):
        for c in range(C):
            for oy in range(Ho):
                for ox in range(Wo):
                    v = float(h[n, c, oy, ox])
                    if mode == "max":
                        q = int(idx[n, c, oy, ox])
                        s[n, c, oy * k + q // k, ox * k + q % k] = v
                    else:
                        for di in range(k):
                            for dj in range(k):
                                s[n, c, oy * k + di, ox * k + dj] = v / (k * k) if adjoint else v
    return s


# ----------------------------------------------------------------------------------------------------------------
# Drawn cases
# ----------------------------------------------------------------------------------------------------------------
def values(rng, shape, ints):
    if ints:
        return rng.integers(-2, 3, size=shape).astype(np.float64)
    return rng.standard_normal(shape)


@st.composite
def conv_case(draw):
    n, c_in, c_out = (draw(st.integers(1, 3)) for _ in range(3))
    s, p = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, min(4, H + 2 * p))), draw(st.integers(1, min(4, W + 2 * p)))
    ints, bias = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    ho, wo = out_len(H, kh, s, p), out_len(W, kw, s, p)
    return dict(x=values(rng, (n, c_in, H, W), ints), W=values(rng, (c_out, c_in, kh, kw), ints),
                b=values(rng, (c_out,), ints) if bias else None, c=values(rng, (c_in,), ints) if bias else None,
                h=values(rng, (n, c_out, ho, wo), ints), s=s, p=p, kernel=(kh, kw), out_hw=(H, W))


@st.composite
def pool_case(draw):
    n, c, k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(k, 9)), draw(st.integers(k, 9))  # H % k != 0 often: leftover rows and columns
    ints = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    return dict(s=values(rng, (n, c, H, W), ints), t=values(rng, (n, c, H // k, W // k), ints), k=k,
                mode=draw(st.sampled_from(["max", "avg"])))


def close(actual, expected, scale, rtol):
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * (scale + 1))


def dot(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def conv_scale(x, W, b=None):
    """A bound on the sum of the magnitudes of an output's terms: what rounding errors scale with."""
    return np.abs(x).max() * np.abs(W).max() * W[0].size + (0 if b is None else np.abs(b).max())


# ----------------------------------------------------------------------------------------------------------------
# 1. The reference against the naive oracle
# ----------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(conv_case())
def test_conv_matches_naive(case):
    x, W, b, s, p = case["x"], case["W"], case["b"], case["s"], case["p"]
    a = ref.conv(x, W, b, s, p)
    assert a.dtype == np.float64 and a.shape == (x.shape[0], W.shape[0], *case["h"].shape[2:])
    close(a, naive_conv(x, W, b, s, p), conv_scale(x, W, b), 1e-12)


@SETTINGS
@given(conv_case())
def test_conv_transpose_matches_naive_scatter(case):
    h, V, c, s, p, out_hw = case["h"], case["W"], case["c"], case["s"], case["p"], case["out_hw"]
    y = ref.conv_transpose(h, V, c, s, p, out_hw)
    assert y.dtype == np.float64 and y.shape == (h.shape[0], V.shape[1], *out_hw)
    close(y, naive_conv_transpose(h, V, c, s, p, out_hw), conv_scale(h, V.transpose(1, 0, 2, 3), c), 1e-12)


@SETTINGS
@given(conv_case())
def test_weight_grads_match_naive(case):
    x, e, kernel, s, p = case["x"], case["h"], case["kernel"], case["s"], case["p"]
    dW, db = ref.conv_weight_grads(x, e, kernel, s, p)
    dW0, db0 = naive_weight_grads(x, e, kernel, s, p)
    assert dW.shape == (e.shape[1], x.shape[1], *kernel) and db.shape == (e.shape[1],)
    scale = np.abs(x).max() * np.abs(e).max() * e[:, 0].size
    close(dW, dW0, scale, 1e-12)
    close(db, db0, np.abs(e).max() * e[:, 0].size, 1e-12)


@SETTINGS
@given(pool_case())
def test_pool_unpool_pool_grad_match_naive(case):
    s, t, k, mode = case["s"], case["t"], case["k"], case["mode"]
    h, idx = ref.pool(s, mode, k)
    if k == 1:
        assert h is s and idx is None
    else:
        h0, idx0 = naive_pool(s, mode, k)
        assert h.shape == h0.shape and h.dtype == np.float64
        close(h, h0, np.abs(s).max(), 1e-14)
        if mode == "max":
            assert idx.dtype == np.int64 and np.array_equal(idx, idx0)  # the first maximum, as PyTorch
            assert np.array_equal(h, h0)
        else:
            assert idx is None
    # unpool and pool_grad of an arbitrary t, with the idx of s (for max)
    if k == 1:
        expected_u = expected_g = t
    else:
        expected_u = naive_unpool(t, idx, mode, k, s.shape)
        expected_g = naive_unpool(t, idx, mode, k, s.shape, adjoint=True)
    u, g = ref.unpool(t, idx, mode, k, s.shape), ref.pool_grad(t, idx, mode, k, s.shape)
    assert u.shape == g.shape == s.shape
    close(u, expected_u, np.abs(t).max(), 1e-15)
    close(g, expected_g, np.abs(t).max(), 1e-15)
    # leftover rows and columns are zero
    Hk, Wk = (s.shape[2] // k) * k, (s.shape[3] // k) * k
    for out in (u, g):
        assert not out[:, :, Hk:, :].any() and not out[:, :, :, Wk:].any()


def test_pool_without_mode_is_the_identity():
    s = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    for mod in (ref, nbc):
        for mode, size in ((None, 2), (None, 1), ("max", 1), ("avg", 1)):
            h, idx = mod.pool(s, mode, size)
            assert h is s and idx is None
            for f in (mod.unpool, mod.pool_grad):
                out = f(s, None, mode, size, s.shape)
                assert out.dtype == s.dtype and np.array_equal(out, s) and not np.shares_memory(out, s)


# ----------------------------------------------------------------------------------------------------------------
# 2. Adjoint identities (both backends)
# ----------------------------------------------------------------------------------------------------------------
@BACKENDS
@SETTINGS
@given(case=conv_case())
def test_conv_transpose_is_the_adjoint_of_conv(mod, case):
    x, W, h, s, p = case["x"], case["W"], case["h"], case["s"], case["p"]
    lhs = dot(mod.conv(x, W, None, s, p), h)
    rhs = dot(x, mod.conv_transpose(h, W, None, s, p, case["out_hw"]))
    scale = np.abs(x).sum() * np.abs(W).max() * np.abs(h).max() * W[0].size
    assert abs(lhs - rhs) <= 1e-12 * (scale + 1)


@BACKENDS
@SETTINGS
@given(case=pool_case())
def test_pool_grad_is_the_adjoint_of_pool(mod, case):
    s, t, k, mode = case["s"], case["t"], case["k"], case["mode"]
    h, idx = mod.pool(s, mode, k)
    # max pooling is linear once its idx is fixed: <pool(s), t> = <s, pool_grad(t, idx)>
    lhs, rhs = dot(h, t), dot(s, mod.pool_grad(t, idx, mode, k, s.shape))
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(s).sum() * np.abs(t).max() + 1)


@BACKENDS
@SETTINGS
@given(case=pool_case())
def test_pool_inverts_unpool(mod, case):
    s, t, k, mode = case["s"], case["t"], case["k"], case["mode"]
    idx = mod.pool(s, mode, k)[1]
    u = mod.unpool(t, idx, mode, k, s.shape)
    h2, idx2 = mod.pool(u, mode, k)
    if mode == "avg" or k == 1:
        close(h2, t, np.abs(t).max(), 1e-14)
        return
    # max: each value is back at the position idx names; every other position is zero
    blocks = u[:, :, :t.shape[2] * k, :t.shape[3] * k].reshape(*t.shape[:3], k, t.shape[3], k)
    blocks = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(*t.shape, k * k)
    assert np.array_equal(np.take_along_axis(blocks, idx[..., None], axis=-1)[..., 0], t)
    assert np.count_nonzero(blocks) == np.count_nonzero(t)
    # so pooling recovers t where t >= 0 (0 where t < 0: the window's zeros win) and finds the same positions
    assert np.array_equal(h2, np.maximum(t, 0))
    assert np.array_equal(idx2[t > 0], idx[t > 0])


# ----------------------------------------------------------------------------------------------------------------
# 3. Weight gradients as derivatives
# ----------------------------------------------------------------------------------------------------------------
@BACKENDS
@SETTINGS
@given(case=conv_case(), data=st.data())
def test_conv_weight_grads_are_the_derivative(mod, case, data):
    x, e, s, p, kernel = case["x"], case["h"], case["s"], case["p"], case["kernel"]
    c_out, c_in = e.shape[1], x.shape[1]
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    W, b = rng.standard_normal((c_out, c_in, *kernel)), rng.standard_normal(c_out)
    dW, db = mod.conv_weight_grads(x, e, kernel, s, p)
    assert dW.shape == W.shape and db.shape == b.shape
    np.testing.assert_allclose(db, e.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12 * (np.abs(e).sum() + 1))

    def loss(W, b):
        return dot(e, mod.conv(x, W, b, s, p))

    scale = np.abs(x).max() * np.abs(e).sum() * (np.abs(W).max() * W[0].size + np.abs(b).max()) + 1
    # L is linear in (W, b), so L(W, b) = <dW, W> + <db, b> exactly (up to rounding)
    assert abs(loss(W, b) - (dot(dW, W) + dot(db, b))) <= 1e-11 * scale
    # and a central difference along one weight is exact up to rounding
    o, c, i, j = (data.draw(st.integers(0, d - 1)) for d in W.shape)
    E = np.zeros_like(W)
    E[o, c, i, j] = 1.0
    fd = (loss(W + E, b) - loss(W - E, b)) / 2
    assert abs(fd - dW[o, c, i, j]) <= 1e-11 * scale


@BACKENDS
@SETTINGS
@given(case=conv_case(), data=st.data())
def test_conv_transpose_weight_grads_from_conv_weight_grads(mod, case, data):
    """The docstring's statement: for y = conv_transpose(h, V, c), dL/dV = conv_weight_grads(x=dL/dy, e=h)[0]
    and dL/dc = (dL/dy).sum((0, 2, 3)); checked on L = <g, y>, whose gradient dL/dy is g."""
    h, V, s, p, out_hw, kernel = case["h"], case["W"], case["s"], case["p"], case["out_hw"], case["kernel"]
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    g = rng.standard_normal((h.shape[0], V.shape[1], *out_hw))
    c = rng.standard_normal(V.shape[1])
    dV = mod.conv_weight_grads(g, h, kernel, s, p)[0]
    dc = g.sum(axis=(0, 2, 3))
    assert dV.shape == V.shape

    def loss(V, c):
        return dot(g, mod.conv_transpose(h, V, c, s, p, out_hw))

    scale = np.abs(g).max() * np.abs(h).sum() * np.abs(V).max() * V[0].size + np.abs(g).sum() * np.abs(c).max() + 1
    assert abs(loss(V, c) - (dot(dV, V) + dot(dc, c))) <= 1e-11 * scale
    E = np.zeros_like(V)
    o, ch, i, j = (data.draw(st.integers(0, d - 1)) for d in V.shape)
    E[o, ch, i, j] = 1.0
    assert abs((loss(V + E, c) - loss(V - E, c)) / 2 - dV[o, ch, i, j]) <= 1e-11 * scale
    # and against the naive scatter's derivative, entry by entry (naive_weight_grads with x = g, e = h)
    close(dV, naive_weight_grads(g, h, kernel, s, p)[0], np.abs(g).max() * np.abs(h).max() * h[:, 0].size, 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# 4. The numba backend against the reference
# ----------------------------------------------------------------------------------------------------------------
def readonly(a, dtype):
    if a is None:
        return None
    a = np.array(a, dtype=dtype)
    a.flags.writeable = False
    return a


def tol(dtype):
    return 1e-12 if dtype == np.float64 else 2e-5


def test_same_interface_as_the_reference():
    public = [name for name, f in vars(ref).items() if inspect.isfunction(f) and not name.startswith("_")]
    assert sorted(public) == ["conv", "conv_transpose", "conv_weight_grads", "pool", "pool_grad", "unpool"]
    for name in public:
        assert inspect.signature(getattr(nbc, name)) == inspect.signature(getattr(ref, name)), name


@DTYPES
@SETTINGS
@given(case=conv_case())
def test_numba_conv_matches_reference(dtype, case):
    x, W, b, h, c = (readonly(case[k], dtype) for k in ("x", "W", "b", "h", "c"))
    s, p, out_hw, kernel = case["s"], case["p"], case["out_hw"], case["kernel"]

    a, a0 = nbc.conv(x, W, b, s, p), ref.conv(x, W, b, s, p)
    assert a.dtype == a0.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    close(a, a0, np.abs(ref.conv(np.abs(x), np.abs(W), None if b is None else np.abs(b), s, p)).max(), tol(dtype))

    y, y0 = nbc.conv_transpose(h, W, c, s, p, out_hw), ref.conv_transpose(h, W, c, s, p, out_hw)
    assert y.dtype == y0.dtype == dtype and y.shape == y0.shape == (h.shape[0], W.shape[1], *out_hw)
    scale = np.abs(ref.conv_transpose(np.abs(h), np.abs(W), None if c is None else np.abs(c), s, p, out_hw)).max()
    close(y, y0, scale, tol(dtype))

    (dW, db), (dW0, db0) = nbc.conv_weight_grads(x, h, kernel, s, p), ref.conv_weight_grads(x, h, kernel, s, p)
    assert dW.dtype == dW0.dtype == db.dtype == db0.dtype == dtype
    close(dW, dW0, np.abs(ref.conv_weight_grads(np.abs(x), np.abs(h), kernel, s, p)[0]).max(), tol(dtype))
    close(db, db0, np.abs(h).sum(axis=(0, 2, 3)).max(), tol(dtype))
    for out in (a, y, dW, db):
        assert not any(np.shares_memory(out, v) for v in (x, W, b, h, c) if v is not None)


@DTYPES
@SETTINGS
@given(case=pool_case())
def test_numba_pooling_matches_reference(dtype, case):
    s, t, k, mode = readonly(case["s"], dtype), readonly(case["t"], dtype), case["k"], case["mode"]
    (h, idx), (h0, idx0) = nbc.pool(s, mode, k), ref.pool(s, mode, k)
    assert h.dtype == h0.dtype == dtype and h.shape == h0.shape
    if k == 1:
        assert h is s and h0 is s and idx is None and idx0 is None
    else:
        close(h, h0, np.abs(s).max(), tol(dtype) / 10)
        if mode == "max":
            assert idx.dtype == idx0.dtype == np.int64 and np.array_equal(idx, idx0) and np.array_equal(h, h0)
        else:
            assert idx is None and idx0 is None
    for f, g in ((nbc.unpool, ref.unpool), (nbc.pool_grad, ref.pool_grad)):
        out, out0 = f(t, idx0, mode, k, s.shape), g(t, idx0, mode, k, s.shape)
        assert out.dtype == out0.dtype == dtype and out.shape == out0.shape == s.shape
        assert np.array_equal(out, out0)  # copies and one division: exact in both
        assert not np.shares_memory(out, t) and not np.shares_memory(out0, t)
    if k > 1:
        assert not np.shares_memory(h, s) and not np.shares_memory(h0, s)


# ----------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------
@BACKENDS
def test_bad_arguments_are_refused(mod):
    x = np.zeros((1, 2, 5, 5))
    W = np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError):
        mod.conv(np.zeros((1, 2, 1, 1)), W, None, 1, 0)  # kernel larger than the padded input
    with pytest.raises(ValueError):
        mod.conv_transpose(np.zeros((1, 3, 3, 3)), W, None, 1, 0, (6, 6))  # (6 - 3) + 1 = 4, not 3
    with pytest.raises(ValueError):
        mod.conv_weight_grads(x, np.zeros((1, 3, 2, 2)), (3, 3), 1, 0)
    with pytest.raises(ValueError):
        mod.pool(x, "median", 2)
    with pytest.raises(ValueError):
        mod.unpool(np.zeros((1, 2, 3, 3)), None, "avg", 2, x.shape)  # 5 // 2 = 2, not 3
