"""DTP with the difference reconstruction loss, DTP-DRL (Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020,
"A theoretical framework for target propagation"; their `DTPDRLNetwork`).

Targets are DTP's, layer to layer: ĥ_{i-1} = h_{i-1} + g_i(ĥ_i) − g_i(h_i). Only the feedback training differs.
Layer i (whose g_i maps h_i back to h_{i-1}) injects noise at its input, x̃ = h_{i-1} + ε, ε ~ N(0, σ²); the
perturbation goes forward through f_i and every layer above to the output, and comes back down as DTP targets
through the feedback maps of the layers above: r_L = f_L(…f_i(x̃)), r_{k-1} = h_{k-1} + g_k(r_k) − g_k(h_k) for
k = L … i+1. Layer i then fits g_i so that the difference correction reconstructs the noisy input:

    (1/σ²) ‖h_{i-1} + g_i(r_i) − g_i(h_i) − x̃‖² = (1/σ²) ‖g_i(r_i) − g_i(h_i) − ε‖²

(summed over units, averaged over the batch; their code averages over units as well, which Adam does not see
apart from its ε and the weight decay), over V_i, c_i only. So the whole path from layer i's input to the output
and back, not g_i alone, is trained to invert the forward path: for the top layer the round trip is empty and the
loss is the layer-local difference reconstruction loss ‖g_L(f_L(x̃)) − g_L(f_L(x)) − ε‖²/σ².

Locality: this is the paper's definition and it is not layer-local for any layer below the top one: r_i needs the
forward weights of every layer above and their feedback maps. localnet implements it as the paper does: the
engine runs the round trip (each layer above computes its own f and then its own difference target, no state
changes, no channel constraints) and hands layer i the result; the read is recorded, and `localnet audit` reports
it ("the network's round trip of noise injected here"). The layer-local variant of the same idea, which trains
each g_i with only its own f_i, is L-DRL (localnet/rules/ldrl.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import LocalnetError
from .dtp import DifferenceTargetPropagation


class DTPDifferenceReconstruction(DifferenceTargetPropagation):
    name = "dtp_drl"
    graphs = False  # its round trip runs up and down one path: a chain
    needs = frozenset({"round_trip"})
    first_targets = ("output",)  # the round trip starts at the output, which needs its own g
    feedback_service = "round_trip"  # the engine hands each layer the network's round trip of its perturbed input

    def feedback_gradient(self, layer, respond=None):
        """(1/σ²)‖g(r) − g(h) − ε‖² over g (summed over units, averaged over the batch): ε the noise at the layer's
        input, r = respond(f(x + ε)) its round trip, h this step's output."""
        if respond is None:
            raise LocalnetError(f"layer {layer.name!r}: rule {self.name!r} trains g on the network's round trip of "
                                "noise injected at this layer, which only the local engine provides")
        eps = layer.noise(layer.x.shape)
        r = respond(layer.f(layer.x + eps))
        g, pullback = layer.g_pullback(np.concatenate([r, layer.h]))  # g(r) and g(h) from one product
        rows = len(layer.h)
        diff = g[:rows] - g[rows:] - eps
        scale = 1.0 / (layer.feedback_noise ** 2 * rows)
        return pullback((2 * scale) * np.concatenate([diff, -diff])), float(np.einsum("ij,ij->", diff, diff) * scale)
