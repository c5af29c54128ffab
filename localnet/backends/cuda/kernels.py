"""Every numba.cuda kernel of the backend, and the Python functions that launch them (one place for device code).

Matrix products are a tiled shared-memory kernel of this file's own (`matmul`): numba.cuda has no matrix product of
its own, and no cuBLAS binding is a dependency here (CuPy or PyTorch would bring one, and a second memory allocator
with it), so the product is written out: each block computes a TILE x TILE tile of C, staging TILE-wide slabs of
the two operands through shared memory; the bias is added in the same pass. Transposed operands (xᵀe for dW, eWᵀ
for the input gradient) are read through flags, so nothing is copied. It is far from cuBLAS's speed on large
products; `localnet bench` measures its FLOP rate on a real GPU.

Element-wise work (activations, derivatives, targets, noise, optimisers) is one thread per element. Sums that
must come back (losses, the finiteness check) and bias gradients are reduced in a fixed order (one thread per
column; a fixed grid of partial sums, then one block), so results do not depend on scheduling: the same seed gives
the same numbers run after run on one device.

Random numbers follow the numba CPU backend's scheme exactly (localnet/backends/numba/dense.py): element i of a
call's stream is SplitMix64's output i for the call's 64-bit key; Gaussians are Box–Muller of one output (float32:
two 24-bit uniforms) or two outputs (float64: 53-bit uniforms), pair i filling elements i and n//2 + i; Bernoulli
samples compare sigm(a) with uniform i of the call's stream (in feedback training, of the stream keyed by
`subkey(key)`). Uniforms are exact; the transcendental functions are the device's float64 ones, so normals agree
with the CPU backend's to float32 rounding.

Every call allocates its outputs with `cuda.device_array` (Numba's default allocator, no pool).

Under Numba's CUDA simulator every thread is a Python thread, so tiles and blocks are small there (TILE 4, 32
threads per block): the same code, and tiny test shapes then cover several tiles and ragged edges. (There the
SplitMix64 arithmetic runs on NumPy uint64 scalars, which warn about the wrap-around the device does silently.)
"""

import math

import numpy as np
from numba import cuda, float32, float64

from . import SIMULATED

TILE = 4 if SIMULATED else 16  # matmul tile edge (threads per block: TILE²)
THREADS = 8 if SIMULATED else 256  # threads per block of element-wise kernels and reductions
PARTIALS = 4 if SIMULATED else 256  # blocks of the first reduction stage

CODES = {"linear": 0, "tanh": 1, "sigmoid": 2, "relu": 3, "step": 4, "stochastic_binary": 5, "elu": 6}
LINEAR, TANH, SIGMOID, RELU, STEP, STOCHASTIC, ELU = range(7)


def code(name):
    try:
        return CODES[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}") from None


def blocks(n, per=THREADS):
    return max(1, (n + per - 1) // per)


# ---------------------------------------------------------------------------------------------------------------
# Random streams (SplitMix64; Steele, Lea & Flood 2014)
# ---------------------------------------------------------------------------------------------------------------
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
SAMPLE_STREAM = 0x5DEECE66D  # offsets the key of a feedback-training call's Bernoulli stream
MASK = (1 << 64) - 1
U24 = 2.0 ** -24
U53 = 2.0 ** -53


def random_key(rng):
    """The key of one kernel call's random stream, one draw from the layer's own generator."""
    return np.uint64(rng.bit_generator.random_raw())


def _mix_py(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def subkey(key):
    """The key of the Bernoulli stream of a feedback-training call whose noise key is `key` (as the CPU backend)."""
    return np.uint64(_mix_py(int(key) ^ ((SAMPLE_STREAM * 0x9E3779B97F4A7C15) & MASK)))


@cuda.jit(device=True)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@cuda.jit(device=True)
def _draw(key, i):
    """Output i (from 0) of SplitMix64 seeded with key."""
    return _mix(key + (np.uint64(i) + np.uint64(1)) * GAMMA)


@cuda.jit(device=True)
def _uniform(key, i, single):
    """Uniform in [0, 1) (24 bits for float32, 53 for float64), exact in float64."""
    z = _draw(key, i)
    if single:
        return float64(z >> np.uint64(40)) * U24
    return float64(z >> np.uint64(11)) * U53


@cuda.jit(device=True)
def _normal_pair(key, i, single):
    if single:
        z = _draw(key, i)
        u1 = (float64(z >> np.uint64(40)) + 1.0) * U24  # (0, 1]
        u2 = float64((z >> np.uint64(16)) & np.uint64(0xFFFFFF)) * U24
    else:
        u1 = (float64(_draw(key, 2 * i) >> np.uint64(11)) + 1.0) * U53
        u2 = float64(_draw(key, 2 * i + 1) >> np.uint64(11)) * U53
    r = math.sqrt(-2.0 * math.log(u1))
    t = 2.0 * math.pi * u2
    return r * math.cos(t), r * math.sin(t)


@cuda.jit
def _noisy(x, key, sigma, single, xn):
    """xn = x + σ ε over flat arrays, ε the stream's normals (pair p -> elements p and n//2 + p)."""
    p = cuda.grid(1)
    n = x.size
    half = n // 2
    if p < half:
        z0, z1 = _normal_pair(key, p, single)
        xn[p] = z0  # stored first: the normal is rounded to the array's type, as the reference's noise is
        xn[half + p] = z1
        xn[p] = x[p] + sigma * xn[p]
        xn[half + p] = x[half + p] + sigma * xn[half + p]
    elif p == half and n % 2 == 1:
        z0, z1 = _normal_pair(key, p, single)
        xn[n - 1] = z0
        xn[n - 1] = x[n - 1] + sigma * xn[n - 1]


def noisy(x, key, sigma, xn):
    n = x.size
    if n:
        half = n // 2
        _noisy[blocks(half + 1), THREADS](x.reshape(-1), np.uint64(key), x.dtype.type(sigma),
                                          x.dtype == np.float32, xn.reshape(-1))


@cuda.jit
def _uniforms(key, single, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = _uniform(key, i, single)


def uniforms(key, out):
    if out.size:
        _uniforms[blocks(out.size), THREADS](np.uint64(key), out.dtype == np.float32, out.reshape(-1))


# ---------------------------------------------------------------------------------------------------------------
# Non-linearities (the reference's definitions and surrogate derivatives); `one` carries the array's type
# ---------------------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _act(c, a, one):
    if c == TANH:
        return math.tanh(a)
    zero = one - one
    half = one / (one + one)
    if c == SIGMOID or c == STOCHASTIC:
        return half * (math.tanh(half * a) + one)
    if c == RELU:
        return zero if a < zero else a  # NaN stays NaN
    if c == ELU:
        return math.expm1(a) if a <= zero else a
    if c == STEP:
        return one if a >= zero else -one
    return a


@cuda.jit(device=True)
def _deriv(c, a, h, one):
    zero = one - one
    half = one / (one + one)
    if c == TANH:
        return one - h * h
    if c == SIGMOID:
        return h * (one - h)
    if c == STOCHASTIC:
        p = half * (math.tanh(half * a) + one)
        return p * (one - p)
    if c == RELU:
        return one if a > zero else zero
    if c == ELU:
        return one if a > zero else h + one
    if c == STEP:
        return one if abs(a) <= one else zero
    return one


@cuda.jit
def _activate(a, c, key, sample, single, one, h):
    k = cuda.grid(1)
    if k < a.size:
        cols = a.shape[1]
        i, j = k // cols, k % cols
        if sample:
            p = _act(c, a[i, j], one)
            h[i, j] = one if _uniform(key, k, single) < p else one - one
        else:
            h[i, j] = _act(c, a[i, j], one)


def activate(a, act_code, key, sample, h):
    """h = s(a); Bernoulli samples of stochastic units (stream `key`) when `sample`."""
    if a.size:
        _activate[blocks(a.size), THREADS](a, act_code, np.uint64(key), bool(sample), a.dtype == np.float32,
                                           a.dtype.type(1), h)


@cuda.jit
def _derivative_times(delta, a, h, c, one, e):
    k = cuda.grid(1)
    if k < a.size:
        cols = a.shape[1]
        i, j = k // cols, k % cols
        e[i, j] = delta[i, j] * _deriv(c, a[i, j], h[i, j], one)


def derivative_times(delta, a, h, act_code, e):
    """e = delta ⊙ s'(a) (delta may be None: e = s'(a))."""
    if a.size:
        if delta is None:
            delta = cuda.device_array(a.shape, a.dtype)
            fill(delta.reshape(-1), a.dtype.type(1))
        _derivative_times[blocks(a.size), THREADS](delta, a, h, act_code, a.dtype.type(1), e)


# ---------------------------------------------------------------------------------------------------------------
# Matrix product
# ---------------------------------------------------------------------------------------------------------------
def _matmul_kernel(nbtype):
    @cuda.jit
    def kernel(A, B, C, ta, tb, bias, has_bias):
        """C = op(A) @ op(B) (+ bias per column); op transposes when its flag is set."""
        sA = cuda.shared.array((TILE, TILE), nbtype)
        sB = cuda.shared.array((TILE, TILE), nbtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        i = cuda.blockIdx.y * TILE + ty  # row of C
        j = cuda.blockIdx.x * TILE + tx  # column of C
        M, N = C.shape
        K = A.shape[0] if ta else A.shape[1]
        acc = nbtype(0)
        for t in range((K + TILE - 1) // TILE):
            ka = t * TILE + tx
            if i < M and ka < K:
                sA[ty, tx] = A[ka, i] if ta else A[i, ka]
            else:
                sA[ty, tx] = 0
            kb = t * TILE + ty
            if kb < K and j < N:
                sB[ty, tx] = B[j, kb] if tb else B[kb, j]
            else:
                sB[ty, tx] = 0
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sA[ty, kk] * sB[kk, tx]
            cuda.syncthreads()
        if i < M and j < N:
            if has_bias:
                acc += bias[j]
            C[i, j] = acc
    return kernel


_MATMUL = {np.dtype(np.float32): _matmul_kernel(float32), np.dtype(np.float64): _matmul_kernel(float64)}


def matmul(A, B, out, ta=False, tb=False, bias=None):
    """out = op(A) @ op(B) (+ bias), op(X) = Xᵀ when its flag is set; out is (rows, columns) of the product."""
    M, N = out.shape
    if M == 0 or N == 0:
        return out
    has_bias = bias is not None
    grid = (blocks(N, TILE), blocks(M, TILE))
    _MATMUL[np.dtype(out.dtype)][grid, (TILE, TILE)](A, B, out, bool(ta), bool(tb),
                                                       bias if has_bias else out[0], has_bias)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Element-wise helpers and reductions
# ---------------------------------------------------------------------------------------------------------------
@cuda.jit
def _fill(out, value):
    k = cuda.grid(1)
    if k < out.size:
        out[k] = value


def fill(out, value):
    if out.size:
        _fill[blocks(out.size), THREADS](out, value)


@cuda.jit
def _axpy(x, y, alpha, out):
    k = cuda.grid(1)
    if k < x.size:
        out[k] = x[k] + alpha * y[k]


def axpy(x, y, alpha, out):
    """out = x + alpha·y over flat arrays."""
    if x.size:
        _axpy[blocks(x.size), THREADS](x, y, alpha, out)


@cuda.jit
def _scaled_difference(x, y, scale, out):
    k = cuda.grid(1)
    if k < x.size:
        out[k] = scale * (x[k] - y[k])


def scaled_difference(x, y, scale, out):
    """out = scale·(x − y) over flat arrays."""
    if x.size:
        _scaled_difference[blocks(x.size), THREADS](x, y, x.dtype.type(scale), out)


@cuda.jit
def _square(x, out):
    k = cuda.grid(1)
    if k < x.size:
        out[k] = x[k] * x[k]


def square(x, out):
    """out = x² over flat arrays."""
    if x.size:
        _square[blocks(x.size), THREADS](x, out)


@cuda.jit
def _column_sums(e, out):
    j = cuda.grid(1)
    if j < e.shape[1]:
        s = e[0, j]
        for i in range(1, e.shape[0]):
            s += e[i, j]
        out[j] = s


def column_sums(e, out):
    """out[j] = Σ_i e[i, j], one thread per column (a fixed order)."""
    if e.shape[1]:
        if e.shape[0] == 0:
            fill(out, out.dtype.type(0))
            return out
        _column_sums[blocks(e.shape[1]), THREADS](e, out)
    return out


@cuda.jit
def _partial_sums(x, partials):
    """Block b's threads sum a fixed stride of x in float64; thread 0 writes the block's total."""
    sh = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for k in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        acc += float64(x[k])
    sh[t] = acc
    cuda.syncthreads()
    s = THREADS // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        partials[cuda.blockIdx.x] = sh[0]


def sum_into(x, out, slot):
    """out[slot] = Σ x (flat), in float64, in a fixed order."""
    n_blocks = min(PARTIALS, blocks(x.size))
    partials = cuda.device_array(n_blocks, np.float64)
    _partial_sums[n_blocks, THREADS](x, partials)
    _partial_sums[1, THREADS](partials, out[slot:slot + 1])


# ---------------------------------------------------------------------------------------------------------------
# Dense-layer kernels that fuse several element-wise steps
# ---------------------------------------------------------------------------------------------------------------
@cuda.jit
def _difference_target(x, q_target, q_h, fc, one, out):
    k = cuda.grid(1)
    if k < x.size:
        cols = x.shape[1]
        i, j = k // cols, k % cols
        out[i, j] = x[i, j] + (_act(fc, q_target[i, j], one) - _act(fc, q_h[i, j], one))


def difference_target(x, q_target, q_h, fb_code, out):
    """out = x + (s̄(q_target) − s̄(q_h)), the pre-activations of g(ĥ) and g(h) given."""
    if x.size:
        _difference_target[blocks(x.size), THREADS](x, q_target, q_h, fb_code, x.dtype.type(1), out)


@cuda.jit
def _reconstruction(q, xn, fc, scale, one, e, sq):
    k = cuda.grid(1)
    if k < q.size:
        cols = q.shape[1]
        i, j = k // cols, k % cols
        r = _act(fc, q[i, j], one)
        diff = r - xn[i, j]
        sq[k] = float64(diff) * float64(diff)
        e[i, j] = scale * diff * _deriv(fc, q[i, j], r, one)


def reconstruction(q, xn, fb_code, e, sq):
    """Feedback training's error: r = s̄(q); sq = (r − x̃)² per element (float64, flat); e = (2/B)(r − x̃)s̄'(q)."""
    if q.size:
        _reconstruction[blocks(q.size), THREADS](q, xn, fb_code, q.dtype.type(2.0 / q.shape[0]), q.dtype.type(1),
                                                  e, sq)


# ---------------------------------------------------------------------------------------------------------------
# Losses: one thread per row, float64 inside, per-row values reduced in a fixed order
# ---------------------------------------------------------------------------------------------------------------
@cuda.jit
def _softmax_cross_entropy(logits, labels, one, grad, loss_rows, correct_rows):
    i = cuda.grid(1)
    n, k = logits.shape
    if i < n:
        m = float64(logits[i, 0])
        best = 0
        for j in range(1, k):
            if logits[i, j] > m:  # first maximum, like argmax
                m = float64(logits[i, j])
                best = j
        s = 0.0
        for j in range(k):
            s += math.exp(float64(logits[i, j]) - m)
        log_s = math.log(s)
        inv_n = 1.0 / n
        y = labels[i]
        for j in range(k):
            p = math.exp(float64(logits[i, j]) - m - log_s)
            grad[i, j] = (p - 1.0) * inv_n if j == y else p * inv_n
        loss_rows[i] = -(float64(logits[i, y]) - m - log_s)
        correct_rows[i] = 1.0 if best == y and not math.isnan(m) else 0.0


@cuda.jit
def _mse(out, labels, one, grad, loss_rows, correct_rows):
    i = cuda.grid(1)
    n, k = out.shape
    if i < n:
        scale = (one + one) / n
        best = 0
        total = 0.0
        for j in range(k):
            d = out[i, j] - one if j == labels[i] else out[i, j]
            total += float64(d) * float64(d)
            grad[i, j] = scale * d
            if out[i, j] > out[i, best]:
                best = j
        loss_rows[i] = total
        correct_rows[i] = 1.0 if best == labels[i] else 0.0


LOSSES = {"softmax_cross_entropy": _softmax_cross_entropy, "mse": _mse}


def loss(name, out, labels, grad):
    """(ℒ averaged over the batch, the number correct) on the host; dℒ/dout into grad."""
    n = out.shape[0]
    if n == 0:
        return math.nan, 0
    loss_rows = cuda.device_array(n, np.float64)
    correct_rows = cuda.device_array(n, np.float64)
    LOSSES[name][blocks(n), THREADS](out, labels, out.dtype.type(1), grad, loss_rows, correct_rows)
    totals = cuda.device_array(2, np.float64)
    sum_into(loss_rows, totals, 0)
    sum_into(correct_rows, totals, 1)
    host = totals.copy_to_host()  # the step's one transfer back: two scalars
    return float(host[0] / n), int(host[1])


# ---------------------------------------------------------------------------------------------------------------
# Optimisers: in place on flat arrays; hyper-parameters arrive in the array's type, states flush to zero below
# `tiny` (as the numba CPU backend)
# ---------------------------------------------------------------------------------------------------------------
@cuda.jit
def _sgd(p, g, buf, lr, momentum, wd, tiny):
    i = cuda.grid(1)
    zero = tiny - tiny  # 0 in the array's type
    if i < p.size:
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        if momentum != 0:
            gi = momentum * buf[i] + gi
            if abs(gi) < tiny:
                gi = zero
            buf[i] = gi
        p[i] -= lr * gi


@cuda.jit
def _rmsprop(p, g, sq, avg, buf, lr, alpha, one_minus_alpha, eps, momentum, wd, centered, tiny):
    i = cuda.grid(1)
    zero = tiny - tiny  # 0 in the array's type
    if i < p.size:
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        v = alpha * sq[i] + one_minus_alpha * gi * gi
        if v < tiny:
            v = zero
        sq[i] = v
        if centered:
            m = alpha * avg[i] + one_minus_alpha * gi
            if abs(m) < tiny:
                m = zero
            avg[i] = m
            v = v - m * m
        step = gi / math.sqrt(v + eps)
        if momentum != 0:
            step = momentum * buf[i] + step
            if abs(step) < tiny:
                step = zero
            buf[i] = step
        p[i] -= lr * step


@cuda.jit
def _adam(p, g, m, v, lr_c1, beta1, one_minus_beta1, beta2, one_minus_beta2, c2, eps, wd, tiny):
    i = cuda.grid(1)
    zero = tiny - tiny  # 0 in the array's type
    if i < p.size:
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        if abs(mi) < tiny:
            mi = zero
        if vi < tiny:
            vi = zero
        m[i] = mi
        v[i] = vi
        p[i] -= lr_c1 * mi / (math.sqrt(vi * c2) + eps)


def launch_1d(kernel, n, *args):
    if n:
        kernel[blocks(n), THREADS](*args)
