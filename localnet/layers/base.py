"""The node interface and the layer protocol: what the engines, the probe, the audit, `localnet.testing`, MPI,
bench and the CLI may ask of a layer, whatever its family.

Nodes exchange messages and touch nothing but their own state. Phase methods take an inbox
(`localnet.messages.Inbox`: `inbox[kind]` is a read-only array; asking for a kind no declared channel brings raises
LocalityError, and every read is recorded for the locality audit) and return an outbox
(`localnet.messages.Outbox`, a dict of kind -> array whose `send` also records what each payload was computed
from; a plain dict works too, without provenance). The engine routes outboxes along channels; no node holds a
reference to another (checked at build time and before every checkpoint, localnet/isolation.py).

A layer **family** (dense, conv2d, flatten, ...) is one class implementing `Layer`, registered under its spec
`type` with `register_family`, plus one kernel module per backend (`backends/<backend>/<module>.py`). Nothing
outside the family's own files names it: engines call the phase methods below, the probe and the invariant checks
compute with the layer's `Reference` (float64, independent of the backends), the CLI prints `describe()`.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import LocalnetError


class Node:
    name: str

    def forward(self, inbox, train):
        return {}

    def backward(self, inbox):
        return {}


class Layer(Node):
    """The layer protocol. A layer owns its forward map f and, where the rule gives it one, its feedback map g
    (from its output space back to its input space), their parameters, their optimisers and its generator.

    Step state an engine or the probe may read after the phases ran (never another layer):
    `x`, `h` (this step's input and output, batch-first arrays of `in_shape` and `out_shape` per sample), `target`
    (what its update descends toward), `grads` (its forward gradients, keyed like `forward_keys`),
    `reconstruction_loss` (of its last feedback training, or None), `rng` (its generator).
    """

    #: the spec `type` this family is registered under
    family: str = None
    #: the phases `nonfinite` knows, in the order a step computes them (the divergence guard's report)
    PHASES = ("forward activation", "feedback parameters", "target", "forward parameters", "optimiser state")

    name: str
    #: ((sender, per-sample shape), ...): the layer's inputs in the order the spec lists them. Its input x (of
    #: `in_shape`) is what `join` makes of them: the one input as it comes, or the family's join of several
    inputs: tuple = ()
    in_shape: tuple
    out_shape: tuple
    #: what a layer keeps of its step for the probe (the MPI engine brings it to rank 0 before a probe step)
    STEP_STATE = ("x", "a", "h", "target", "grads", "reconstruction_loss")

    # -- what the spec may say, checked at load (file:line), before anything is built --------------------------
    @classmethod
    def check_spec(cls, spec, layer_spec, where, error):
        """Refuse, with `error(path, message, expected=, found=)`, what this family cannot run under `spec` (its
        rule, constraints, diagnostics, backend); `where` is the layer's key path. Default: nothing to refuse."""

    #: whether a layer of this family that passes targets down needs a feedback map g (False where f is exactly
    #: invertible, as a reshape)
    needs_feedback = True
    #: what the family offers rules beyond the protocol (`Rule.needs`): "direct_feedback" (a g from the output's
    #: space, for direct channels), "round_trip" (DTP-DRL's relay through the layers above); None for a family
    #: that only passes messages on (flatten, add)
    offers = None

    @classmethod
    def input_shape(cls, layer_spec, shapes):
        """The per-sample shape of the layer's input x, from its inputs' shapes (a list, in order); ValueError if
        the family cannot take them. Default: one input, as it comes."""
        if len(shapes) != 1:
            raise ValueError(f"a {cls.family} layer takes one input (merge several with an `add` layer)")
        return tuple(shapes[0])

    @classmethod
    def parameter_count(cls, layer_spec, in_shape, out_shape, feedback):
        """How many parameter values a layer of these shapes owns (`feedback`: whether it owns g), for the memory
        check at build time. Default: none."""
        return 0

    @classmethod
    def output_shape(cls, layer_spec, in_shape):
        """The per-sample shape of the output for an input of `in_shape` (a tuple); ValueError if it cannot take it."""
        raise NotImplementedError

    # -- the phases ------------------------------------------------------------------------------------------------
    def forward(self, inbox, train):
        """Compute h = f(x) from x = `join(inbox.each("activation"))` and send it on."""
        raise NotImplementedError

    def join(self, parts):
        """x from {sender: array}, one per input in the inputs' shapes (this step's activations, or what was sent
        down to them): the one input as it comes (a family that takes several joins them; `parts` undoes it)."""
        (value,) = parts.values()
        return value

    def parts(self, value):
        """{sender: part}: an array of x's shape (a gradient or target for x, or x itself) as the part each input
        sends and receives, in that input's shape."""
        (sender, shape), = self.inputs
        return {sender: value if value.shape[1:] == shape else value.reshape(len(value), *shape)}

    def send_down(self, out, kind, value, *uses, lag=0, base=None):
        """Send `value` (of x's shape) down as `kind`: to the one input, or each input its part; `base`: for a
        target, x itself (what each part is a displacement from)."""
        parts = self.parts(value)
        bases = self.parts(base) if base is not None else {}
        several = len(parts) > 1
        for sender, part in parts.items():
            out.send(kind, part, *uses, lag=lag, base=bases.get(sender), to=sender if several else None)

    def backward(self, inbox):
        """From the target or gradient received, form this step's update (not applied) and what goes down."""
        raise NotImplementedError

    def train_feedback(self, respond=None):
        """Train g for this step (nothing when it has none or it is fixed); `respond` is the non-local service
        `feedback_service` names, which the engine provides."""

    #: the non-local service `train_feedback` needs from the engine: None, "response" (h -> the output's response
    #: to this layer's activation h, DDTP) or "round_trip" (h -> DTP-DRL's round trip of h through the layers above)
    feedback_service = None
    prepares_feedback = False  # whether `prepare_feedback` may run beside the chain of messages
    #: whether this family's matrix products are large enough to gain from several BLAS threads each; where they
    #: are not (a conv block's one-sample products), the engine runs layer jobs in threads instead (threads.py)
    products_split = True

    def prepare_feedback(self):
        """Take the first feedback gradient of the step early (see LocalEngine); only where `prepares_feedback`."""

    def start_epoch(self, epoch, epochs):
        """Set what changes per epoch (scheduled learning rates) for `epoch` (from 1) of `epochs`."""

    def prepare_update(self):
        """Take the forward gradients now (off the path of the message down); changes no parameter."""

    def apply_update(self):
        """Apply this step's forward update."""

    def f(self, x):
        """f(x) on an input of someone else's perturbation: deterministic, no state change (DDTP, DTP-DRL)."""
        raise NotImplementedError

    def relay_down(self, r):
        """The target this layer would send down had it received `r`: no state change (DTP-DRL's round trip)."""
        raise NotImplementedError

    # -- parameters and state --------------------------------------------------------------------------------------
    forward_keys: tuple = ()  # names of the forward parameters (W, b, ...), the keys of `grads`
    feedback_keys: tuple = ()  # names of the feedback parameters (V, c, ...); empty without g

    @property
    def has_feedback(self):
        return bool(self.feedback_keys)

    feedback_fixed = False  # g exists but is never trained (fixed_feedback)

    def parameters(self) -> dict:
        """The live parameter arrays by key (forward then feedback)."""
        return {}

    def owned_arrays(self) -> dict:
        """What no other node may see: parameters and optimiser state (for the isolation check)."""
        return dict(self.parameters())

    def state(self) -> dict:
        """Copies of the full state as flat name -> array (checkpoints)."""
        raise NotImplementedError

    def load_state(self, state: dict):
        """Restore `state()`'s output in place; refuse a mismatch before changing anything."""
        raise NotImplementedError

    def looks_finite(self) -> bool:
        return True

    def nonfinite(self, phase) -> bool:
        return False

    def keep_history(self, steps):
        """Keep the state of the last `steps` steps, for delayed messages."""
        raise LocalnetError(f"layer {self.name!r} ({self.family}) cannot sit below a delayed channel")

    def output_of(self, lag):
        raise NotImplementedError

    # -- for the probe, the testing module, the CLI and bench ------------------------------------------------------
    def reference(self) -> "Reference":
        """This layer's maps in float64 with its current parameters and this step's state, computed independently
        of the backends."""
        raise NotImplementedError

    #: whether the family can be made exactly invertible (`check_exact_inverse_dtp_equals_tp`'s variant)
    has_exact_inverse = False

    def exact_inverse_overrides(self, path, n, owner):
        """`--set` overrides (under key path `path`) that make this layer square with n units and, if it owns g
        (`owner`), linear with a linear g, so that `exact_inverse_parameters` can make g invert f exactly."""
        raise NotImplementedError

    def exact_inverse_parameters(self, params, rng):
        """Fill `params` (this layer's {key: array}, changed in place) with random values for which g = f⁻¹."""
        raise NotImplementedError

    def describe(self) -> dict:
        """One row of `localnet show`: {type, input, output, activation, feedback, optimisers}."""
        given = (" + ".join(shape_text(shape) for _, shape in self.inputs) if len(self.inputs) > 1
                 else shape_text(self.in_shape))
        return {"type": self.family, "input": given, "output": shape_text(self.out_shape),
                "activation": "", "feedback": "", "forward optimiser": "", "feedback optimiser": ""}

    def products(self, batch):
        """[(m, k, n, what)]: the matrix products one training step of this layer takes (bench's floor), or None
        where the family's work is not products (bench then leaves its floor out)."""
        return None


class Reference:
    """A layer's maps in float64, for the probe and `localnet.testing` (DESIGN §7: checked against independent
    computations). A forward map is `h = pool(s(pre(x, p)))`: `pre` linear in the parameters `p` for a fixed
    input, `s` the element-wise activation named `activation`, `pool` (identity for most families) fixed by this
    step's forward pass.
    """

    activation: str = "linear"
    params: dict  # forward parameters, float64 copies
    x: np.ndarray  # this step's input (float64)
    a: np.ndarray  # this step's pre-activation as the layer computed it (float64)

    def pre(self, x, params=None):
        raise NotImplementedError

    def pool(self, s):
        return s

    def pool_vjp(self, dh):
        """The adjoint of `pool` at this step."""
        return dh

    def param_vjp(self, x, e) -> dict:
        """{key: ∂⟨e, pre(x, p)⟩/∂p}: the forward gradients from the pre-activation error e (linear in x and e)."""
        raise NotImplementedError

    def input_vjp(self, e, params=None):
        """∂⟨e, pre(x, p)⟩/∂x."""
        raise NotImplementedError

    def f(self, x, params=None):
        from ..diagnostics.reference import activation
        return self.pool(activation(self.activation, self.pre(x, params)))

    def vjp(self, dh):
        """(forward gradients, ∂/∂x) of ⟨dh, h⟩ through this step's f, at its stored input and pre-activation."""
        from ..diagnostics.reference import derivative
        e = self.pool_vjp(dh) * derivative(self.activation, self.a)
        return self.param_vjp(self.x, e), self.input_vjp(e)

    # the feedback map g, where the layer owns one that inverts f (None otherwise)
    has_g = False

    def g(self, h):
        raise NotImplementedError

    def feedback_gain(self) -> float:
        """A bound on how much g can amplify a difference (max(1, its linear part's ∞→∞ norm))."""
        return 1.0

    def jacobians(self):
        """(J_f, J_g) averaged over the batch, as dense matrices in the row convention, or None where they are
        too large to form (the FW-DTP eigenvalue diagnostics are then null)."""
        return None


def combined(inbox, kind, h):
    """The one target or gradient a layer learns from, of what its consumers sent (DESIGN §8): a single message as
    it came; from several, gradients sum (backprop's chain rule) and targets sum their displacements from the
    layer's own activation h, ĥ = h + Σ_k (ĥ_k − h)."""
    if inbox.count(kind) == 1:
        return inbox[kind]
    parts = list(inbox.each(kind).values())
    if kind == "gradient":
        return sum(parts[1:], parts[0])
    return h + sum((p - h for p in parts[1:]), parts[0] - h)


def optimizer_text(spec):
    """An optimiser spec for `localnet show`: type, learning rate and schedule."""
    text = f"{spec.type} {spec.lr:.3g}"
    if spec.schedule != "constant":
        text += f" {spec.schedule}" + (f"/{spec.schedule_epochs}" if spec.schedule_epochs else "")
    return text


def shape_text(shape):
    return "x".join(str(d) for d in shape)


def flat_size(shape):
    return math.prod(shape)


# -- the registry of families -----------------------------------------------------------------------------------
FAMILIES: dict = {}


def register_family(cls):
    """Make a Layer subclass available to specs as `type: <cls.family>` (a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)) or not isinstance(cls.family, str):
        raise TypeError(f"register_family takes a Layer subclass with a `family` name, not {cls!r}")
    FAMILIES[cls.family] = cls
    return cls


def family(name):
    """The Layer class registered as `name`."""
    from . import builtin  # noqa: F401  the built-in families register themselves on import
    return FAMILIES[name]


def family_names():
    from . import builtin  # noqa: F401
    return tuple(FAMILIES)
