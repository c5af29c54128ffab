"""The dense layer: owns W, b (forward), V, c (feedback, when the rule gives it one), their optimisers, its
random generator and its local rule. It sees only its own state and its inbox."""

from __future__ import annotations

import numpy as np

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
