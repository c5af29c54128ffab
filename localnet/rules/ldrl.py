"""L-DRL, the layer-wise difference reconstruction loss (Ernoult, Normandin, Moudgil, Spinney, Belilovsky, Rish,
Richards & Bengio 2022, "Towards scaling difference target propagation by learning backprop targets").

Targets are DTP's: ĥ_{i-1} = h_{i-1} + g_i(ĥ_i) − g_i(h_i). Feedback training is layer-local: with x = h_{i-1},
y = f_i(x) (this step's output), dx, dy ~ N(0, σ²), each layer minimises over V_i, c_i

    −2 ⟨dx, g_i(f_i(x + dx)) − g_i(y)⟩ + ‖g_i(y + dy) − g_i(y)‖²

(summed over units, averaged over the batch; one noise sample per iteration) for `rule.feedback_iterations`
steps per batch, each with fresh noise, as their code does (`get_feedback_loss`). For small σ the loss is
σ²(‖J_g‖² − 2 tr(J_g J_f)) to second order, minimised at J_g = J_fᵀ: the feedback learns the transpose of the
forward Jacobian, so the difference targets approach −η̂ times backprop's gradients. For linear f = x W, g = y V
the expectation is exactly σ²(‖V − Wᵀ‖² − ‖W‖²) (DESIGN §4). Their per-layer iteration counts and noise scales
are the layer's `feedback: {iterations, noise}`.
"""

from .dtp import DifferenceTargetPropagation


class LayerwiseDifferenceReconstruction(DifferenceTargetPropagation):
    name = "ldrl"

    def feedback_gradient(self, layer, respond=None):
        return layer.ldrl_gradient()  # the family's fused kernel of the loss above
