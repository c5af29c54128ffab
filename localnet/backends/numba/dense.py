"""Numba CPU kernels of the dense layer family: the same functions and signatures as the numpy reference
(`localnet/backends/numpy/dense.py`, the oracle they are tested against), fused per phase.

Everything the dense kernels call lives in this one file on purpose: Numba's on-disk cache (`cache=True`) keys a
compiled function on its own source file only, so a helper in another module could change without the cached
kernels noticing (DESIGN §7).

How the kernels are fast:
- matrix products go through BLAS (`np.dot` inside `@njit` calls the BLAS that SciPy ships), with the bias and the
  non-linearity fused into one pass over the product;
- element-wise passes are written so that LLVM vectorises them. For float32, tanh is a clamped rational
  approximation (the one Eigen and TensorFlow use; at most 6 float32 ulp, 3.5e-7 absolute, from the exact value);
  float64 keeps libm's tanh;
- the difference target computes g(ĥ) and g(h) with one product of the stacked [ĥ; h];
- feedback training (noise, noisy forward, reconstruction, its gradient) is one kernel call per layer, and its
  Gaussian noise comes from a fast counter-based generator inside the kernel (below).

Random numbers. NumPy's `standard_normal` costs ~8 ns a float32 sample here, more than the rest of feedback training's
element-wise work together, so this backend draws its own: a 64-bit key is taken from the layer's generator
(`rng.bit_generator.random_raw()`, one draw per kernel call), and element i of the call's stream is SplitMix64's
output for counter i (Steele, Lea & Flood 2014), i.e. exactly the SplitMix64 sequence seeded with the key.
Gaussians come from the Box–Muller transform of one 64-bit output (two 24-bit uniforms, the first in (0, 1], so the
largest |ε| is 5.77); for float32, log, sin and cos are polynomial approximations accurate to about 1e-7
(Cephes' coefficients), for float64 they are libm's and each pair uses two outputs. Bernoulli samples of stochastic
units compare sigm(a) with a uniform from the same kind of stream. The streams are therefore NOT NumPy's: the same
seed gives the same numbers on this backend every time, but different numbers from the numpy backend.
`uniforms` and `normals` expose the streams so tests can replay them through the reference.

Cores. Where the engine gives a job more than one core (backprop's one-thread layout, localnet/threads.py), BLAS
spreads each product over them, but the element-wise pass after it would run on one core while the others wait.
The forward kernel then splits that pass into `parts` blocks of rows, one per core (`parallel=True`, Numba's OpenMP
threading layer, localnet/backends/numba/cores.py): element-wise work, so the numbers are the same for any
number of parts. With the optimiser steps split the same way (localnet/backends/numba/optim.py), backprop's epoch
takes 0.75 s instead of 0.82 (`localnet bench`).

Determinism: apart from those splits, every kernel here is serial except BLAS, whose products are deterministic for a
given thread count, so the same seed gives bit-identical parameters run after run on the same machine and thread
count. No kernel uses `fastmath` (it would let LLVM drop NaN checks).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .cores import parts as job_parts

JIT = dict(cache=True, nogil=True, error_model="numpy")  # numpy error model: no division checks, so loops vectorise
INLINE = dict(error_model="numpy")  # small helpers: LLVM inlines them
ALWAYS = dict(inline="always", error_model="numpy")  # bigger ones called in loops: inlined by Numba, so loops vectorise
OVERLOAD = dict(error_model="numpy")  # the same, for the small type-dispatching overloads
SPLIT = dict(JIT, parallel=True)  # element-wise passes split across a job's cores (see Cores above)

CODES = {"linear": 0, "tanh": 1, "sigmoid": 2, "relu": 3, "step": 4, "stochastic_binary": 5, "elu": 6}
LINEAR, TANH, SIGMOID, RELU, STEP, STOCHASTIC, ELU = range(7)


def code(name):
    try:
        return CODES[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# Random streams
# ---------------------------------------------------------------------------------------------------------------
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
SAMPLE_STREAM = np.uint64(0x5DEECE66D)  # offsets the key of a call's second stream (Bernoulli samples)
U24 = np.float32(2.0 ** -24)
U53 = 2.0 ** -53


def random_key(rng):
    """The key of one kernel call's random stream, one draw from the layer's own generator."""
    return np.uint64(rng.bit_generator.random_raw())


@njit(**INLINE)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(**INLINE)
def _draw(key, i):
    """Output i (from 0) of SplitMix64 seeded with key."""
    return _mix(key + np.uint64(i + 1) * GAMMA)


@njit(**INLINE)
def _subkey(key, stream):
    return _mix(key ^ (stream * GAMMA))


@intrinsic
def _f32_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


F32 = np.float32
_LN2 = F32(0.6931471805599453)
_TWO_PI = F32(6.283185307179586)


@njit(**INLINE)
def _log_f32(x):
    """ln x for finite x > 0 (Cephes logf: range reduction to [√½, √2) and a degree-9 polynomial)."""
    bits = _f32_bits(x)
    e = (bits >> 23) - 127
    m = _bits_f32((bits & 0x7FFFFF) | 0x3F800000)
    big = m > F32(1.4142135)
    m = m * F32(0.5) if big else m
    e = e + 1 if big else e
    t = m - F32(1)
    z = t * t
    y = F32(7.0376836292e-2) * t + F32(-1.1514610310e-1)
    y = y * t + F32(1.1676998740e-1)
    y = y * t + F32(-1.2420140846e-1)
    y = y * t + F32(1.4249322787e-1)
    y = y * t + F32(-1.6668057665e-1)
    y = y * t + F32(2.0000714765e-1)
    y = y * t + F32(-2.4999993993e-1)
    y = y * t + F32(3.3333331174e-1)
    y = y * t * z - F32(0.5) * z
    return t + y + F32(e) * _LN2


@njit(**INLINE)
def _sincos_2pi_f32(v):
    """(sin 2πv, cos 2πv) for v in [0, 1): quarter-turn reduction (exact) and Cephes' polynomials on [-π/4, π/4]."""
    q = np.int32(v * F32(4) + F32(0.5))
    p = (v - F32(q) * F32(0.25)) * _TWO_PI
    z = p * p
    s = p + p * z * ((F32(-1.9515295891e-4) * z + F32(8.3321608736e-3)) * z + F32(-1.6666654611e-1))
    c = F32(1) - F32(0.5) * z + z * z * ((F32(2.443315711809948e-5) * z + F32(-1.388731625493765e-3)) * z
                                          + F32(4.166664568298827e-2))
    odd = (q & 1) == 1
    a = c if odd else s
    b = s if odd else c
    return a * F32(1 - (q & 2)), b * F32(1 - ((q + 1) & 2))


@njit(**ALWAYS)
def _normal_pair_f32(key, i):
    z = _draw(key, i)
    u1 = F32(np.int32(z >> np.uint64(40)) + 1) * U24  # (0, 1]
    u2 = F32(np.int32((z >> np.uint64(16)) & np.uint64(0xFFFFFF))) * U24  # [0, 1)
    r = np.sqrt(F32(-2) * _log_f32(u1))
    s, c = _sincos_2pi_f32(u2)
    return r * c, r * s


@njit(**ALWAYS)
def _normal_pair_f64(key, i):
    u1 = (np.float64(_draw(key, 2 * i) >> np.uint64(11)) + 1.0) * U53  # (0, 1]
    u2 = np.float64(_draw(key, 2 * i + 1) >> np.uint64(11)) * U53
    r = math.sqrt(-2.0 * math.log(u1))
    t = 2.0 * math.pi * u2
    return r * math.cos(t), r * math.sin(t)


def _fill_normal(out, key):
    """Fill a flat array with standard normals of the stream `key` (pairs i -> out[i], out[half + i])."""


@overload(_fill_normal, jit_options=OVERLOAD)
def _ov_fill_normal(out, key):
    pair = _normal_pair_f32 if out.dtype == types.float32 else _normal_pair_f64

    def impl(out, key):
        n = out.size
        half = n // 2
        for i in range(half):
            z0, z1 = pair(key, i)
            out[i] = z0
            out[half + i] = z1
        if n % 2:
            out[n - 1] = pair(key, half)[0]
    return impl


def _uniform(key, i, like):
    """Uniform in [0, 1) of the dtype of `like`: element i of the stream `key`."""


@overload(_uniform, jit_options=OVERLOAD)
def _ov_uniform(key, i, like):
    if like == types.float32:
        return lambda key, i, like: F32(np.int32(_draw(key, i) >> np.uint64(40))) * U24
    return lambda key, i, like: np.float64(_draw(key, i) >> np.uint64(11)) * U53


@njit(**JIT)
def _normals(out, key):
    _fill_normal(out, key)


@njit(**JIT)
def _uniforms(out, key):
    for i in range(out.size):
        out[i] = _uniform(key, i, out[0])


def normals(key, shape, dtype):
    """The standard normals a kernel call with this key draws (feedback noise), for replaying in tests."""
    out = np.empty(shape, dtype)
    if out.size:
        _normals(out.reshape(-1), np.uint64(key))
    return out


def uniforms(key, shape, dtype):
    """The uniforms a kernel call with this key compares with sigm(a) for Bernoulli samples, for tests."""
    out = np.empty(shape, dtype)
    if out.size:
        _uniforms(out.reshape(-1), np.uint64(key))
    return out


def sample_key(key):
    """The key of the Bernoulli stream of a feedback-training call whose noise key is `key`."""
    return np.uint64(_subkey_py(np.uint64(key)))


@njit(cache=True)
def _subkey_py(key):
    return _subkey(key, SAMPLE_STREAM)


# ---------------------------------------------------------------------------------------------------------------
# Non-linearities (same definitions and surrogate derivatives as numpy/activations.py)
# ---------------------------------------------------------------------------------------------------------------
@njit(**INLINE)
def _tanh_f32(x):
    """Eigen's float tanh: a [13/6] rational approximation on [-7.9, 7.9]; NaN passes through the clamps."""
    lim = F32(7.90531110763549805)
    y = lim if x > lim else x  # (not min/max: a comparison with NaN is false, so NaN passes through)
    y = -lim if y < -lim else y
    x2 = y * y
    p = x2 * F32(-2.76076847742355e-16) + F32(2.00018790482477e-13)
    p = p * x2 + F32(-8.60467152213735e-11)
    p = p * x2 + F32(5.12229709037114e-08)
    p = p * x2 + F32(1.48572235717979e-05)
    p = p * x2 + F32(6.37261928875436e-04)
    p = p * x2 + F32(4.89352455891786e-03)
    q = x2 * F32(1.19825839466702e-06) + F32(1.18534705686654e-04)
    q = q * x2 + F32(2.26843463243900e-03)
    q = q * x2 + F32(4.89352518554385e-03)
    return y if abs(y) < F32(0.0004) else p * y / q


def _cst(a, value):
    """The constant `value` in a's floating type, so that float32 arithmetic stays float32."""


@overload(_cst, jit_options=OVERLOAD)
def _ov_cst(a, value):
    if a == types.float32:
        return lambda a, value: F32(value)
    return lambda a, value: float(value)


def _tanh(x):
    """tanh: the rational approximation for float32, libm for float64."""


@overload(_tanh, jit_options=OVERLOAD)
def _ov_tanh(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: math.tanh(x)


# Inlined by Numba into the kernels' loops. (Dtype-specific pieces are the small overloads above: Numba's inliner
# mishandles an inline overload called from several branches of one function.)
@njit(**ALWAYS)
def _act(c, a):
    """s(a) for activation code c (the mean for stochastic units)."""
    if c == TANH:
        return _tanh(a)
    zero, half, one = _cst(a, 0.0), _cst(a, 0.5), _cst(a, 1.0)
    if c == SIGMOID or c == STOCHASTIC:
        return half * (_tanh(half * a) + one)
    if c == RELU:
        return zero if a < zero else a  # NaN stays NaN, as with np.maximum
    if c == ELU:
        return math.expm1(a) if a <= zero else a
    if c == STEP:
        return one if a >= zero else -one
    return a


@njit(**ALWAYS)
def _deriv(c, a, h):
    """ds/da at a, h = s(a), with the reference's surrogates for step and stochastic units."""
    zero, half, one = _cst(a, 0.0), _cst(a, 0.5), _cst(a, 1.0)
    if c == TANH:
        return one - h * h
    if c == SIGMOID:
        return h * (one - h)
    if c == STOCHASTIC:
        p = half * (_tanh(half * a) + one)
        return p * (one - p)
    if c == RELU:
        return one if a > zero else zero
    if c == ELU:
        return one if a > zero else h + one
    if c == STEP:
        return one if abs(a) <= one else zero
    return one


@njit(**ALWAYS)
def _act_loop(a, b, has_b, c, h):
    rows, cols = a.shape
    for i in range(rows):
        for j in range(cols):
            v = a[i, j] + b[j] if has_b else a[i, j]
            a[i, j] = v
            h[i, j] = _act(c, v)


@njit(**INLINE)
def _bias_act(a, b, has_b, c, h, key, sample):
    """a += b (when there is a bias); h = s(a), Bernoulli samples for stochastic units when `sample`. One pass."""
    rows, cols = a.shape
    if sample and c == STOCHASTIC:
        for i in range(rows):
            for j in range(cols):
                if has_b:
                    a[i, j] += b[j]
                p = _act(c, a[i, j])  # (an inlined call inside a conditional expression upsets Numba's inliner)
                h[i, j] = 1 if _uniform(key, i * cols + j, p) < p else 0
    elif c == TANH:  # the common case gets its own copies of the loop, so no test is left inside them
        if has_b:
            _act_loop(a, b, True, c, h)
        else:
            _act_loop(a, b, False, c, h)
    elif has_b:
        _act_loop(a, b, True, c, h)
    else:
        _act_loop(a, b, False, c, h)


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------
@njit(**JIT)
def _forward(x, W, b, has_b, c, key, sample, a, h):
    np.dot(x, W, a)
    _bias_act(a, b, has_b, c, h, key, sample)


@njit(**SPLIT)
def _forward_parts(x, W, b, has_b, c, a, h, parts):
    """`_forward` without sampling, its element-wise pass in `parts` blocks of rows."""
    np.dot(x, W, a)
    rows = a.shape[0]
    size = (rows + parts - 1) // parts
    for k in prange(parts):
        lo, hi = k * size, min(rows, (k + 1) * size)
        _act_loop(a[lo:hi], b, has_b, c, h[lo:hi])


@njit(**JIT)
def _activate(a, c, key, sample, h):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            h[i, j] = a[i, j]
    _bias_act(h, h[0], False, c, h, key, sample)


@njit(**JIT)
def _derivative(a, h, c, out):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = _deriv(c, a[i, j], h[i, j])


@njit(**JIT)
def _local_delta(h, target, out):
    scale = _two_over(h)
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            out[i, j] = scale * (h[i, j] - target[i, j])


def _two_over(h):
    """2 / batch size, in h's dtype."""


@overload(_two_over, jit_options=OVERLOAD)
def _ov_two_over(h):
    F = np.float32 if h.dtype == types.float32 else np.float64
    return lambda h: F(2.0 / h.shape[0])


@njit(**JIT)
def _pre_activation_error(a, h, delta, c, e):
    rows, cols = e.shape
    if c == TANH:
        for i in range(rows):
            for j in range(cols):
                e[i, j] = delta[i, j] * _deriv(c, a[i, j], h[i, j])
    else:
        for i in range(rows):
            for j in range(cols):
                e[i, j] = delta[i, j] * _deriv(c, a[i, j], h[i, j])


@njit(**JIT)
def _weight_grads(x, e, dW, db):
    rows, cols = e.shape
    db[:] = 0
    for i in range(rows):
        for j in range(cols):
            db[j] += e[i, j]
    np.dot(x.T, e, dW)


@njit(**JIT)
def _input_grad(e, W, out):
    np.dot(e, W.T, out)


@njit(**JIT)
def _difference_target(x, h, target, V, cb, has_c, fc, stacked, q, out):
    """ĥ_{i-1} = x + g(ĥ) − g(h), with g(ĥ) and g(h) from one product of [ĥ; h]."""
    rows, cols = x.shape
    stacked[:rows] = target
    stacked[rows:] = h
    np.dot(stacked, V, q)
    if has_c:
        for i in range(2 * rows):
            for j in range(cols):
                q[i, j] += cb[j]
    if fc == TANH:
        for i in range(rows):
            for j in range(cols):
                out[i, j] = x[i, j] + _act(fc, q[i, j]) - _act(fc, q[rows + i, j])
    else:
        for i in range(rows):
            for j in range(cols):
                out[i, j] = x[i, j] + _act(fc, q[i, j]) - _act(fc, q[rows + i, j])


@njit(**ALWAYS)
def _reconstruction(q, cb, has_c, xn, fc, scale, dc, sq):
    """r = s̄(q + c); per element of the reconstruction error r − x̃: its square into sq, and the pre-activation
    error e = (2/B)(r − x̃) s̄'(q) into q (in place) and into dc."""
    rows, cols = q.shape
    for i in range(rows):
        for j in range(cols):
            qq = q[i, j] + cb[j] if has_c else q[i, j]
            r = _act(fc, qq)
            diff = r - xn[i, j]
            sq[j] += diff * diff
            e = scale * diff * _deriv(fc, qq, r)
            dc[j] += e
            q[i, j] = e


@njit(**JIT)
def _feedback_core(x, noise, W, b, has_b, c, V, cb, has_c, fc, sigma, skey, xn, a, h, q, dV, dc):
    """Feedback training's gradient, given the unit normals `noise` (xn may be noise itself: it is overwritten)."""
    rows, cols = x.shape
    for i in range(rows):
        for j in range(cols):
            xn[i, j] = x[i, j] + sigma * noise[i, j]
    np.dot(xn, W, a)
    _bias_act(a, b, has_b, c, h, skey, True)
    np.dot(h, V, q)
    scale = _two_over(x)
    sq = np.zeros(cols, x.dtype)  # the loss per column: a scalar sum would stop the loop from vectorising
    dc[:] = 0
    if fc == TANH:  # the common case gets its own copy of the loop, so the activation test is not inside it
        _reconstruction(q, cb, has_c, xn, fc, scale, dc, sq)
    else:
        _reconstruction(q, cb, has_c, xn, fc, scale, dc, sq)
    np.dot(h.T, q, dV)
    return np.sum(sq.astype(np.float64)) / rows


@njit(**JIT)
def _feedback_grads(x, W, b, has_b, c, V, cb, has_c, fc, sigma, key, xn, a, h, q, dV, dc):
    _fill_normal(xn.reshape(xn.size), key)
    return _feedback_core(x, xn, W, b, has_b, c, V, cb, has_c, fc, sigma, _subkey(key, SAMPLE_STREAM), xn, a, h, q,
                          dV, dc)


@njit(**JIT)
def _ldrl_core(x, h, dx, dy, W, b, has_b, c, V, cb, has_c, fc, sigma, skey, xn, a, stacked, q, dV, dc):
    """L-DRL's gradient from the unit normals dx, dy: f(x + σdx), h + σdy and h stacked, g of all three from one
    product, and dV from one product of the stack with the three pre-activation errors."""
    rows, n_in = x.shape
    n_out = h.shape[1]
    for i in range(rows):
        for j in range(n_in):
            xn[i, j] = x[i, j] + sigma * dx[i, j]
    np.dot(xn, W, a)
    _bias_act(a, b, has_b, c, a, skey, True)  # f(x + σdx) in place (each element read before it is written)
    for i in range(rows):
        for j in range(n_out):
            stacked[i, j] = a[i, j]
            stacked[rows + i, j] = h[i, j] + sigma * dy[i, j]
            stacked[2 * rows + i, j] = h[i, j]
    np.dot(stacked, V, q)
    scale = _two_over(x)
    two = _cst(sigma, 2.0)
    sq = np.zeros(n_in, x.dtype)  # the loss per column (a scalar sum would stop the loop from vectorising)
    dc[:] = 0
    for i in range(rows):
        for j in range(n_in):
            q0, q1, q2 = q[i, j], q[rows + i, j], q[2 * rows + i, j]
            if has_c:
                q0, q1, q2 = q0 + cb[j], q1 + cb[j], q2 + cb[j]
            g0, g1, g2 = _act(fc, q0), _act(fc, q1), _act(fc, q2)
            sdx = sigma * dx[i, j]
            d_y = g1 - g2
            sq[j] += d_y * d_y - two * sdx * (g0 - g2)
            e0 = -scale * sdx * _deriv(fc, q0, g0)
            e1 = scale * d_y * _deriv(fc, q1, g1)
            e2 = scale * (sdx - d_y) * _deriv(fc, q2, g2)
            q[i, j], q[rows + i, j], q[2 * rows + i, j] = e0, e1, e2
            dc[j] += e0 + e1 + e2
    np.dot(stacked.T, q, dV)
    return np.sum(sq.astype(np.float64)) / rows


# ---------------------------------------------------------------------------------------------------------------
# The interface (same as numpy/dense.py)
# ---------------------------------------------------------------------------------------------------------------
def _c(array):
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


_NO_BIAS = {np.dtype(np.float32): np.zeros(1, np.float32), np.dtype(np.float64): np.zeros(1, np.float64)}


def _bias(b, like):
    """(bias, present): kernels never see None, so that a bias-free layer needs no compiled variant of its own."""
    if b is not None:
        return b, True
    none = _NO_BIAS.get(like.dtype)
    return (none if none is not None else np.zeros(1, like.dtype)), False


def forward(x, W, b, act, rng=None, sample=False):
    """Pre-activation and output of h = s(x @ W + b)."""
    x = _c(x)
    c = code(act)
    a = np.empty((x.shape[0], W.shape[1]), W.dtype)
    h = np.empty_like(a)
    sample = bool(sample) and c == STOCHASTIC
    parts = job_parts(a.size)
    if parts > 1 and not sample:
        _forward_parts(x, W, *_bias(b, W), c, a, h, min(parts, a.shape[0]))
    else:
        _forward(x, W, *_bias(b, W), c, random_key(rng) if sample else np.uint64(0), sample, a, h)
    return a, h


def feedback(h, V, c, act):
    """g(h) = s̄(h @ V + c); feedback maps are deterministic, so stochastic units use their mean."""
    return forward(h, V, c, act)[1]


def local_delta(h, target):
    """dℒ_local/dh for ℒ_local = ‖h − ĥ‖² (summed over units, averaged over the batch)."""
    out = np.empty(h.shape, h.dtype)
    _local_delta(_c(h), _c(target), out)
    return out


def pre_activation_error(a, h, delta, act):
    """e = dℒ/da from dℒ/dh = delta, through this layer's own non-linearity only."""
    e = np.empty(h.shape, h.dtype)
    _pre_activation_error(_c(a), _c(h), _c(delta), code(act), e)
    return e


def weight_grads(x, e):
    """Gradients of W, b from the pre-activation error e."""
    x, e = _c(x), _c(e)
    dW = np.empty((x.shape[1], e.shape[1]), e.dtype)
    db = np.empty(e.shape[1], e.dtype)
    _weight_grads(x, e, dW, db)
    return dW, db


def input_grad(e, W):
    """dℒ/dx from the pre-activation error e: what backprop sends to the layer below."""
    out = np.empty((e.shape[0], W.shape[0]), W.dtype)
    _input_grad(_c(e), W, out)
    return out


def difference_target(x, h, target, V, c, fb_act):
    """DTP: ĥ_{i-1} = h_{i-1} + g(ĥ_i) − g(h_i)."""
    x, h, target = _c(x), _c(h), _c(target)
    rows = x.shape[0]
    stacked = np.empty((2 * rows, h.shape[1]), h.dtype)
    q = np.empty((2 * rows, x.shape[1]), x.dtype)
    out = np.empty(x.shape, x.dtype)
    _difference_target(x, h, target, V, *_bias(c, V), code(fb_act), stacked, q, out)
    return out


def _feedback_buffers(x, W):
    """Outputs of one feedback-training call: noisy input, pre-activation, output, reconstruction, dV, dc."""
    rows, n_in = x.shape
    n_out, dt = W.shape[1], W.dtype
    return (np.empty((rows, n_in), dt), np.empty((rows, n_out), dt), np.empty((rows, n_out), dt),
            np.empty((rows, n_in), dt), np.empty((n_out, n_in), dt), np.empty(n_in, dt))


def feedback_grads(x, W, b, act, V, c, fb_act, sigma, rng):
    """One step of DTP feedback training: minimise ‖g(f(x̃)) − x̃‖², x̃ = x + N(0, σ²), over V and c.

    Returns (dV, dc, loss) with the loss summed over units and averaged over the batch. The noise (and any
    Bernoulli samples) come from this backend's own stream, keyed by one draw from `rng` (see the module notes).
    """
    x = _c(x)
    xn, a, h, q, dV, dc = _feedback_buffers(x, W)
    loss = _feedback_grads(x, W, *_bias(b, W), code(act), V, *_bias(c, V), code(fb_act), W.dtype.type(sigma),
                           random_key(rng), xn, a, h, q, dV, dc)
    return dV, dc, float(loss)


def feedback_grads_from_noise(x, noise, W, b, act, V, c, fb_act, sigma, sample_key=0):
    """feedback_grads with the unit normals given (and the Bernoulli stream's key), for tests against the reference."""
    x = _c(x)
    xn, a, h, q, dV, dc = _feedback_buffers(x, W)
    loss = _feedback_core(x, _c(noise), W, *_bias(b, W), code(act), V, *_bias(c, V), code(fb_act),
                          W.dtype.type(sigma), np.uint64(sample_key), xn, a, h, q, dV, dc)
    return dV, dc, float(loss)


def _ldrl_buffers(x, h):
    rows, n_in = x.shape
    n_out, dt = h.shape[1], h.dtype
    return (np.empty((rows, n_in), dt), np.empty((rows, n_out), dt), np.empty((3 * rows, n_out), dt),
            np.empty((3 * rows, n_in), dt), np.empty((n_out, n_in), dt), np.empty(n_in, dt))


def ldrl_grads(x, h, W, b, act, V, c, fb_act, sigma, rng):
    """One step of L-DRL feedback training: minimise −2⟨dx, g(f(x + dx)) − g(h)⟩ + ‖g(h + dy) − g(h)‖² over V, c.

    Returns (dV, dc, loss). dx and dy are this backend's normals of two keys drawn from `rng`, in that order; the
    Bernoulli samples of stochastic units use `sample_key` of the first (the module notes say why).
    """
    key_x, key_y = random_key(rng), random_key(rng)
    dx, dy = normals(key_x, x.shape, W.dtype), normals(key_y, h.shape, W.dtype)
    return ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma, sample_key(key_x))


def ldrl_grads_from_noise(x, h, dx, dy, W, b, act, V, c, fb_act, sigma, sample_key=0):
    """ldrl_grads with the unit normals dx, dy given (and the Bernoulli stream's key), for tests and replay."""
    x, h = _c(x), _c(h)
    xn, a, stacked, q, dV, dc = _ldrl_buffers(x, h)
    loss = _ldrl_core(x, h, _c(dx), _c(dy), W, *_bias(b, W), code(act), V, *_bias(c, V), code(fb_act),
                      W.dtype.type(sigma), np.uint64(sample_key), xn, a, stacked, q, dV, dc)
    return dV, dc, float(loss)
