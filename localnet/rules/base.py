"""The interface every rule implements."""


class Rule:
    name: str
    uses_feedback = False  # whether layers that pass targets down own a feedback map g
    direct = False  # whether targets may skip layers (DDTP: from the output layer straight to each hidden layer)
    # how layers with a layer-to-layer feedback map train it: `reconstruction` (DTP, ‖g(f(x̃)) − x̃‖²), `ldrl`
    # (Ernoult et al.'s layer-wise loss) or `round_trip` (Meulemans et al.'s DRL, from the engine's round trip)
    feedback_loss = "reconstruction"
    # whether the targets a layer sends down are displacements of the receiver's activation, x + g(ĥ) − g(h): then
    # those of several consumers combine by summing their displacements (DESIGN §8); plain TP's g(ĥ) is not
    displaced_targets = True
    # whether the rule runs on any DAG of layers (several inputs, several consumers), or on chains only
    graphs = True

    def chain_kinds(self, first_target):
        """Kinds of the backward channels that `chain` implies: (loss -> top layer, layer -> layer below)."""
        raise NotImplementedError

    def backward_kinds(self, from_loss):
        """Kinds a backward channel may have, out of the loss node or out of a layer."""
        raise NotImplementedError

    def target_below(self, layer, x, h, target):
        """The target a layer sends down, from its own input x, output h and received target, through its feedback
        map: `layer.g(z)`, and `layer.g_difference(x, h, target)` = x + g(target) − g(h) evaluated at once (the
        layer protocol, localnet/layers/base.py; a rule never reads a layer's parameters)."""
        raise NotImplementedError

    def chain_backward(self, layers):
        """The backward channels `chain` implies, as (sender, receiver, kind), or None for the default: the loss
        to the top layer, then each layer to the one below, of the kinds `chain_kinds` gives."""
        return None

    def allows_backward(self, sender, receiver, below, top):
        """Whether a backward channel sender -> receiver is allowed; `below`: the receiver sends its activation
        to the sender (the channel runs against an activation channel); `top`: the layer feeding the loss."""
        return below
