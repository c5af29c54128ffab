"""Direct random target projection (Frenkel, Lefebvre & Bol 2021, "Learning without feedback: fixed random
learning signals allow for feedforward training of deep neural networks").

No error is propagated. The output layer L learns from ℒ's gradient itself; every hidden layer i gets the label
straight from the loss node, as the sign-flipped one-hot ȳ (divided by the batch size, the scale of the
batch-mean loss's gradient, so learning rates compare with backprop's), and projects it through its own fixed
random B_i of shape (n_classes, n_i) — its feedback map g_i(z) = z B_i, never trained:

    δ_i = (−ȳ B_i) ⊙ s'_i(a_i),   ΔW_i ∝ −h_{i−1}ᵀ δ_i.

The label is the only message from above a hidden layer reads: the audit finds it local.
"""

import numpy as np

from .dfa import DirectFeedbackAlignment


class DirectRandomTargetProjection(DirectFeedbackAlignment):
    name = "drtp"
    direct_channels = "from `loss` to every layer: the label to each hidden layer, ℒ's gradient to the output"

    def check_spec(self, spec, error):
        super().check_spec(spec, error)
        if spec.network.loss != "softmax_cross_entropy":
            raise error(("network", "loss"), f"rule {self.name!r} projects one-hot class labels",
                        expected="softmax_cross_entropy", found=spec.network.loss)

    def chain_backward(self, layers):
        return [("loss", name, "gradient") for name in reversed(layers)]

    def allows_backward(self, sender, receiver, below, top):
        return sender == "loss"

    def loss_send(self, loss, kinds, out):
        out.send("gradient", loss.gradient, "∂ℒ")  # the top layer: ℒ's gradient
        h = loss.output
        label = np.asarray(loss.label)
        signal = np.zeros(h.shape, h.dtype)
        signal[np.arange(len(label)), label] = -1.0 / len(label)
        for name in loss.direct:  # each hidden layer: the label alone
            out.send("gradient", signal, "data", to=name)

    def send(self, layer, step, kinds, out):
        """Nothing goes down: no layer sends to another."""
