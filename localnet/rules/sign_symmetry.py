"""Sign symmetry (Liao, Leibo & Poggio 2016, "How important is weight symmetry in backpropagation?").

Feedback alignment with B_{i+1} = sign(W_{i+1})ᵀ, recomputed every step from the layer's current weights: the
error goes down through the signs of the forward weights, not their magnitudes,

    δ_i = (δ_{i+1} sign(W_{i+1})ᵀ) ⊙ s'_i(a_i).

There is no feedback map to learn, but the feedback path must know the forward weights' signs: the message a
layer sends down changes when its W's signs change, and the audit reports it as weight transport of signs.
"""

from .bp import Backprop


class SignSymmetry(Backprop):
    name = "sign_symmetry"
    invariants = frozenset({"first_order_descent", "locality", "determinism"})  # ⟨δ, f⟩ for the δ the rule makes

    def send(self, layer, step, kinds, out):
        if "gradient" in kinds:
            layer.send_down(out, "gradient", layer.vjp(step.e, through="signs"), "sign(Wᵀ)", "s'", step.kind,
                            lag=step.lag)
