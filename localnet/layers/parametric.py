"""The machinery every layer family with parameters shares: parameters and their optimisers, the step state,
checkpoints, the divergence guard, delayed messages, the feedback-training loop and the backward phase's
template, which asks the rule what a message means and what goes down. A family (dense.py, conv.py) draws its
parameters and supplies the maps a rule may ask for (`f`, `g`, `g_difference`, `g_pullback`, `vjp`,
`local_delta`, `pre_error`, the fused feedback objectives) and `_forward`, `_weight_grads`, and, for a family
that takes several inputs, `join` and `parts`."""

from __future__ import annotations

import json
import math
from collections import deque

import numpy as np

from ..errors import LocalnetError
from ..files import parse_json
from ..messages import BACKWARD_KINDS, Outbox
from ..optim import Optimizer
from ..rules.base import Step
from .base import Layer, combined


class ParametricLayer(Layer):
    def _setup(self, name, in_shape, out_shape, *, forward_params, feedback_params, feedback, fixed,
               forward_optimizer, feedback_optimizer, rule, target_step, feedback_noise, feedback_iterations,
               dtype, kernels, rng, down_kinds, inputs, x_shape=None, a_shape=None):
        """The state every family keeps: its parameters (drawn on the host by the family, moved to the backend's
        device here), optimisers, step state. `x_shape`, `a_shape`: the per-sample shapes of the input and
        pre-activation as the layer stores them (its input's and its output's unless said)."""
        self.name, self.in_shape, self.out_shape = name, tuple(in_shape), tuple(out_shape)
        self.inputs = tuple((sender, tuple(shape)) for sender, shape in inputs)
        self._x_shape = tuple(x_shape or in_shape)
        self._a_shape = tuple(a_shape or out_shape)
        self.dtype = np.dtype(dtype)
        self.rule, self.k, self.rng = rule, kernels, rng
        self.target_step = target_step
        self.feedback_noise, self.feedback_iterations = feedback_noise, feedback_iterations
        self.down_kinds = frozenset(down_kinds)
        self._fixed = fixed  # fixed_feedback: g is never trained
        # parameters live where the backend computes (the device, for cuda); the family drew them on the host
        self.forward_params = {k: kernels.arrays.to_device(v) for k, v in forward_params.items()}
        self.feedback_params = {k: kernels.arrays.to_device(v) for k, v in feedback_params.items()}
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
    def forward_keys(self):
        return tuple(self.forward_params)

    @property
    def feedback_keys(self):
        return tuple(self.feedback_params)

    @property
    def feedback_service(self):
        return self.rule.feedback_service if self.feedback_params else None

    @property
    def feedback_fixed(self):
        """Whether g exists but never learns: the `fixed_feedback` constraint, or a rule whose feedback is fixed."""
        return self._fixed or (bool(self.feedback_params) and self.rule.feedback == "fixed")

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
            if (x.shape[1:] != self._x_shape or a.shape != (len(x), *self._a_shape) or h.shape[1:] != self.out_shape
                    or not x.dtype == a.dtype == h.dtype == self.dtype):
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
            rng_state = parse_json(str(np.asarray(state["rng"])[()]))  # (from a file)
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

    def start_epoch(self, epoch, epochs):
        for _, opt in self._optimizers():
            opt.start_epoch(epoch, epochs)

    def _optimizers(self):
        yield "forward_optimizer", self.forward_optimizer
        if self.feedback_optimizer is not None:
            yield "feedback_optimizer", self.feedback_optimizer

    # -- the divergence guard --------------------------------------------------------------------------------
    def looks_finite(self) -> bool:
        """A cheap per-batch check (scalars and one sum per array: targets, optimisers' second moments): False
        means a NaN or Inf may be present."""
        if self.reconstruction_loss is not None and not math.isfinite(self.reconstruction_loss):
            return False
        if not all(opt.looks_finite() for _, opt in self._optimizers()):
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
        self.x = self.join(inbox.each("activation"))
        self.a, self.h = self._forward(self.x, train)
        out = Outbox()
        out.send("activation", self.h, *self.forward_keys)
        return out

    def train_feedback(self, respond=None):
        """Fit g for this step with the rule's feedback objective (`rule.feedback_gradients`), for the layer's
        feedback iterations. `respond` is the engine's service the rule names (`rule.feedback_service`)."""
        if self.feedback_fixed:
            return  # g keeps its initial weights
        prepared, self._prepared_feedback = self._prepared_feedback, None
        gradients = self.rule.feedback_gradients(self, respond)  # each taken only when asked for
        for i in range(self.feedback_iterations):
            if i == 0 and prepared is not None and prepared[0] is self.x:
                grads, self.reconstruction_loss = prepared[1]
            else:
                grads, self.reconstruction_loss = next(gradients)
            self.feedback_optimizer.step(self.feedback_params, grads)

    @property
    def prepares_feedback(self):
        """Whether `prepare_feedback` may take the first feedback gradient of a step right after the forward pass:
        when it reads nothing but this layer's own input, f and g (not DDTP's or DTP-DRL's, which read the layers
        above)."""
        return self.has_feedback and not self.feedback_fixed and self.feedback_service is None

    def prepare_feedback(self):
        """Take this step's first feedback-training gradient now, without changing g. What it reads (this step's
        input, f and g) stays as it is until `train_feedback` (the targets read g but do not change it), so it
        equals what `train_feedback` would take, with the same random draws in the same order; an engine may take
        it beside the chain of messages, and `train_feedback` uses it."""
        self._prepared_feedback = (self.x, self.rule.feedback_gradient(self))

    def relay_down(self, r):
        """The target this layer would send down had it received `r` (DTP-DRL's round trip): its own g and this
        step's input and output, no state change."""
        return self.rule.target_below(self, self.x, self.h, r)

    def keep_history(self, steps):
        """Keep this layer's input, pre-activation and output of the last `steps` steps, for delayed targets."""
        self.history = deque(maxlen=steps + 1)

    def output_of(self, lag):
        """This layer's output of `lag` ≥ 1 steps ago (before this step's backward phase), read-only."""
        from ..messages import read_only
        return read_only(self.history[-lag][2])

    def backward(self, inbox):
        """Compute this layer's update from what it received, and what it sends to the layer below: the rule says
        what δ = dℒ_local/dh the message means and what goes down (localnet/rules/base.py); the update is the
        family's, through its own derivative."""
        kind = next(k for k in BACKWARD_KINDS if k in inbox)
        x, a, h = self.x, self.a, self.h
        lag = inbox.lag(kind) if self.history is not None and hasattr(inbox, "lag") else 0
        if self.history is not None:  # below a delayed channel: learn against the state of the message's step
            self.history.append((np.array(x), a, h))
            x, a, h = self.history[max(len(self.history) - 1 - lag, 0)]
        step = Step(x, a, h, kind, combined(inbox, kind, h), lag)
        delta, step.target = self.rule.error(self, step)
        if step.target is None:  # trained on ℒ itself: its target h − η̂ δ is formed only if someone reads it
            self._target, self._descent = None, (h, delta)
        else:
            self.target = step.target
        step.e = self.pre_error(a, h, delta)
        self._grads, self._error = None, (x, step.e)
        out = Outbox()  # each message declares what it was computed from (its provenance, read by the audit)
        self.rule.send(self, step, self.down_kinds, out)
        return out

    def prepare_update(self):
        """Take this step's weight gradients (xᵀe for a dense layer), which `backward` leaves out: they are not on
        the path of the message sent down, so an engine may take them beside that path. Changes no parameter."""
        if self._grads is None and self._error is not None:
            self._grads = self._weight_grads(*self._error)

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

    # -- what a rule may ask of a layer (localnet/rules/base.py) -------------------------------------------------
    @property
    def direct_feedback(self):
        """Whether g maps the output's space to this layer's (direct channels: DDTP's Q, DFA's B)."""
        return False

    def descend(self, x, delta):
        """x − η̂ δ."""
        return self.k.arrays.descend(x, delta, self.target_step)

    def noise(self, shape):
        """σ · N(0, 1) of `shape` from this layer's generator, σ its feedback noise."""
        return self.feedback_noise * self.rng.standard_normal(shape, dtype=self.dtype)

    def local_delta(self, h, target):
        """d/dh of the local loss ‖h − ĥ‖² (summed over units, averaged over the batch)."""
        raise NotImplementedError

    def pre_error(self, a, h, delta):
        """e = dℒ/da from δ = dℒ/dh, through this layer's own derivative s'(a) (and its pooling) only."""
        raise NotImplementedError

    def vjp(self, e, through="forward"):
        """e = dℒ/da back to the input through f's linear part: with the forward weights (Wᵀ: weight transport),
        their signs (`"signs"`: sign symmetry) or the feedback weights in their place (`"feedback"`, of W's shape
        transposed: feedback alignment's B)."""
        raise NotImplementedError

    def f(self, x):
        """This layer's f on an input of someone else's making (a perturbation): no state change, deterministic
        (stochastic units give their mean)."""
        raise NotImplementedError

    def g_pullback(self, z):
        """(g(z), pullback) with pullback(u, scale=1.0) = {parameter of g: scale · ∂⟨u, g(z)⟩/∂parameter}."""
        raise NotImplementedError

    def reconstruction_gradient(self):
        """(gradients of g, loss) of DTP's ‖g(f(x̃)) − x̃‖², x̃ = x + ε at this step's input, one noise draw."""
        raise NotImplementedError

    def ldrl_gradient(self):
        """(gradients of g, loss) of L-DRL's layer-wise loss (localnet/rules/ldrl.py), one noise draw."""
        raise NotImplementedError

    # -- what a family supplies besides ---------------------------------------------------------------------------
    def _forward(self, x, train):
        """(pre-activation, output) of f on x; `train`: stochastic units sample."""
        raise NotImplementedError


    def _weight_grads(self, x, e):
        """{key: gradient} of the forward parameters from the input x and the pre-activation error e."""
        raise NotImplementedError
