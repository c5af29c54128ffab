"""The dense layer: owns W, b (forward), V, c (feedback, when the rule gives it one), their optimisers, its
random generator and its local rule. It sees only its own state and its inbox."""

from __future__ import annotations

import json
import math

import numpy as np

from ..errors import LocalnetError
from ..optim import Optimizer
from .base import Node
from .init import initialize


class DenseLayer(Node):
    def __init__(self, name, n_in, spec, *, feedback, forward_optimizer, feedback_optimizer, rule, target_step,
                 feedback_noise, feedback_iterations, init, dtype, kernels, seed, down_kinds):
        self.name, self.n_in, self.size = name, n_in, spec.size
        self.activation = spec.activation
        self.rule, self.k = rule, kernels
        self.target_step = target_step
        self.feedback_noise, self.feedback_iterations = feedback_noise, feedback_iterations
        self.down_kinds = frozenset(down_kinds)
        init_rng, self.rng = (np.random.Generator(np.random.PCG64(s)) for s in seed.spawn(2))

        self.forward_params = {"W": initialize(spec.init or init, n_in, spec.size, init_rng, dtype)}
        if spec.bias:
            self.forward_params["b"] = np.zeros(spec.size, dtype)
        self.feedback_params = {}
        self.feedback_activation = None
        if feedback is not None:
            self.feedback_activation = feedback.activation
            self.feedback_params["V"] = initialize(feedback.init, spec.size, n_in, init_rng, dtype)
            if feedback.bias:
                self.feedback_params["c"] = np.zeros(n_in, dtype)
        self.forward_optimizer = Optimizer(forward_optimizer, self.forward_params, kernels.optim)
        self.feedback_optimizer = (Optimizer(feedback_optimizer, self.feedback_params, kernels.optim)
                                   if feedback is not None else None)
        self.x = self.a = self.h = None  # this step's input, pre-activation and output
        self.target = None  # the target this step's update descends toward
        self.grads = None
        self.reconstruction_loss = None

    @property
    def has_feedback(self):
        return bool(self.feedback_params)

    def parameters(self):
        return {**self.forward_params, **self.feedback_params}

    # -- state, for checkpoints: everything a later step depends on, and nothing of any other layer -----------
    def state(self) -> dict:
        """Copies of this layer's full state as flat name -> array: `param.<W|b|V|c>`, each optimiser's step
        count and moments (`forward_optimizer.t`, `forward_optimizer.W.m`, ...) and its generator (`rng`, the
        bit generator's state as JSON text)."""
        out = {f"param.{k}": v.copy() for k, v in self.parameters().items()}
        for prefix, opt in self._optimizers():
            out.update({f"{prefix}.{k}": v for k, v in opt.state_dict().items()})
        out["rng"] = np.array(json.dumps(self.rng.bit_generator.state))
        return out

    def load_state(self, state: dict):
        """Restore what `state()` returned, in place; a key, shape or dtype that does not match is refused
        before anything changes."""
        own = self.state()
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
            value[...] = state[f"param.{key}"]
        self.rng.bit_generator.state = rng_state

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
        return self.target is None or bool(np.isfinite(self.target.sum()))

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
        return any(a is not None and not np.isfinite(a).all() for a in arrays)

    def forward(self, inbox, train):
        self.x = inbox["activation"]
        W, b = self.forward_params["W"], self.forward_params.get("b")
        self.a, self.h = self.k.dense.forward(self.x, W, b, self.activation, self.rng, sample=train)
        return {"activation": self.h}

    def train_feedback(self):
        """Fit g to invert this layer's own f around the input it just received (DESIGN §2 step 4)."""
        W, b = self.forward_params["W"], self.forward_params.get("b")
        V, c = self.feedback_params["V"], self.feedback_params.get("c")
        for _ in range(self.feedback_iterations):
            dV, dc, self.reconstruction_loss = self.k.dense.feedback_grads(
                self.x, W, b, self.activation, V, c, self.feedback_activation, self.feedback_noise, self.rng)
            grads = {"V": dV, "c": dc} if c is not None else {"V": dV}
            self.feedback_optimizer.step(self.feedback_params, grads)

    def backward(self, inbox):
        """Compute this layer's update from what it received, and what it sends to the layer below."""
        k = self.k.dense
        W = self.forward_params["W"]
        if "target" in inbox:
            self.target = inbox["target"]
            delta = k.local_delta(self.h, self.target)  # local loss ‖h − ĥ‖²
        else:
            delta = inbox["gradient"]  # trained on ℒ itself: the baseline, or the output layer in Lee's setting
            self.target = self.h - self.target_step * delta
        e, dW, db = k.param_grads(self.x, self.a, self.h, delta, self.activation)
        self.grads = {"W": dW, "b": db} if "b" in self.forward_params else {"W": dW}
        out = {}
        if "gradient" in self.down_kinds:
            out["gradient"] = k.input_grad(e, W)
        if "target" in self.down_kinds:
            if "target" in inbox:
                V, c = self.feedback_params["V"], self.feedback_params.get("c")
                out["target"] = self.rule.target_below(k, self.x, self.h, self.target, V, c,
                                                       self.feedback_activation)
            else:  # the first target, one step down ℒ's gradient with respect to this layer's input
                out["target"] = self.x - self.target_step * k.input_grad(e, W)
        return out

    def apply_update(self):
        self.forward_optimizer.step(self.forward_params, self.grads)
        self.grads = None
