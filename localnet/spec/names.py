"""The names a spec may use for built-in families; backends and rules implement each one."""

ACTIVATIONS = ("linear", "tanh", "sigmoid", "relu", "step", "stochastic_binary")
INITS = ("xavier_normal", "xavier_uniform", "orthogonal")
LOSSES = ("softmax_cross_entropy", "mse")
RULES = ("dtp", "tp", "bp")
BACKENDS = ("auto", "numpy", "numba", "cuda")
RESERVED_NODES = ("input", "loss")
