"""The dense layer: owns W, b (forward), V, c (feedback, when the rule gives it one), their optimisers, its
random generator and its local rule. It sees only its own state and its inbox."""

from __future__ import annotations

import json
import math
from collections import deque

import numpy as np

from ..constraints import layer_constraint
from ..errors import LocalnetError
from ..messages import Outbox
from ..optim import Optimizer
from .base import Node
from .init import initialize


class DenseLayer(Node):
    def __init__(self, name, n_in, spec, *, feedback, forward_optimizer, feedback_optimizer, rule, target_step,
                 feedback_noise, feedback_iterations, init, dtype, kernels, seed, down_kinds, direct_from=None):
        self.name, self.n_in, self.size = name, n_in, spec.size
        self.activation = spec.activation
        self.rule, self.k = rule, kernels
        self.target_step = target_step
        self.feedback_noise, self.feedback_iterations = feedback_noise, feedback_iterations
        self.down_kinds = frozenset(down_kinds)
        # DDTP: direct targets from an output of this size; g maps that output's space to this layer's (linear Q)
        self.direct_from = direct_from
        init_rng, self.rng = (np.random.Generator(np.random.PCG64(s)) for s in seed.spawn(2))

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
        self.feedback_fixed = fixed is not None  # g is never trained
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
        # parameters live where the backend computes (the device, for cuda); everything above drew them on the host
        self.forward_params = {k: kernels.arrays.to_device(v) for k, v in self.forward_params.items()}
        self.feedback_params = {k: kernels.arrays.to_device(v) for k, v in self.feedback_params.items()}
        self.forward_optimizer = Optimizer(forward_optimizer, self.forward_params, kernels.optim)
        self.feedback_optimizer = (Optimizer(feedback_optimizer, self.feedback_params, kernels.optim)
                                   if feedback is not None else None)
        self.x = self.a = self.h = None  # this step's input, pre-activation and output
        self.target = None  # the target this step's update descends toward (see the property)
        self._grads = self._error = None  # this step's forward gradients, or the (x, e) they come from
        self.reconstruction_loss = None
        self._prepared_feedback = None  # from `prepare_feedback`: (the input it was taken on, (grads, loss))
        self.history = None  # (x, a, h) of past steps, newest last, when a delayed channel feeds this layer

    @property
    def target(self):
        """The target this step's update descends toward. Below a gradient it is h − step·dℒ/dh, formed when first
        read: backprop's own step never reads it (a pass over every layer's output per step, ~4 % of it)."""
        if self._descent is not None:
            h, delta = self._descent
            self._target, self._descent = self.k.arrays.descend(h, delta, self.target_step), None
        return self._target

    @target.setter
    def target(self, value):
        self._target, self._descent = value, None

    @property
    def has_feedback(self):
        return bool(self.feedback_params)

    def parameters(self):
        return {**self.forward_params, **self.feedback_params}

    def owned_arrays(self):
        """What no other node may see: parameters and optimiser state (for the isolation check)."""
        own = dict(self.parameters())
        for prefix, opt in self._optimizers():
            own.update({f"{prefix}.{p}.{k}": a for p, arrays in opt.state.items() for k, a in arrays.items()})
        return own

    # -- state, for checkpoints: everything a later step depends on, and nothing of any other layer -----------
    def state(self) -> dict:
        """Copies of this layer's full state as flat name -> array: `param.<W|b|V|c>`, each optimiser's step
        count and moments (`forward_optimizer.t`, `forward_optimizer.W.m`, ...) and its generator (`rng`, the
        bit generator's state as JSON text); below a delayed channel also its kept past steps
        (`history.<i>.<x|a|h>`, oldest first)."""
        out = {f"param.{k}": self.k.arrays.to_host(v) for k, v in self.parameters().items()}
        for prefix, opt in self._optimizers():
            out.update({f"{prefix}.{k}": v for k, v in opt.state_dict().items()})
        out["rng"] = np.array(json.dumps(self.rng.bit_generator.state))
        for i, step in enumerate(self.history or ()):
            out.update({f"history.{i}.{k}": v.copy() for k, v in zip("xah", step)})
        return out

    def _checked_history(self, state):
        """The kept steps in `state` as a list of (x, a, h), or LocalnetError if they do not fit this layer."""
        keys = sorted(k for k in state if k.startswith("history."))
        if not keys:
            return []
        n = len(keys) // 3
        if self.history is None or n > self.history.maxlen or \
                set(keys) != {f"history.{i}.{k}" for i in range(n) for k in "xah"}:
            raise LocalnetError(f"layer {self.name!r}: kept steps {', '.join(keys[:6])}... do not fit the layer "
                                f"(it keeps {self.history.maxlen if self.history is not None else 0})")
        steps = []
        for i in range(n):
            x, a, h = (np.array(state[f"history.{i}.{k}"]) for k in "xah")
            if (x.ndim != 2 or x.shape[1] != self.n_in or a.shape != (len(x), self.size) or h.shape != a.shape
                    or not x.dtype == a.dtype == h.dtype == self.forward_params["W"].dtype):
                raise LocalnetError(f"layer {self.name!r}: kept step {i} has shapes {x.shape}, {a.shape}, {h.shape}")
            steps.append((x, a, h))
        return steps

    def load_state(self, state: dict):
        """Restore what `state()` returned, in place; a key, shape or dtype that does not match is refused
        before anything changes."""
        history = self._checked_history(state)
        state = {k: v for k, v in state.items() if not k.startswith("history.")}
        own = {k: v for k, v in self.state().items() if not k.startswith("history.")}
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise LocalnetError(f"layer {self.name!r}: state does not match the layer"
                                + (f"; missing {', '.join(missing)}" if missing else "")
                                + (f"; unexpected {', '.join(extra)}" if extra else ""))
        params = self.parameters()
        for key, value in params.items():
            got = np.asarray(state[f"param.{key}"])
            if got.shape != value.shape or got.dtype != value.dtype:
                raise LocalnetError(f"layer {self.name!r}, {key}: {got.dtype} of shape {got.shape}, "
                                    f"expected {value.dtype} of shape {value.shape}")
        try:
            rng_state = json.loads(str(np.asarray(state["rng"])[()]))
            probe = type(self.rng.bit_generator)()
            probe.state = rng_state  # validates the layout before the layer's own generator is touched
        except (ValueError, TypeError, KeyError) as exc:
            raise LocalnetError(f"layer {self.name!r}: invalid generator state: {exc}") from None
        for prefix, opt in self._optimizers():
            try:
                opt.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")})
            except LocalnetError as exc:
                raise LocalnetError(f"layer {self.name!r}, {prefix}: {exc}") from None
        for key, value in params.items():
            self.k.arrays.assign(value, state[f"param.{key}"])
        self.rng.bit_generator.state = rng_state
        self._prepared_feedback = None
        if self.history is not None:
            self.history = deque(history, maxlen=self.history.maxlen)

    def _optimizers(self):
        yield "forward_optimizer", self.forward_optimizer
        if self.feedback_optimizer is not None:
            yield "feedback_optimizer", self.feedback_optimizer

    # -- the divergence guard --------------------------------------------------------------------------------
    PHASES = ("forward activation", "feedback parameters", "target", "forward parameters", "optimiser state")

    def looks_finite(self) -> bool:
        """A cheap per-batch check (scalars and one sum per array): False means a NaN or Inf may be present."""
        if self.reconstruction_loss is not None and not math.isfinite(self.reconstruction_loss):
            return False
        if self._descent is not None:  # h − step·dℒ/dh is finite where both of its terms are
            return all(self.k.arrays.sum_is_finite(a) for a in self._descent)
        return self._target is None or self.k.arrays.sum_is_finite(self._target)

    def nonfinite(self, phase) -> bool:
        """Whether this layer's current values of `phase` (one of PHASES) hold a NaN or an Inf."""
        if phase == "forward activation":
            arrays = [self.h]
        elif phase == "target":
            arrays = [self.target]
        elif phase == "feedback parameters":
            arrays = list(self.feedback_params.values())
        elif phase == "forward parameters":
            arrays = list(self.forward_params.values())
        elif phase == "optimiser state":
            arrays = [v for _, opt in self._optimizers() for d in opt.state.values() for v in d.values()]
        else:
            raise ValueError(phase)
        return any(a is not None and not np.isfinite(self.k.arrays.to_host(a)).all() for a in arrays)

    def forward(self, inbox, train):
        self.x = inbox["activation"]
        W, b = self.forward_params["W"], self.forward_params.get("b")
        self.a, self.h = self.k.dense.forward(self.x, W, b, self.activation, self.rng, sample=train)
        out = Outbox()
        out.send("activation", self.h, *self._forward_uses)
        return out

    @property
    def _forward_uses(self):
        return ("W", "b") if "b" in self.forward_params else ("W",)

    def train_feedback(self, respond=None):
        """Fit g to invert this layer's own f around the input it just received (DESIGN §2 step 4).

        With direct targets (DDTP) fit Q with the difference reconstruction loss instead: `respond(h)` is the
        output's response to this layer's activation h, which the engine computes by a forward pass through the
        layers above (localnet/rules/ddtp.py says why and what the audit makes of it). Under DTP-DRL `respond(h)`
        is the network's round trip of h: up to the output and back down to this layer as DTP targets."""
        if self.feedback_fixed:
            return  # fixed_feedback: g keeps its random initial weights
        if self.direct_from is not None:
            if respond is None:
                raise LocalnetError(f"layer {self.name!r}: direct feedback training needs the output's response to "
                                    "a perturbation, which only the local engine provides")
            Q, h = self.feedback_params["V"], self.h
            base = respond(h)
            for _ in range(self.feedback_iterations):
                eps = self.feedback_noise * self.rng.standard_normal(h.shape, dtype=h.dtype)
                dQ, self.reconstruction_loss = self.rule.drl_grads(respond(h + eps) - base, eps, Q,
                                                                   self.feedback_noise)
                self.feedback_optimizer.step(self.feedback_params, {"V": dQ})
            return
        loss = self.rule.feedback_loss
        if loss == "round_trip" and respond is None:
            raise LocalnetError(f"layer {self.name!r}: rule {self.rule.name!r} trains g on the network's round trip "
                                "of noise injected at this layer, which only the local engine provides")
        prepared, self._prepared_feedback = self._prepared_feedback, None
        for i in range(self.feedback_iterations):
            if i == 0 and prepared is not None and prepared[0] is self.x:
                grads, self.reconstruction_loss = prepared[1]
            else:
                grads, self.reconstruction_loss = self._feedback_gradient(respond)
            self.feedback_optimizer.step(self.feedback_params, grads)

    def _feedback_gradient(self, respond=None):
        """({V, c} gradients, reconstruction loss) of one feedback-training iteration, from g as it is now."""
        W, b = self.forward_params["W"], self.forward_params.get("b")
        V, c = self.feedback_params["V"], self.feedback_params.get("c")
        loss = self.rule.feedback_loss
        if loss == "round_trip":  # DTP-DRL: noise at the input, up to the output and back down (rules/dtpdrl.py)
            eps = self.feedback_noise * self.rng.standard_normal(self.x.shape, dtype=self.x.dtype)
            dV, dc, value = self.rule.drl_grads(self.k.dense, self.h, respond(self.respond(self.x + eps)), eps, V, c,
                                                self.feedback_activation, self.feedback_noise)
        elif loss == "ldrl":  # L-DRL: this layer's own f and g only (rules/ldrl.py)
            dV, dc, value = self.k.dense.ldrl_grads(self.x, self.h, W, b, self.activation, V, c,
                                                    self.feedback_activation, self.feedback_noise, self.rng)
        else:
            dV, dc, value = self.k.dense.feedback_grads(self.x, W, b, self.activation, V, c, self.feedback_activation,
                                                        self.feedback_noise, self.rng)
        return ({"V": dV, "c": dc} if c is not None else {"V": dV}), value

    @property
    def prepares_feedback(self):
        """Whether `prepare_feedback` may take the first feedback gradient of a step right after the forward pass:
        when it reads nothing but this layer's own input, f and g (not DDTP's or DTP-DRL's, which read the layers
        above)."""
        return (self.has_feedback and not self.feedback_fixed and self.direct_from is None
                and self.rule.feedback_loss != "round_trip")

    def prepare_feedback(self):
        """Take this step's first feedback-training gradient now, without changing g. What it reads (this step's
        input, f and g) stays as it is until `train_feedback` (the targets read g but do not change it), so it
        equals what `train_feedback` would take, with the same random draws in the same order; an engine may take
        it beside the chain of messages, and `train_feedback` uses it."""
        self._prepared_feedback = (self.x, self._feedback_gradient())

    def respond(self, x):
        """This layer's f on an input of someone else's perturbation (DDTP's feedback training): no state changes,
        deterministic (stochastic units give their mean)."""
        return self.k.dense.forward(x, self.forward_params["W"], self.forward_params.get("b"), self.activation)[1]

    def relay_down(self, r):
        """The target this layer would send down had it received `r` (DTP-DRL's round trip): its own g and this
        step's input and output, no state change."""
        V, c = self.feedback_params["V"], self.feedback_params.get("c")
        return self.rule.target_below(self.k.dense, self.x, self.h, r, V, c, self.feedback_activation)

    def keep_history(self, steps):
        """Keep this layer's input, pre-activation and output of the last `steps` steps, for delayed targets."""
        self.history = deque(maxlen=steps + 1)

    def output_of(self, lag):
        """This layer's output of `lag` ≥ 1 steps ago (before this step's backward phase), read-only."""
        from ..messages import read_only
        return read_only(self.history[-lag][2])

    def backward(self, inbox):
        """Compute this layer's update from what it received, and what it sends to the layer below."""
        k = self.k.dense
        W = self.forward_params["W"]
        received = "target" if "target" in inbox else "gradient"
        x, a, h = self.x, self.a, self.h
        lag = inbox.lag(received) if self.history is not None and hasattr(inbox, "lag") else 0
        if self.history is not None:  # below a delayed channel: learn against the state of the message's step
            self.history.append((np.array(x), a, h))
            x, a, h = self.history[max(len(self.history) - 1 - lag, 0)]
        if received == "target" and self.direct_from is not None:  # DDTP: ĥ_i = h_i + (ĥ_L − h_L) Q_i
            self.target = self.rule.direct_target(h, inbox["target"], self.feedback_params["V"])
            delta = k.local_delta(h, self.target)
        elif received == "target":
            self.target = inbox["target"]
            delta = k.local_delta(h, self.target)  # local loss ‖h − ĥ‖²
        else:
            delta = inbox["gradient"]  # trained on ℒ itself: the baseline, or the output layer in Lee's setting
            self._target, self._descent = None, (h, delta)
        e = k.pre_activation_error(a, h, delta, self.activation)
        self._grads, self._error = None, (x, e)
        # each message declares what it was computed from (its provenance, read by the locality audit)
        out = Outbox()
        if "gradient" in self.down_kinds:  # backprop: the receiver gets this layer's Wᵀ and s' (weight transport)
            out.send("gradient", k.input_grad(e, W), "Wᵀ", "s'", received, lag=lag)
        if "target" in self.down_kinds:
            if received == "target" and self.rule.direct:  # DDTP: the displacement ĥ_L − h_L, to every layer
                out.send("target", self.rule.displacement(h, self.target), "target", lag=lag)
            elif received == "target":  # the rule's target, from g's parameters alone (W is not passed)
                V, c = self.feedback_params["V"], self.feedback_params.get("c")
                out.send("target", self.rule.target_below(k, x, h, self.target, V, c, self.feedback_activation),
                         "target", *(("V", "c") if c is not None else ("V",)), lag=lag, base=x)
            else:  # the first target, one step down ℒ's gradient with respect to this layer's input
                out.send("target", self.k.arrays.descend(x, k.input_grad(e, W), self.target_step), "Wᵀ", "s'",
                         "gradient", lag=lag, base=x)
        return out

    def prepare_update(self):
        """Take this step's weight-gradient product xᵀe, which `backward` leaves out: it is not on the path of the
        message sent down, so an engine may run it beside that path. Changes no parameter."""
        if self._grads is None and self._error is not None:
            dW, db = self.k.dense.weight_grads(*self._error)
            self._grads = {"W": dW, "b": db} if "b" in self.forward_params else {"W": dW}

    @property
    def grads(self):
        """This step's forward gradients {W, b} (taken now if `prepare_update` was not called)."""
        self.prepare_update()
        return self._grads

    @grads.setter
    def grads(self, value):
        self._grads, self._error = value, None

    def apply_update(self):
        self.forward_optimizer.step(self.forward_params, self.grads)
        self.grads = None
        if self.weight_signs is not None:  # sign_constrained: a weight that crossed zero stops at zero
            W = self.forward_params["W"]
            W[W * self.weight_signs < 0] = 0
