"""Build a runnable network from a spec, and the Python API around it (the builder and simulator, in Nengo's
terms: the spec is the model, `build` makes the objects, the engine runs them)."""

from __future__ import annotations

import math

import numpy as np

from . import backends
from .constraints import check_layer_constraints
from .engines import new_engine
from .errors import LocalnetError
from .graph import INPUT, LOSS, build_graph
from .layers.base import Layer, family
from .layers.loss import LossNode
from .layers.source import InputNode
from .messages import BACKWARD_KINDS
from .rules import get_rule
from .spec import Spec, load_spec
from .spec.names import INPUT_TARGET_LOSSES


def build(spec, seed=None, *, n_features=None, n_classes=None) -> "Network":
    """A freshly initialised network for `spec` (a Spec, a path or a dict); `seed` overrides the spec's seed.

    The input's sample shape and the number of classes come from the spec's data set unless given (`n_features`:
    a sample shape, or an int for a vector of that many features).
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if n_features is None or n_classes is None:
        from .data import dataset_shape, sample_shape
        n_features = sample_shape(spec.data) if n_features is None else n_features
        n_classes = dataset_shape(spec.data)[1] if n_classes is None else n_classes
    return Network(spec, spec.seed if seed is None else seed, n_features, n_classes)


class Network:
    def __init__(self, spec: Spec, seed: int, input_shape, n_classes: int):
        """`input_shape`: the per-sample shape of the data (an int: a vector of that many features)."""
        self.spec, self.seed = spec, seed
        self.dtype = np.dtype(spec.dtype)
        self.backend = backends.get_backend(spec.backend)
        self.input_shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
        self.graph = build_graph(spec, self.input_shape, n_classes)
        self.reconstructs = spec.network.loss in INPUT_TARGET_LOSSES  # an auto-encoder: the label is the input
        self.n_features, self.n_classes = math.prod(self.input_shape), n_classes
        rule = get_rule(spec.rule.name)
        r = spec.rule
        seeds = np.random.SeedSequence(seed).spawn(len(spec.network.layers))
        nodes = {INPUT: InputNode(INPUT, self.backend.arrays),
                 LOSS: LossNode(LOSS, spec.network.loss, r.target_step, self.backend.loss,
                                _down_kinds(self.graph, LOSS), rule, self.backend.arrays,
                                [c.receiver for c in self.graph.outbound(LOSS, ("gradient", "target"))
                                 if c.receiver in (self.graph.direct_in or {})])}
        for layer_spec, layer_seed in zip(spec.network.layers, seeds):
            name = layer_spec.name
            feedback = None
            if name in self.graph.feedback_layers:
                feedback = layer_spec.feedback or spec.network.feedback
            direct_from = (self.graph.direct_in or {}).get(name)
            if direct_from is not None and feedback is not None and feedback.activation != "linear":
                raise LocalnetError(f"rule {rule.name!r}: layer {name!r}'s direct feedback map must be linear "
                                    f"(feedback activation: linear), not {feedback.activation!r}")
            noise = r.feedback_noise if feedback is None or feedback.noise is None else feedback.noise
            if rule.feedback_service is not None and feedback and noise == 0:
                raise LocalnetError(f"rule {rule.name!r} trains its feedback maps with noise: rule.feedback_noise "
                                    "must be > 0 (the difference reconstruction loss divides by σ²)")
            fb_opt = (feedback.optimizer if feedback and feedback.optimizer else spec.optimizer.feedback)
            nodes[name] = family(layer_spec.type)(
                name, self.graph.n_in[name], layer_spec, feedback=feedback,
                forward_optimizer=layer_spec.optimizer or spec.optimizer.forward, feedback_optimizer=fb_opt,
                rule=rule, target_step=r.target_step,
                feedback_noise=noise,
                feedback_iterations=(r.feedback_iterations if feedback is None or feedback.iterations is None
                                     else feedback.iterations), init=spec.network.init, dtype=self.dtype,
                kernels=self.backend, seed=layer_seed, down_kinds=_down_kinds(self.graph, name),
                inputs=self.graph.inputs[name], direct_from=direct_from)
        self.layers = {name: nodes[name] for name in self.graph.layers}
        self.loss = nodes[LOSS]
        self.engine = new_engine(self.graph, nodes)  # LocalEngine unless inside engines.using(...)
        self.backend.check_supported(spec, self.engine)  # what a backend cannot run is refused before any step
        if self.scheduled and hasattr(self.engine, "comm"):
            raise LocalnetError("learning-rate schedules need the local engine: the MPI engine's ranks keep the "
                                "spec's constant learning rates")
        check_layer_constraints(spec, self.graph)
        self.engine.bind_channels(seed)  # constraints' generators: the network's seed and each channel's identity
        self.engine.check_isolation()  # LocalityError if a node holds another or another's memory
        # diagnostics: a callable the next learning steps call as probe(network) between their backward and update
        # phases (localnet.diagnostics.Probe, non-local by design); it reads and must change nothing. None: off.
        self.probe = None

    # -- the step ------------------------------------------------------------------------------------------
    def _batch(self, x, y=None):
        """(x of shape (batch, *input_shape), labels): x may come flat, (batch, features), as the data sets keep it;
        reconstruction targets stay flat."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        shape = self.input_shape
        if x.ndim < 2 or (x.shape[1:] != shape and x.shape[1:] != (self.n_features,)):
            flat = "" if len(shape) == 1 else f" or (batch, {self.n_features})"
            raise LocalnetError(f"input batch must have shape (batch, {', '.join(map(str, shape))}){flat}, "
                                f"got {x.shape}")
        flat_x = x.reshape(len(x), self.n_features)
        x = x.reshape(len(x), *shape)
        if self.reconstructs:  # the target is the clean input: given (input noise corrupts x only) or x itself
            y = flat_x if y is None or np.ndim(y) == 1 else np.ascontiguousarray(y, dtype=self.dtype)
            if y.shape != flat_x.shape:
                raise LocalnetError(f"reconstruction targets must have the input's shape {flat_x.shape}, "
                                    f"got {y.shape}")
            return x, y
        if y is None:
            y = np.zeros(len(x), np.int64)
        y = np.ascontiguousarray(y, dtype=np.int64)
        if y.shape != (len(x),):
            raise LocalnetError(f"labels must have shape ({len(x)},), got {y.shape}")
        return x, y

    def forward(self, x, train=False) -> list:
        """Copies of the activations h_1..h_L for a batch (stochastic units give their mean unless `train`)."""
        x, y = self._batch(x)
        self.engine.forward(x, y, train)
        return [self.backend.arrays.to_host(layer.h) for layer in self.layers.values()]

    def targets(self, x, y) -> list:
        """Copies of the targets ĥ_1..ĥ_L the rule would send for this batch, with no parameter change.

        A layer that receives a gradient δ instead (backprop; the output layer in Lee et al.'s setting) reports
        the equivalent target h − η̂ δ.
        """
        with self.engine.channels_preserved():  # a look, not a step: noise and delay queues stay where they were
            self.engine.forward(*self._batch(x, y), train=True)
            self.engine.backward()
        for layer in self.layers.values():
            layer.grads = None
        return [self.backend.arrays.to_host(layer.target) for layer in self.layers.values()]

    def train_step(self, x, y) -> dict:
        """One step of the rule on a batch, in the order of Lee et al.'s Algorithm 1 (DESIGN §2): forward, targets
        down (through the feedback maps as they were before this batch), feedback training, forward update."""
        self.engine.forward(*self._batch(x, y), train=True, prepare_feedback=True)
        return self._learn(feedback=True)

    def feedback_first_step(self, x, y) -> dict:
        """Feedback training on the batch, then targets through the new feedback maps and the forward update (the
        `feedback_first` schedule)."""
        self.feedback_step(x, y)
        return self.forward_step(x, y)

    def feedback_step(self, x, y) -> dict:
        """Forward, then feedback training only (the first pass of the `alternate_epoch` schedule)."""
        self.engine.forward(*self._batch(x, y), train=True, feedback=True)
        self.engine.join()
        return self._metrics()

    def forward_step(self, x, y) -> dict:
        """Forward, targets and forward update only (the second pass of the `alternate_epoch` schedule)."""
        self.engine.forward(*self._batch(x, y), train=True)
        return self._learn()

    def _learn(self, feedback=False):
        if self.probe is None:
            self.engine.backward(start_updates=True, feedback=feedback)
        else:  # a probe looks at the gradients, and the feedback maps that made the targets, before they change
            self.engine.backward()
            self.probe(self)
            if feedback:
                self.engine.train_feedback()
        self.engine.update()
        return self._metrics()

    def _metrics(self):
        return {"loss": self.loss.value, "correct": self.loss.correct}

    def evaluate(self, x, y, batch_size=1000) -> dict:
        """Mean loss and accuracy in evaluation mode (no learning): stochastic units give their mean, or, with
        `train.eval_samples: N`, the prediction is the mean of N sampled passes' output probabilities."""
        samples = self.spec.train.eval_samples
        total_loss = correct = 0.0
        for start in range(0, len(x), batch_size):
            xb, yb = self._batch(x[start:start + batch_size], y[start:start + batch_size])
            if samples and not self.reconstructs:
                loss, right = self._sampled(xb, yb, samples)
            else:
                self.engine.forward(xb, yb, train=False)
                loss, right = self.loss.value, self.loss.correct
            total_loss += loss * len(xb)
            correct += right
        n = max(len(x), 1)
        return {"loss": total_loss / n, "accuracy": correct / n}

    def _sampled(self, x, y, samples):
        """Batch-mean loss and correct count of the mean of `samples` sampled passes' output probabilities
        (softmax of the output for the cross-entropy; the output itself for mse). The layers' generators advance,
        as in training, so a resumed run draws the same samples."""
        mean = 0.0
        for _ in range(samples):
            self.engine.forward(x, y, train=True)
            out = np.asarray(self.loss.output, dtype=np.float64)
            if self.spec.network.loss == "softmax_cross_entropy":
                out = np.exp(out - out.max(axis=1, keepdims=True))
                out /= out.sum(axis=1, keepdims=True)
            mean = mean + out / samples
        rows = np.arange(len(y))
        if self.spec.network.loss == "softmax_cross_entropy":
            loss = float(-np.log(np.maximum(mean[rows, y], np.finfo(np.float64).tiny)).mean())
        else:
            onehot = np.zeros_like(mean)
            onehot[rows, y] = 1
            loss = float(((mean - onehot) ** 2).sum(axis=1).mean())
        return loss, int((mean.argmax(axis=1) == y).sum())

    def start_epoch(self, epoch):
        """Set every layer's scheduled learning rates for `epoch` (from 1)."""
        for layer in self.layers.values():
            layer.start_epoch(epoch, self.spec.train.epochs)

    @property
    def scheduled(self):
        """Whether any optimiser of the spec has a learning-rate schedule."""
        s = self.spec
        specs = [s.optimizer.forward, s.optimizer.feedback, *(layer.optimizer for layer in s.network.layers),
                 *(f.optimizer for f in (s.network.feedback, *(layer.feedback for layer in s.network.layers)) if f)]
        return any(o is not None and o.schedule != "constant" for o in specs)

    def set_feedback_noise(self, sigma):
        """Set σ of every layer's feedback training (the per-epoch schedule of `rule.feedback_noise_decay`)."""
        if hasattr(self.engine, "comm"):
            raise LocalnetError("rule.feedback_noise_decay needs the local engine: the MPI engine's ranks keep the "
                                "spec's constant σ")
        for layer in self.layers.values():
            layer.feedback_noise = sigma

    # -- parameters ----------------------------------------------------------------------------------------
    def parameters(self) -> dict:
        """Copies of every layer's parameters: W, b and, where a feedback map exists, V, c."""
        to_host = self.backend.arrays.to_host
        return {name: {k: to_host(v) for k, v in layer.parameters().items()} for name, layer in self.layers.items()}

    def load_parameters(self, params: dict):
        """Overwrite parameters in place from a dict shaped like `parameters()`; every key must match."""
        if set(params) != set(self.layers):
            raise LocalnetError(f"parameters name layers {sorted(params)}, the network has {sorted(self.layers)}")
        for name, layer in self.layers.items():
            own = layer.parameters()
            if set(params[name]) != set(own):
                raise LocalnetError(f"layer {name!r}: parameters {sorted(params[name])}, expected {sorted(own)}")
            for key, value in params[name].items():
                value = np.asarray(value)
                if value.shape != own[key].shape or value.dtype.kind != "f":  # (a float of any width is cast)
                    raise LocalnetError(f"layer {name!r}, {key}: {value.dtype} of shape {value.shape}, expected "
                                        f"floating-point numbers of shape {own[key].shape}")
                self.backend.arrays.assign(own[key], value)

    # -- full state, for checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        """{layer: that layer's full state} (parameters, optimiser moments and step counts, generator state);
        each layer's part is its own, so each can be stored (and, later, written by its rank) separately."""
        return {name: layer.state() for name, layer in self.layers.items()}

    def load_state(self, states: dict):
        """Restore every layer from `state()`'s output; each layer checks its own part before changing."""
        if set(states) != set(self.layers):
            raise LocalnetError(f"state names layers {sorted(states)}, the network has {sorted(self.layers)}")
        for name, layer in self.layers.items():
            layer.load_state(states[name])

    def channel_state(self) -> dict:
        """The state of every channel that keeps one (constraints' generators, delay queues) as flat
        `<sender>><receiver>.<kind>.<key>` -> array; empty when no channel does. Checkpoints store it too."""
        return self.engine.channel_state()

    def load_channel_state(self, state: dict):
        self.engine.load_channel_state(state)

    def check_isolation(self):
        """LocalityError naming the layer and attribute if any node holds another node, any view of another's
        parameters or optimiser state, or memory another node may write (localnet/isolation.py)."""
        self.engine.check_isolation()

    # -- the divergence guard ----------------------------------------------------------------------------------
    def looks_finite(self) -> bool:
        """The per-batch check: the loss, each layer's reconstruction loss and one sum per target. Cheap
        (no pass over any parameter); False means something may be non-finite, and `find_nonfinite` says what."""
        if self.loss.value is not None and not math.isfinite(self.loss.value):
            return False
        return all(layer.looks_finite() for layer in self.layers.values())

    def find_nonfinite(self, phases=None):
        """(layer, phase) of the first NaN or Inf, scanning phases in the order a step computes them
        (activations up the schedule, feedback parameters, targets down the schedule, forward parameters,
        optimiser state), or None when every value is finite."""
        forward = [n for n in self.graph.forward_order if n in self.layers]
        backward = [n for n in self.graph.backward_order if n in self.layers]
        for phase in phases or Layer.PHASES:
            for name in (backward if phase == "target" else forward):
                if self.layers[name].nonfinite(phase):
                    return name, phase
        return None


def _down_kinds(graph, name):
    return {c.kind for c in graph.outbound(name, BACKWARD_KINDS)}
