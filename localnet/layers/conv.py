"""The conv2d layer family: a block in DTP's sense (DESIGN §8, as in Ernoult et al.'s code), NCHW:

    a = conv(x, W) + b,   s = act(a),   h = pool(s)

with `conv` the cross-correlation of PyTorch's conv2d (W: (C_out, C_in, k, k), b: (C_out,), stride, zero padding)
and `pool` optional (max or avg over non-overlapping windows). Its feedback map inverts the block:

    g(h) = s̄(convT(unpool(h), V) + c)

`unpool` puts each value back at the position the block's own max-pool chose on the forward pass that made it
(the indices are the block's state, never a message), or copies it over its window (avg: pool(unpool(h)) = h);
`convT` is the transposed convolution with the forward conv's stride and padding (V of W's shape, mapping C_out
channels back to C_in, output of the block's input size), c: (C_in,). With V = W, a linear s̄ and no pooling,
convT(·, W) is the adjoint of conv(·, W), so DTP's targets through transposed feedback are backprop's.

Feedback training (DTP's reconstruction loss, L-DRL's layer-wise loss) puts its noise on the block's input
(C_in, H, W) and sums over every unit, averaged over the batch, as for dense layers. Kernels:
`backends/<backend>/conv.py`.
"""

from __future__ import annotations

import numpy as np

from ..constraints import layer_constraint
from ..diagnostics import reference as ref
from .base import Reference, optimizer_text, register_family, shape_text
from .init import initialize, initialize_kernel
from .parametric import ParametricLayer

ACTIVATIONS = ("linear", "tanh", "sigmoid", "relu", "elu")  # deterministic units (no sampling inside a block)


def conv_output_hw(hw, kernel, stride, padding):
    return tuple((n + 2 * padding - kernel) // stride + 1 for n in hw)


@register_family
class Conv2dLayer(ParametricLayer):
    family = "conv2d"
    offers = frozenset({"direct_feedback"})
    # one sample's products at a time, (C_out, C_in·k²)·(C_in·k², H·W): LeNet's backprop epoch took 26.0 s with
    # BLAS on both cores and 17.9 s as two job threads of one BLAS thread each (docs/performance.md, "Conv nets")
    products_split = False
    STEP_STATE = (*ParametricLayer.STEP_STATE, "s", "idx")

    @classmethod
    def check_spec(cls, spec, layer_spec, where, error):
        name = layer_spec.name
        for key in ("channels", "kernel"):
            if getattr(layer_spec, key) is None:
                raise error((*where, key), f"missing required key {key!r} (conv2d layer {name!r})",
                            expected=f"{key}: <integer>")
        if layer_spec.size is not None:
            raise error((*where, "size"), f"a conv2d layer has `channels`, not `size` (layer {name!r})",
                        expected="channels: <integer>", found=f"size: {layer_spec.size}")
        if layer_spec.activation not in ACTIVATIONS:
            raise error((*where, "activation"), f"conv2d layer {name!r}: activation {layer_spec.activation!r} is not "
                        "supported in a conv block", expected="one of " + ", ".join(ACTIVATIONS),
                        found=repr(layer_spec.activation))
        feedback = layer_spec.feedback or spec.network.feedback
        if feedback.activation not in ACTIVATIONS:
            raise error((*where, "feedback", "activation"), f"conv2d layer {name!r}: feedback activation "
                        f"{feedback.activation!r} is not supported", expected="one of " + ", ".join(ACTIVATIONS),
                        found=repr(feedback.activation))
        if layer_constraint(layer_spec, "sign_constrained") is not None:
            raise error((*where, "constraints"), f"conv2d layer {name!r}: sign_constrained is for dense layers")
        if spec.backend == "cuda":
            raise error(("backend",), f"backend 'cuda' has no conv2d kernels yet (layer {name!r})",
                        expected="numpy, numba or auto", found="'cuda'")
        delays = [c for c in (*spec.network.constraints, *(c for l in spec.network.layers for c in l.constraints),
                              *(c for ch in spec.network.channels or () for c in ch.constraints)) if c.type == "delay"]
        if delays:
            raise error(("network",), f"delayed messages are not supported with conv2d layers yet (layer {name!r})")

    @classmethod
    def parameter_count(cls, layer_spec, in_shape, out_shape, feedback):
        c_in, c_out, k = in_shape[0], layer_spec.channels, layer_spec.kernel
        return (c_out * c_in * k * k + c_out) + ((c_out * c_in * k * k + c_in) if feedback else 0)

    @classmethod
    def output_shape(cls, layer_spec, in_shape):
        if len(in_shape) != 3:
            raise ValueError("a conv2d layer takes C×H×W inputs (a data set's images, or another conv2d layer)")
        k, s, p = layer_spec.kernel, layer_spec.stride, layer_spec.padding
        hw = conv_output_hw(in_shape[1:], k, s, p)
        if min(hw) < 1:
            raise ValueError(f"a {k}×{k} kernel with padding {p} does not fit an input of {shape_text(in_shape[1:])}")
        if layer_spec.pool is not None:
            hw = tuple(n // layer_spec.pool_size for n in hw)
            if min(hw) < 1:
                raise ValueError(f"{layer_spec.pool_size}×{layer_spec.pool_size} pooling does not fit its "
                                 f"{shape_text(conv_output_hw(in_shape[1:], k, s, p))} convolution output")
        return (layer_spec.channels, *hw)

    def __init__(self, name, in_shape, spec, *, feedback, forward_optimizer, feedback_optimizer, rule, target_step,
                 feedback_noise, feedback_iterations, init, dtype, kernels, seed, down_kinds, inputs,
                 direct_from=None):
        c_in, c_out, k = in_shape[0], spec.channels, spec.kernel
        self.activation, self.feedback_activation = spec.activation, None
        self.stride, self.padding = spec.stride, spec.padding
        self.pool = spec.pool if spec.pool is not None and spec.pool_size > 1 else None
        self.pool_size = spec.pool_size
        pre_hw = conv_output_hw(in_shape[1:], k, spec.stride, spec.padding)
        init_rng, rng = (np.random.Generator(np.random.PCG64(s)) for s in seed.spawn(2))
        kernel = (c_out, c_in, k, k)
        forward_params = {"W": initialize_kernel(spec.init or init, kernel, init_rng, dtype)}
        if spec.bias:
            forward_params["b"] = np.zeros(c_out, dtype)
        fixed = layer_constraint(spec, "fixed_feedback")
        feedback_params = {}
        # a direct channel (DDTP, DFA, DRTP) brings a value of the output's space: g is then a dense linear map
        # from it to the block's output, g(z) = z V reshaped to C×H×W, V of shape (that size, C·H·W)
        self.direct_from = direct_from
        n_out = int(np.prod(self.output_shape(spec, in_shape)))
        shape = kernel if direct_from is None else (direct_from, n_out)
        if feedback is not None:
            self.feedback_activation = feedback.activation
            if fixed is not None and fixed.scale is not None:
                feedback_params["V"] = init_rng.uniform(-fixed.scale, fixed.scale, shape).astype(dtype)
            elif direct_from is not None:
                feedback_params["V"] = initialize(feedback.init, direct_from, n_out, init_rng, dtype)
            else:
                feedback_params["V"] = initialize_kernel(feedback.init, kernel, init_rng, dtype)
            if feedback.bias and direct_from is None:
                feedback_params["c"] = (np.zeros(c_in, dtype) if fixed is None or fixed.scale is None else
                                        init_rng.uniform(-fixed.scale, fixed.scale, c_in).astype(dtype))
        self._setup(name, in_shape, self.output_shape(spec, in_shape), forward_params=forward_params,
                    feedback_params=feedback_params, feedback=feedback, fixed=fixed is not None,
                    forward_optimizer=forward_optimizer, feedback_optimizer=feedback_optimizer, rule=rule,
                    target_step=target_step, feedback_noise=feedback_noise, feedback_iterations=feedback_iterations,
                    dtype=dtype, kernels=kernels, rng=rng, down_kinds=down_kinds, inputs=inputs,
                    a_shape=(c_out, *pre_hw))
        self.s = self.idx = None  # this step's activation before pooling and the max-pool's choices

    # -- the block ------------------------------------------------------------------------------------------------
    def _block(self, x):
        """(a, s, h, idx) of f on x, with no state change."""
        k = self.k
        a = k.conv.conv(x, self.forward_params["W"], self.forward_params.get("b"), self.stride, self.padding)
        s = k.activations.apply(self.activation, a)
        h, idx = k.conv.pool(s, self.pool, self.pool_size)
        return a, s, h, idx

    def _forward(self, x, train):
        a, self.s, h, self.idx = self._block(x)
        return a, h

    def f(self, x):
        return self._block(x)[2]

    def _unpool(self, h, idx):
        return self.k.conv.unpool(h, idx, self.pool, self.pool_size, (len(h), *self._a_shape))

    def _transpose(self, u, params):
        """convT(u, V) + c for V, c in `params`, of the block's input size."""
        return self.k.conv.conv_transpose(u, params["V"], params.get("c"), self.stride, self.padding,
                                          self.in_shape[1:])

    @property
    def direct_feedback(self):
        return self.direct_from is not None

    def g(self, z):
        if self.direct_from is not None:
            return self.k.dense.feedback(z, self.feedback_params["V"], None, "linear").reshape(len(z), *self.out_shape)
        return self.k.activations.apply(self.feedback_activation,
                                        self._transpose(self._unpool(z, self.idx), self.feedback_params))

    def g_difference(self, x, h, target):
        """x + g(target) − g(h), both through one transposed convolution."""
        u = np.concatenate([self._unpool(target, self.idx), self._unpool(h, self.idx)])
        r = self.k.activations.apply(self.feedback_activation, self._transpose(u, self.feedback_params))
        return x + (r[:len(h)] - r[len(h):])

    # -- learning -------------------------------------------------------------------------------------------------
    def local_delta(self, h, target):
        return self.k.dense.local_delta(_rows(h), _rows(target)).reshape(h.shape)

    def pre_error(self, a, h, delta):
        ds = self.k.conv.pool_grad(delta, self.idx, self.pool, self.pool_size, a.shape)
        return self.k.dense.pre_activation_error(_rows(a), _rows(self.s), _rows(ds), self.activation).reshape(a.shape)

    def vjp(self, e, through="forward"):
        if through == "forward":
            W = self.forward_params["W"]
        elif through == "signs":
            W = np.sign(self.forward_params["W"])
        elif through == "feedback":  # V has W's shape: convT with it is B's
            W = self.feedback_params["V"]
        else:
            raise ValueError(through)
        return self.k.conv.conv_transpose(e, W, None, self.stride, self.padding, self.in_shape[1:])

    def _weight_grads(self, x, e):
        dW, db = self.k.conv.conv_weight_grads(x, e, self.forward_params["W"].shape[2:], self.stride, self.padding)
        return {"W": dW, "b": db} if "b" in self.forward_params else {"W": dW}

    def reconstruction_gradient(self):
        """DTP's ‖g(f(x̃)) − x̃‖², x̃ = x + noise on the block's input; g unpools with the indices of the forward
        pass it inverts."""
        x, sigma = self.x, self.feedback_noise
        x_noisy = x + sigma * self.rng.standard_normal(x.shape, dtype=x.dtype)
        _, _, h_noisy, idx_noisy = self._block(x_noisy)
        u = self._unpool(h_noisy, idx_noisy)
        q = self._transpose(u, self.feedback_params)
        r = self.k.activations.apply(self.feedback_activation, q)
        diff = r - x_noisy
        return self._g_grads(u, q, r, (2 / len(x)) * diff), float(np.vdot(diff, diff) / len(x))

    def ldrl_gradient(self):
        """L-DRL's layer-wise loss (rules/ldrl.py) with the noise dx on the block's input and dy on its output."""
        x, h, sigma, rng = self.x, self.h, self.feedback_noise, self.rng
        rows = len(x)
        dx = sigma * rng.standard_normal(x.shape, dtype=x.dtype)
        dy = sigma * rng.standard_normal(h.shape, dtype=h.dtype)
        _, _, y_noisy, idx_noisy = self._block(x + dx)
        u = np.concatenate([self._unpool(y_noisy, idx_noisy), self._unpool(h + dy, self.idx),
                            self._unpool(h, self.idx)])
        q = self._transpose(u, self.feedback_params)
        r = self.k.activations.apply(self.feedback_activation, q)
        r_x, r_y, r_h = r[:rows], r[rows:2 * rows], r[2 * rows:]
        d_y = r_y - r_h
        loss = float((-2 * np.vdot(dx, r_x - r_h) + np.vdot(d_y, d_y)) / rows)
        return self._g_grads(u, q, r, (2 / rows) * np.concatenate([-dx, d_y, dx - d_y])), loss

    def g_pullback(self, z):
        if self.direct_from is not None:  # g(z) = z V, reshaped
            def linear(upstream, scale=1.0):
                dV, _ = self.k.dense.weight_grads(z, upstream.reshape(len(upstream), -1))
                return {"V": scale * dV if scale != 1.0 else dV}
            return self.g(z), linear
        u = self._unpool(z, self.idx)
        q = self._transpose(u, self.feedback_params)
        r = self.k.activations.apply(self.feedback_activation, q)

        def pullback(upstream, scale=1.0):
            grads = self._g_grads(u, q, r, upstream)
            return {k: scale * v for k, v in grads.items()} if scale != 1.0 else grads
        return r, pullback

    def _g_grads(self, u, q, r, upstream):
        """{V, c} gradients of ⟨upstream, s̄(convT(u, V) + c)⟩ at q = convT(u, V) + c, r = s̄(q)."""
        e = (upstream * self.k.activations.derivative(self.feedback_activation, q, r)).astype(u.dtype, copy=False)
        # convT's weight gradient is conv's with the roles of input and error swapped (backends/numpy/conv.py)
        dV, _ = self.k.conv.conv_weight_grads(e, u, self.feedback_params["V"].shape[2:], self.stride, self.padding)
        return {"V": dV, "c": e.sum(axis=(0, 2, 3))} if "c" in self.feedback_params else {"V": dV}

    # -- for the probe, the testing module, the CLI ------------------------------------------------------------
    def reference(self):
        return ConvReference(self)

    def describe(self):
        fo, bo = self.forward_optimizer.spec, self.feedback_optimizer
        row = super().describe()
        k = self.forward_params["W"].shape[2]
        block = f"{self.activation}, conv {k}x{k}/{self.stride} pad {self.padding}" + (
            f", {self.pool} pool {self.pool_size}" if self.pool else "")
        row.update(activation=block, **{"forward optimiser": optimizer_text(fo)})
        if self.has_feedback:
            row["feedback"] = ((f"linear {self.direct_from}->{shape_text(self.out_shape)}" if self.direct_from else
                                f"{self.feedback_activation} convT {shape_text(self.out_shape)}->"
                                f"{shape_text(self.in_shape)}") + (" (fixed)" if self.feedback_fixed else ""))
            row["feedback optimiser"] = optimizer_text(bo.spec)
        return row


def _rows(a):
    return a.reshape(len(a), -1)


class ConvReference(Reference):
    """The block's maps in float64, written independently of the backends' kernels (windows by
    `sliding_window_view` and einsum; pooling by the step's recorded choices)."""

    def __init__(self, layer):
        host = layer.k.arrays.to_host
        self.activation = layer.activation
        self.params = {k: np.asarray(host(v), np.float64) for k, v in layer.forward_params.items()}
        self._fb = {k: np.asarray(host(v), np.float64) for k, v in layer.feedback_params.items()}
        self._fb_act = layer.feedback_activation
        self.x, self.a, self.h = (None if v is None else np.asarray(host(v), np.float64)
                                  for v in (layer.x, layer.a, layer.h))
        self.idx = None if layer.idx is None else np.asarray(host(layer.idx))
        self.has_g = bool(self._fb) and layer.direct_from is None  # a direct map inverts no f
        self.stride, self.padding = layer.stride, layer.padding
        self.mode, self.size = layer.pool, layer.pool_size
        self.in_shape, self.a_shape = layer.in_shape, layer._a_shape

    def _windows(self, x):
        """(N, C, Ho, Wo, k, k) views of the zero-padded input under each output position."""
        k, s, p = self.params["W"].shape[2], self.stride, self.padding
        xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
        return np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]

    def pre(self, x, params=None):
        p = self.params if params is None else params
        ho, wo = self.a_shape[1:]
        a = np.einsum("nchwij,ocij->nohw", self._windows(x)[:, :, :ho, :wo], np.asarray(p["W"], np.float64))
        return a + np.asarray(p["b"], np.float64)[:, None, None] if "b" in p else a

    def _adjoint(self, e, W):
        """The adjoint of conv(·, W) applied to e: (N, C_in, H, W) of the block's input size."""
        k, s, p = W.shape[2], self.stride, self.padding
        n, (c, hgt, wid) = len(e), self.in_shape
        ho, wo = e.shape[2:]
        out = np.zeros((n, c, hgt + 2 * p, wid + 2 * p))
        for i in range(k):
            for j in range(k):
                out[:, :, i:i + s * ho:s, j:j + s * wo:s] += np.einsum("nohw,oc->nchw", e, W[:, :, i, j])
        return out[:, :, p:p + hgt, p:p + wid]

    def _grid(self, shape):
        """(N, C, Ho', Wo', k, k) index view of the pooled region of an array of `shape` (k = the pool size)."""
        k = self.size
        n, c, hgt, wid = shape
        return (n, c, hgt // k, k, wid // k, k)

    def pool(self, s):
        if self.mode is None:
            return s
        k = self.size
        n, c, hgt, wid = s.shape
        blocks = s[:, :, :hgt // k * k, :wid // k * k].reshape(self._grid(s.shape)).transpose(0, 1, 2, 4, 3, 5)
        blocks = blocks.reshape(*blocks.shape[:4], k * k)
        if self.mode == "avg":
            return blocks.mean(axis=-1)
        return np.take_along_axis(blocks, self.idx[..., None].astype(np.int64), axis=-1)[..., 0]

    def _spread(self, h, weight):
        """h back over its windows: at the recorded max positions (max), or times `weight` everywhere (avg)."""
        k = self.size
        n, c, hp, wp = h.shape
        blocks = np.zeros((n, c, hp, wp, k * k))
        if self.mode == "max":
            np.put_along_axis(blocks, self.idx[..., None].astype(np.int64), h[..., None], axis=-1)
        else:
            blocks += weight * h[..., None]
        out = np.zeros((n, *self.a_shape))
        out[:, :, :hp * k, :wp * k] = blocks.reshape(n, c, hp, wp, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
            n, c, hp * k, wp * k)
        return out

    def pool_vjp(self, dh):
        return dh if self.mode is None else self._spread(np.asarray(dh, np.float64), 1.0 / self.size ** 2)

    def param_vjp(self, x, e):
        ho, wo = e.shape[2:]
        dW = np.einsum("nchwij,nohw->ocij", self._windows(x)[:, :, :ho, :wo], e)
        return {"W": dW, **({"b": e.sum(axis=(0, 2, 3))} if "b" in self.params else {})}

    def input_vjp(self, e, params=None):
        p = self.params if params is None else params
        return self._adjoint(e, np.asarray(p["W"], np.float64))

    def g(self, h):
        h = np.asarray(h, np.float64)
        u = h if self.mode is None else self._spread(h, 1.0)
        q = self._adjoint(u, self._fb["V"])
        if "c" in self._fb:
            q = q + self._fb["c"][:, None, None]
        return ref.activation(self._fb_act, q)

    def feedback_gain(self):
        return max(1.0, float(np.abs(self._fb["V"]).sum(axis=(0, 2, 3)).max())) if self._fb else 1.0
