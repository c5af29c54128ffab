"""The dense layer family: h = s(x W + b), with W of shape (n_in, n_out) (row vectors), and, where the rule gives
it one, the feedback map g(h) = s̄(h V + c) with V of shape (n_out, n_in). It owns W, b, V, c, their optimisers,
its random generator and its local rule, and sees only its own state and its inbox. An input of more than one
dimension per sample (a conv layer's C×H×W) is flattened in C order, and what it sends down has that shape again
(DESIGN §8).

Several inputs x_1..x_m (`inputs:` in the spec): a = Σ_j x_j W_j + b, each edge with its own W_j and, under a rule
with feedback maps, its own g_j(h) = s̄(h V_j + c_j) back to input j. The layer keeps them stacked, x = [x_1 … x_m]
(each flattened), W = [W_1; …; W_m], V = [V_1 … V_m], c = [c_1 … c_m]: the same sums, one product, and each input
gets its own block of what goes down."""

from __future__ import annotations

import numpy as np

from ..constraints import layer_constraint
from ..diagnostics import reference as ref
from .base import Reference, flat_size, optimizer_text, register_family, shape_text
from .init import initialize
from .parametric import ParametricLayer


@register_family
class DenseLayer(ParametricLayer):
    family = "dense"
    offers = frozenset({"direct_feedback", "round_trip"})

    @classmethod
    def input_shape(cls, layer_spec, shapes):
        """One input as it comes (flattened when used); several stacked side by side, each flattened."""
        return tuple(shapes[0]) if len(shapes) == 1 else (sum(flat_size(shape) for shape in shapes),)

    @classmethod
    def output_shape(cls, layer_spec, in_shape):
        return (layer_spec.size,)

    @classmethod
    def parameter_count(cls, layer_spec, in_shape, out_shape, feedback):
        n_in, n = flat_size(in_shape), layer_spec.size
        return (n_in + 1) * n + (n * n_in + n_in if feedback else 0)

    @classmethod
    def check_spec(cls, spec, layer_spec, where, error):
        if layer_spec.size is None:
            raise error((*where, "size"), f"missing required key 'size' (dense layer {layer_spec.name!r})",
                        expected="size: <units>")

    def __init__(self, name, in_shape, spec, *, feedback, forward_optimizer, feedback_optimizer, rule, target_step,
                 feedback_noise, feedback_iterations, init, dtype, kernels, seed, down_kinds, inputs,
                 direct_from=None):
        n_in = flat_size(in_shape)
        self.n_in, self.size = n_in, spec.size
        self.activation = spec.activation
        # DDTP: direct targets from an output of this size; g maps that output's space to this layer's (linear Q)
        self.direct_from = direct_from
        init_rng, rng = (np.random.Generator(np.random.PCG64(s)) for s in seed.spawn(2))

        self.forward_params = {"W": initialize(spec.init or init, n_in, spec.size, init_rng, dtype)}
        if spec.bias:
            self.forward_params["b"] = np.zeros(spec.size, dtype)
        # sign_constrained: each input's outgoing weights (a row of W) keep one sign, the sign of the row's sum at
        # initialisation (no extra draw, so every other initial value stays as it was)
        self.weight_signs = None
        if layer_constraint(spec, "sign_constrained") is not None:
            W = self.forward_params["W"]
            self.weight_signs = np.where(W.sum(axis=1, keepdims=True) >= 0, 1, -1).astype(dtype)
            np.abs(W, out=W)
            W *= self.weight_signs
        fixed = layer_constraint(spec, "fixed_feedback")
        self.feedback_params = {}
        self.feedback_activation = None
        # g's shape: (this layer's size, its input's) in DTP; (the output's size, this layer's) for a direct target
        g_in, g_out = (spec.size, n_in) if direct_from is None else (direct_from, spec.size)
        if feedback is not None:
            self.feedback_activation = feedback.activation
            if fixed is not None and fixed.scale is not None:  # e.g. Shibuya et al.'s U(±1e-3)
                self.feedback_params["V"] = init_rng.uniform(-fixed.scale, fixed.scale, (g_in, g_out)).astype(dtype)
            else:
                self.feedback_params["V"] = initialize(feedback.init, g_in, g_out, init_rng, dtype)
            if feedback.bias and direct_from is None:  # a direct linear map needs none: the difference cancels it
                self.feedback_params["c"] = (np.zeros(n_in, dtype) if fixed is None or fixed.scale is None else
                                             init_rng.uniform(-fixed.scale, fixed.scale, n_in).astype(dtype))
        self._setup(name, in_shape, (spec.size,), forward_params=self.forward_params,
                    feedback_params=self.feedback_params, feedback=feedback, fixed=fixed is not None,
                    forward_optimizer=forward_optimizer, feedback_optimizer=feedback_optimizer, rule=rule,
                    target_step=target_step, feedback_noise=feedback_noise, feedback_iterations=feedback_iterations,
                    dtype=dtype, kernels=kernels, rng=rng, down_kinds=down_kinds, inputs=inputs, x_shape=(n_in,))
        ends = np.cumsum([flat_size(shape) for _, shape in self.inputs])  # where each input's block of x ends
        self._blocks = tuple((int(e) - flat_size(shape), int(e)) for e, (_, shape) in zip(ends, self.inputs))

    @property
    def direct_feedback(self):
        return self.direct_from is not None

    # -- the maps --------------------------------------------------------------------------------------------
    def join(self, parts):
        """x: the input flattened in C order (a view), or several inputs' stacked side by side."""
        if len(self.inputs) == 1:
            (x,) = parts.values()
            return x if x.ndim == 2 else x.reshape(len(x), self.n_in)
        return np.concatenate([parts[sender].reshape(len(parts[sender]), -1) for sender, _ in self.inputs], axis=1)

    def parts(self, value):
        """Each input's block of an array of x's shape, in that input's shape."""
        if len(self.inputs) == 1:
            return super().parts(value)
        return {sender: value[:, start:end].reshape(len(value), *shape)
                for (sender, shape), (start, end) in zip(self.inputs, self._blocks)}

    def _forward(self, x, train):
        return self.k.dense.forward(x, self.forward_params["W"], self.forward_params.get("b"), self.activation,
                                    self.rng, sample=train)

    def local_delta(self, h, target):
        return self.k.dense.local_delta(h, target)

    def pre_error(self, a, h, delta):
        return self.k.dense.pre_activation_error(a, h, delta, self.activation)

    def vjp(self, e, through="forward"):
        if through == "forward":
            return self.k.dense.input_grad(e, self.forward_params["W"])
        if through == "signs":
            return self.k.dense.input_grad(e, np.sign(self.forward_params["W"]))
        if through == "feedback":  # V of shape (n_out, n_in): e V
            return self.k.dense.feedback(e, self.feedback_params["V"], None, "linear")
        raise ValueError(through)

    def _weight_grads(self, x, e):
        dW, db = self.k.dense.weight_grads(x, e)
        return {"W": dW, "b": db} if "b" in self.forward_params else {"W": dW}

    def apply_update(self):
        super().apply_update()
        if self.weight_signs is not None:  # sign_constrained: a weight that crossed zero stops at zero
            W = self.forward_params["W"]
            W[W * self.weight_signs < 0] = 0

    def reconstruction_gradient(self):
        dV, dc, value = self.k.dense.feedback_grads(self.x, *self._f_and_g())
        return self._g_grads(dV, dc), value

    def ldrl_gradient(self):
        dV, dc, value = self.k.dense.ldrl_grads(self.x, self.h, *self._f_and_g())
        return self._g_grads(dV, dc), value

    def _f_and_g(self):
        """W, b, s, V, c, s̄, σ, the generator: what the fused feedback kernels take after their inputs."""
        return (self.forward_params["W"], self.forward_params.get("b"), self.activation, self.feedback_params["V"],
                self.feedback_params.get("c"), self.feedback_activation, self.feedback_noise, self.rng)

    def _g_grads(self, dV, dc):
        return {"V": dV, "c": dc} if "c" in self.feedback_params else {"V": dV}

    def g_pullback(self, z):
        V, c, act, k = self.feedback_params["V"], self.feedback_params.get("c"), self.feedback_activation, self.k.dense
        q, g = k.forward(z, V, c, act)

        def pullback(upstream, scale=1.0):
            dV, dc = k.weight_grads(z, k.pre_activation_error(q, g, upstream, act))
            if scale != 1.0:
                dV, dc = scale * dV, scale * dc
            return self._g_grads(dV, dc)
        return g, pullback

    def f(self, x):
        return self.k.dense.forward(x, self.forward_params["W"], self.forward_params.get("b"), self.activation)[1]

    # -- g as the rules see it -----------------------------------------------------------------------------------
    def g(self, z):
        """The feedback map g(z) = s̄(z V + c)."""
        return self.k.dense.feedback(z, self.feedback_params["V"], self.feedback_params.get("c"),
                                     self.feedback_activation)

    def g_difference(self, x, h, target):
        """x + g(target) − g(h), g evaluated at both points at once (DTP's difference correction)."""
        return self.k.dense.difference_target(x, h, target, self.feedback_params["V"],
                                              self.feedback_params.get("c"), self.feedback_activation)

    # -- for the probe, the testing module, the CLI and bench -------------------------------------------------
    def reference(self):
        return DenseReference(self)

    def describe(self):
        fo, bo = self.forward_optimizer.spec, self.feedback_optimizer
        row = super().describe()
        row.update(activation=self.activation, **{"forward optimiser": optimizer_text(fo)})
        if self.has_feedback:
            g_in = self.direct_from if self.direct_from is not None else self.size
            g_out = self.size if self.direct_from is not None else shape_text(self.in_shape)
            row["feedback"] = (f"{self.feedback_activation} {g_in}->{g_out}"
                               + (" (fixed)" if self.feedback_fixed else ""))
            row["feedback optimiser"] = optimizer_text(bo.spec)
        return row

    @property
    def has_exact_inverse(self):
        return len(self.inputs) == 1  # a square W needs one input

    def exact_inverse_overrides(self, path, n, owner):
        out = [f"{path}.size={n}"]
        if owner:
            out += [f"{path}.activation=linear", f"{path}.feedback={{activation: linear, bias: true}}"]
        return out

    def exact_inverse_parameters(self, params, rng):
        """W a scaled orthogonal matrix, V = W⁻¹, c = −b W⁻¹: g(f(h)) = h and f(g(h)) = h."""
        n = self.size
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        W = rng.uniform(0.5, 2.0) * q
        b = rng.standard_normal(n) if "b" in params else np.zeros(n)
        params["W"] = W
        if "b" in params:
            params["b"] = b
        params["V"] = np.linalg.inv(W)
        params["c"] = -b @ params["V"]

    def products(self, batch):
        """The matrix products (m, k, n) of one training step of this layer, as the kernels do them."""
        n_in, n_out, rule = self.n_in, self.size, self.rule
        out = [(batch, n_in, n_out)]  # forward
        if self.has_feedback and not self.feedback_fixed:  # feedback training: f(x̃), g(f(x̃)), dV
            out += [(batch, n_in, n_out), (batch, n_out, n_in), (n_out, batch, n_in)] * self.feedback_iterations
        out.append((n_in, batch, n_out))  # dW = xᵀ e
        if "gradient" in self.down_kinds:
            out.append((batch, n_out, n_in))  # e Wᵀ
        if "target" in self.down_kinds:
            if self.has_feedback and rule.displaced_targets:
                out.append((2 * batch, n_out, n_in))  # g([ĥ; h]) in one product
            else:
                out.append((batch, n_out, n_in))  # TP's g(ĥ), or the first target from ℒ's gradient: e Wᵀ
        return out


class DenseReference(Reference):
    """The dense maps in float64: pre(x) = x W + b, no pooling; g(h) = s̄(h V + c)."""

    def __init__(self, layer):
        self.activation = layer.activation
        self.params = {k: np.asarray(layer.k.arrays.to_host(v), np.float64) for k, v in layer.forward_params.items()}
        self.x = None if layer.x is None else np.asarray(layer.k.arrays.to_host(layer.x), np.float64)
        self.a = None if layer.a is None else np.asarray(layer.k.arrays.to_host(layer.a), np.float64)
        self.h = None if layer.h is None else np.asarray(layer.k.arrays.to_host(layer.h), np.float64)
        self.has_g = bool(layer.feedback_params) and layer.direct_from is None  # DDTP's Q inverts no f
        self._fb_act = layer.feedback_activation
        self._fb = {k: np.asarray(layer.k.arrays.to_host(v), np.float64) for k, v in layer.feedback_params.items()}
        self._in_shape = layer.in_shape

    def _flat(self, x):
        x = np.asarray(x, np.float64)
        return x.reshape(len(x), -1)

    def pre(self, x, params=None):
        p = self.params if params is None else params
        return ref.affine(self._flat(x), p["W"], p.get("b"))

    def param_vjp(self, x, e):
        x = self._flat(x)
        return {"W": x.T @ e, **({"b": e.sum(axis=0)} if "b" in self.params else {})}

    def input_vjp(self, e, params=None):
        p = self.params if params is None else params
        dx = e @ np.asarray(p["W"], np.float64).T
        return dx.reshape(len(dx), *self._in_shape)

    def g(self, h):
        return ref.activation(self._fb_act, ref.affine(h, self._fb["V"], self._fb.get("c")))

    def feedback_gain(self):
        return max(1.0, float(np.abs(self._fb["V"]).sum(axis=0).max())) if self._fb else 1.0

    def jacobians(self):
        """J_f = diag(s'(a)) Wᵀ and J_g = diag(s̄'(q)) Vᵀ, each averaged over the batch (h = s(xW + b),
        g(h) = s̄(hV + c), q = hV + c at this step's output)."""
        W, V = self.params["W"], self._fb["V"]
        q = ref.affine(self.h, V, self._fb.get("c"))
        jf = ref.derivative(self.activation, self.pre(self.x)).mean(axis=0)[:, None] * W.T
        jg = ref.derivative(self._fb_act, q).mean(axis=0)[:, None] * V.T
        return jf, jg
