"""The JAX peer: the bench's steps (dense DTP and backprop, conv backprop) as one would write them in JAX.

A training step is one `jax.jit`-compiled function of (state, the data set, the batch's indices) → (state, loss):
the state is one pytree of the parameters, each pathway's Adam moments and step count, and the random key (split
inside the step), donated so that XLA updates it in place. The data set is put on the device once (`place`) and
each batch gathered inside the step, so the batch's indices are all that crosses per step. Adam is written out,
localnet's (backends/numpy/optim.py). XLA's CPU client sizes its thread pool from the environment variable
PJRT_NPROC when it starts (every core without it), so the bench sets that in the fresh process it runs this in.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import check, time_steps

ACTS = {"linear": lambda a: a, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "elu": jax.nn.elu}
FORWARD, FEEDBACK = ("W", "b"), ("V", "c")


def _cross_entropy(out, y):
    """Softmax cross-entropy averaged over the batch (localnet's loss, PyTorch's `cross_entropy`)."""
    return jnp.mean(jax.nn.logsumexp(out, axis=1) - jnp.take_along_axis(out, y[:, None], axis=1)[:, 0])


def _apply(layer, p, h):
    """Layer `layer`'s forward map f(h) with parameters p (NCHW for conv blocks, weights OIHW)."""
    if layer.type == "flatten":
        return h.reshape(len(h), -1)
    if layer.type == "conv2d":
        pad = [(layer.padding, layer.padding)] * 2
        a = lax.conv_general_dilated(h, p["W"], (layer.stride,) * 2, pad, dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = ACTS[layer.activation](a + p["b"][:, None, None] if "b" in p else a)
        if layer.pool and layer.pool_size > 1:
            k = (1, 1, layer.pool_size, layer.pool_size)
            if layer.pool == "max":
                return lax.reduce_window(h, -jnp.inf, lax.max, k, k, "VALID")
            return lax.reduce_window(h, 0.0, lax.add, k, k, "VALID") / layer.pool_size ** 2
        return h
    a = h.reshape(len(h), -1) @ p["W"]
    return ACTS[layer.activation](a + p["b"] if "b" in p else a)


def _g(act, p, h):
    """A feedback map g(h) = s̄(h V + c)."""
    a = h @ p["V"]
    return act(a + p["c"] if "c" in p else a)


def _adam_state(params, dtype):
    """Moments m, v (buffers of their own: the state is donated) and the step count t, in the parameters' dtype."""
    return {"m": jax.tree.map(jnp.zeros_like, params), "v": jax.tree.map(jnp.zeros_like, params),
            "t": jnp.zeros((), dtype)}


def _adam(params, grads, state, o):
    """localnet's Adam: weight decay added to the gradient, bias-corrected moments, eps outside the square root."""
    b1, b2 = o.betas
    t = state["t"] + 1
    if o.weight_decay:
        grads = jax.tree.map(lambda g, p: g + o.weight_decay * p, grads, params)
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    params = jax.tree.map(lambda p, m, v: p - o.lr * (m / c1) / (jnp.sqrt(v / c2) + o.eps), params, m, v)
    return params, {"m": m, "v": v, "t": t}


def _xavier(key, shape, fan_in, fan_out, dtype):
    return jax.random.normal(key, shape, dtype) * np.sqrt(2 / (fan_in + fan_out)).astype(dtype)


class JaxNet:
    """The spec's chain in JAX: dense DTP or backprop, or backprop through conv blocks, in the spec's dtype
    (float64 needs `jax_enable_x64`). `params`: initial parameters shaped like localnet's `net.parameters()`
    ({layer: {W, b, V, c}}), else xavier_normal weights and zero biases from the spec's seed, as the PyTorch peer.
    `place(x, y)` puts the data set on the device; `step(idx)` trains on the samples idx of it."""

    def __init__(self, spec, n_features, n_classes, params=None):
        from ..data import sample_shape
        dense = check(spec, dtypes=("float32", "float64"))
        self.dtype = jnp.dtype(spec.dtype)
        if self.dtype == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError("float64 in JAX needs jax_enable_x64")
        self.layers, self.rule, self.optimizer = spec.network.layers, spec.rule, spec.optimizer
        self.shape = (n_features,) if dense else tuple(sample_shape(spec.data))
        self.feedback_act = ACTS[spec.network.feedback.activation] if self.rule.name == "dtp" else None
        key = jax.random.key(spec.seed)
        if params is None:
            key, init = jax.random.split(key)
            params = self._init(init, spec, n_classes)
        forward = {name: {k: jnp.asarray(p[k], self.dtype) for k in FORWARD if k in p} for name, p in params.items()}
        state = {"forward": forward, "forward_opt": _adam_state(forward, self.dtype), "key": key}
        if self.rule.name == "dtp":
            feedback = {name: {k: jnp.asarray(p[k], self.dtype) for k in FEEDBACK if k in p}
                        for name, p in params.items() if "V" in p}
            state.update(feedback=feedback, feedback_opt=_adam_state(feedback, self.dtype))
        self.state = state
        self._step = jax.jit(self._bp if self.rule.name == "bp" else self._dtp, donate_argnums=0)
        self.x = self.y = None

    def _init(self, key, spec, n_classes):
        """{layer: {W, b[, V, c]}}: what `params` would be, drawn here."""
        out, shape = {}, self.shape
        dtp = self.rule.name == "dtp"
        for i, layer in enumerate(self.layers):
            key, kw, kv = jax.random.split(key, 3)
            p = {}
            if layer.type == "conv2d":
                k = layer.kernel
                p["W"] = _xavier(kw, (layer.channels, shape[0], k, k), shape[0] * k * k, layer.channels * k * k,
                                 self.dtype)
                n_out = layer.channels
            elif layer.type == "dense":
                n_in, n_out = int(np.prod(shape)), n_classes if i == len(self.layers) - 1 else layer.size
                p["W"] = _xavier(kw, (n_in, n_out), n_in, n_out, self.dtype)
                if dtp and i > 0:  # every layer from the second up owns a feedback map
                    p["V"] = _xavier(kv, (n_out, n_in), n_out, n_in, self.dtype)
                    if spec.network.feedback.bias:
                        p["c"] = jnp.zeros(n_in, self.dtype)
            if layer.type != "flatten" and layer.bias:
                p["b"] = jnp.zeros(n_out, self.dtype)
            probe = jax.ShapeDtypeStruct((1, *shape), self.dtype)
            shape = jax.eval_shape(lambda h: _apply(layer, p, h), probe).shape[1:]
            out[layer.name] = p
        return out

    def _forward(self, params, x):
        for layer in self.layers:
            x = _apply(layer, params[layer.name], x)
        return x

    def _bp(self, state, x_all, y_all, idx):
        x, y = x_all[idx], y_all[idx]
        loss, grads = jax.value_and_grad(lambda p: _cross_entropy(self._forward(p, x), y))(state["forward"])
        forward, opt = _adam(state["forward"], grads, state["forward_opt"], self.optimizer.forward)
        return dict(state, forward=forward, forward_opt=opt), loss

    def _dtp(self, state, x_all, y_all, idx):
        """The PyTorch peer's DTP step (DESIGN §2): forward; the first target on the output, then difference targets
        down through g as it was; feedback training on ‖g(f(x̃)) − x̃‖², x̃ = x + N(0, σ²); the local forward losses
        ‖f(h_{i-1}) − ĥ_i‖²; each loss summed over units and averaged over the batch."""
        x, y = x_all[idx], y_all[idx]
        fw, fb, g, r = state["forward"], state["feedback"], self.feedback_act, self.rule
        names = [layer.name for layer in self.layers]
        f = {layer.name: (lambda p, h, layer=layer: _apply(layer, p, h)) for layer in self.layers}
        n, B = len(names), x.shape[0]
        hs = [x]
        for name in names:
            hs.append(f[name](fw[name], hs[-1]))
        loss, grad = jax.value_and_grad(_cross_entropy)(hs[n], y)
        targets = [None] * n + [hs[n] - r.target_step * grad]
        for i in range(n - 1, 0, -1):
            p = fb[names[i]]
            targets[i] = hs[i] + _g(g, p, targets[i + 1]) - _g(g, p, hs[i + 1])
        key, *noise = jax.random.split(state["key"], n)
        noisy = {names[i]: hs[i] + r.feedback_noise * jax.random.normal(noise[i - 1], hs[i].shape, hs[i].dtype)
                 for i in range(1, n)}

        def reconstruction(fb):
            return sum(jnp.sum((_g(g, fb[k], f[k](fw[k], xn)) - xn) ** 2) for k, xn in noisy.items()) / B

        def local(fw):
            return sum(jnp.sum((f[k](fw[k], hs[i]) - targets[i + 1]) ** 2) for i, k in enumerate(names)) / B
        feedback, fb_opt = _adam(fb, jax.grad(reconstruction)(fb), state["feedback_opt"], self.optimizer.feedback)
        forward, fw_opt = _adam(fw, jax.grad(local)(fw), state["forward_opt"], self.optimizer.forward)
        return dict(forward=forward, forward_opt=fw_opt, feedback=feedback, feedback_opt=fb_opt, key=key), loss

    def place(self, x, y):
        """The data set on the device, once: samples shaped for the first layer, labels as int32."""
        self.x = jax.device_put(np.asarray(x, self.dtype).reshape(len(x), *self.shape))
        self.y = jax.device_put(np.asarray(y, np.int32))

    def step(self, idx):
        """One training step on the placed samples `idx`; the loss, as a device scalar (not waited for)."""
        self.state, loss = self._step(self.state, self.x, self.y, np.asarray(idx, np.int32))
        return loss

    def wait(self):
        jax.block_until_ready(self.state)

    def parameters(self):
        """{layer: {W, b, V, c}} as numpy arrays, shaped like localnet's `net.parameters()`."""
        out = {name: dict(p) for name, p in self.state["forward"].items()}
        for name, p in self.state.get("feedback", {}).items():
            out[name].update(p)
        return jax.tree.map(np.asarray, out)


def time_epochs(spec, x, y, n_classes, *, epochs, warmup, batches=None):
    """`time_steps` of the spec's step in JAX, the data set on the device; the first calls (compiling each batch
    shape) in the warm-up."""
    net = JaxNet(spec, x.shape[1], n_classes)
    net.place(x, y)
    out = time_steps(net.step, len(x), spec.train.batch_size, epochs=epochs, warmup=warmup, batches=batches,
                     wait=net.wait)
    threads = os.environ.get("PJRT_NPROC", "")
    return dict(out, threads=int(threads) if threads.isdigit() else os.cpu_count(), version=jax.__version__)
