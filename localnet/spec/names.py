"""The names a spec may use for built-in families; backends and rules implement each one."""

ACTIVATIONS = ("linear", "tanh", "sigmoid", "relu", "elu", "step", "stochastic_binary")
INITS = ("xavier_normal", "xavier_uniform", "orthogonal")
LOSSES = ("softmax_cross_entropy", "mse", "reconstruction")
INPUT_TARGET_LOSSES = ("reconstruction",)  # their target is the (clean) input, not a label: auto-encoders
BACKENDS = ("auto", "numpy", "numba", "cuda")
RESERVED_NODES = ("input", "loss")
