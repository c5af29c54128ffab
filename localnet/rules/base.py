"""The open rule API: what every rule implements, built-in or a user's plugin.

A rule decides, for one layer at a time and with that layer's own numbers only,

1. **what it learns from** — `error(layer, step)`: from the message the layer received (a target, a gradient,
   a label) the derivative δ = dℒ_local/dh its forward update descends, and the target it aims at, if any;
2. **what it sends down** — `send(layer, step, kinds, out)`: a target, a gradient, or nothing, with what each
   payload was computed from (its provenance, which the locality audit reads);
3. **how the feedback map learns** — `feedback_gradient(layer, respond)`: the gradient of the rule's feedback
   objective over g's parameters and its value (`feedback_gradients` yields one per iteration, for iterations
   that share work); `feedback = "fixed"` for a rule whose g never learns.

The layer turns δ into its weight update through its own derivative (e = δ ⊙ s'(a), then the family's parameter
gradient of e), so every rule shares the update's kernels. A rule speaks of the layer's maps, never of its
matrices; the layer protocol offers it (localnet/layers/base.py, "what a rule may ask of a layer"):

    layer.f(x)                   f on an input, no state change (stochastic units give their mean)
    layer.g(z)                   the feedback map g
    layer.g_difference(x, h, t)  x + g(t) − g(h), both g at once (DTP's difference correction)
    layer.g_pullback(z)          (g(z), pullback): pullback(dℒ/dg(z), scale=1) is {parameter: gradient} of g
    layer.vjp(e, through=...)    e = dℒ/da back to the input through f's linear part with the forward weights
                                 ("forward": Wᵀ, weight transport), their signs ("signs") or g's weights in their
                                 place ("feedback": feedback alignment's B)
    layer.local_delta(h, t)      d‖h − t‖²/dh (summed over units, averaged over the batch)
    layer.pre_error(a, h, δ)     δ back through the layer's own derivative s'(a) (and pooling): dℒ/da
    layer.descend(x, d)          x − η̂ d, one step down d
    layer.noise(shape)           σ · N(0, 1) from the layer's own generator, σ its feedback noise
    layer.reconstruction_gradient(), layer.ldrl_gradient()   the fused kernels of DTP's and L-DRL's objectives
    layer.direct_feedback        whether g maps the output's space to this layer's (direct channels)
    layer.x, layer.h, layer.target, layer.feedback_keys, layer.name

and `step` (a `Step`) carries the state the update is learned against: x, a, h, the received `kind` and
`message` (several senders' already combined, localnet/layers/base.py `combined`), the `lag` of a delayed
message, and, once `error` ran, `target` and `e`.

The rest of a rule's attributes describe the channels it needs, which the graph checks at spec load.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LocalnetError

@dataclass
class Step:
    """One layer's learning step as a rule sees it."""

    x: object  # the input, pre-activation and output the update is learned against (those of the message's step
    a: object  # when it arrived late)
    h: object
    kind: str  # what the layer received: "target", "gradient" or "label"
    message: object  # what it received of that kind, the senders' messages combined
    lag: int = 0  # how many steps late the message arrived
    target: object = None  # what the update descends toward, where the rule learns from a target
    e: object = None  # dℒ/da, the error at the pre-activation (set by the layer after `error`)


class Rule:
    name: str

    # -- the channels it needs (checked by the graph at spec load) ----------------------------------------------
    uses_feedback = False  # whether layers that pass messages down own a feedback map g
    direct = False  # whether messages may skip layers (from the output or the loss straight to each hidden layer)
    direct_channels = ""  # where they run, in words (for the error that refuses another channel)
    # whether the targets a layer sends down are displacements of the receiver's activation, x + g(ĥ) − g(h): then
    # those of several consumers combine by summing their displacements (DESIGN §8); plain TP's g(ĥ) is not
    displaced_targets = True
    # whether the rule runs on any DAG of layers (several inputs, several consumers), or on chains only
    graphs = True
    # where the first target may be placed (`rule.first_target`), checked at spec load
    first_targets = ("output", "last_hidden")
    # whether its feedback maps must be linear (`localnet.testing` draws only those)
    linear_feedback = False
    # what the layer families must offer: "direct_feedback" (g from the output's space to a hidden layer's)
    needs = frozenset()

    # -- its feedback maps ---------------------------------------------------------------------------------------
    # "trained": `feedback_gradient` trains g each step; "fixed": g keeps its initial (random) weights
    feedback = "trained"
    # the non-local service its feedback objective reads, which the engine provides: None, "response" (the
    # output's response to noise injected at the layer, DDTP) or "round_trip" (up to the output and back, DTP-DRL)
    feedback_service = None
    # DESIGN §4's invariants that hold for the rule, by the names `localnet.testing.CHECKS` gives them: the ones
    # `check_invariants` checks unless told otherwise
    invariants = frozenset({"locality", "determinism"})

    def chain_kinds(self, first_target):
        """Kinds of the backward channels that `chain` implies: (loss -> top layer, layer -> layer below)."""
        raise NotImplementedError

    def backward_kinds(self, from_loss):
        """Kinds a backward channel may have, out of the loss node or out of a layer."""
        raise NotImplementedError

    def chain_backward(self, layers):
        """The backward channels `chain` implies, as (sender, receiver, kind), or None for the default: the loss
        to the top layer, then each layer to the one below, of the kinds `chain_kinds` gives."""
        return None

    def owns_feedback(self, sends, received):
        """Whether a layer owns a feedback map, from the kinds it `sends` down and the kind it `received`: by
        default when it passes a target it received down (DTP's g inverts its f)."""
        return "target" in sends and received == "target"

    def check_spec(self, spec, error):
        """Refuse, with `error(path, message, expected=, found=)` (file:line), what the rule cannot run in `spec`;
        called at spec load, before anything is built. Default: nothing to refuse."""

    def allows_backward(self, sender, receiver, below, top):
        """Whether a backward channel sender -> receiver is allowed; `below`: the receiver sends its activation
        to the sender (the channel runs against an activation channel); `top`: the layer feeding the loss."""
        return below

    # -- a layer's step --------------------------------------------------------------------------------------------
    def error(self, layer, step):
        """(δ = dℒ_local/dh, target or None) from what the layer received. Default: a target is descended by the
        local loss ‖h − ĥ‖²; a gradient is descended as it is (the baseline, or a layer trained on ℒ itself)."""
        if step.kind == "target":
            return layer.local_delta(step.h, step.message), step.message
        if step.kind == "gradient":
            return step.message, None
        raise LocalnetError(f"layer {layer.name!r}: rule {self.name!r} does not learn from a {step.kind}")

    def send(self, layer, step, kinds, out):
        """Put what goes down into `out` (`layer.send_down` addresses each input its part), for the backward
        channels' `kinds` out of this layer. Default: backprop's gradient Wᵀe; below a target, the rule's
        `target_below`; below a gradient, the first target, one step down ℒ's gradient with respect to x."""
        if "gradient" in kinds:  # backprop: the receiver gets this layer's Wᵀ and s' (weight transport)
            layer.send_down(out, "gradient", layer.vjp(step.e), "Wᵀ", "s'", step.kind, lag=step.lag)
        if "target" in kinds:
            if step.kind == "target":  # the rule's target, from g's parameters alone (W is not passed)
                layer.send_down(out, "target", self.target_below(layer, step.x, step.h, step.target),
                                "target", *layer.feedback_keys, lag=step.lag, base=step.x)
            else:
                layer.send_down(out, "target", layer.descend(step.x, layer.vjp(step.e)),
                                "Wᵀ", "s'", "gradient", lag=step.lag, base=step.x)

    def loss_send(self, loss, kinds, out):
        """What the loss node sends down its backward channels of `kinds`: ℒ's gradient ∂ℒ/∂h_L (`loss.gradient`)
        and/or the first target ĥ_L = h_L − η̂ ∂ℒ/∂h_L (`loss.first_target()`); `loss.label` is this step's label,
        `loss.direct` the layers below the top one it reaches straight."""
        if "gradient" in kinds:
            out.send("gradient", loss.gradient, "∂ℒ")
        if "target" in kinds:
            out.send("target", loss.first_target(), "∂ℒ", base=loss.output)

    def target_below(self, layer, x, h, target):
        """The target a layer sends down, from its own input x, output h and received target, through its feedback
        map (DTP-DRL's round trip relays its noise down with it too)."""
        raise LocalnetError(f"rule {self.name!r} sends no targets down")

    def feedback_gradient(self, layer, respond=None):
        """({parameter: gradient} of g, loss) of one feedback-training iteration, from g as it is now; `respond`
        is the engine's service when `feedback_service` names one."""
        raise LocalnetError(f"rule {self.name!r} does not train feedback maps")

    def feedback_gradients(self, layer, respond=None):
        """(gradients, loss) of each feedback iteration of a step in turn, each taken when asked for, from g as the
        previous iteration's optimiser step left it. By default one `feedback_gradient` each; a rule whose
        iterations share work (DDTP: the output's response to h itself) overrides this."""
        while True:
            yield self.feedback_gradient(layer, respond)
