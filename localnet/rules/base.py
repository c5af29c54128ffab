"""The interface every rule implements."""


class Rule:
    name: str
    uses_feedback = False  # whether layers that pass targets down own a feedback map g

    def chain_kinds(self, first_target):
        """Kinds of the backward channels that `chain` implies: (loss -> top layer, layer -> layer below)."""
        raise NotImplementedError

    def backward_kinds(self, from_loss):
        """Kinds a backward channel may have, out of the loss node or out of a layer."""
        raise NotImplementedError

    def target_below(self, k, x, h, target, V, c, fb_act):
        """The target a layer sends down, from its own input x, output h, received target and feedback map."""
        raise NotImplementedError
