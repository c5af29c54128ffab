"""The GPU backend: the numpy reference's kernels as numba.cuda kernels, with every array kept on the device.

Parameters, optimiser state, activations, targets and gradients are device arrays for the whole run; data batches
go up once per step and only metrics (the loss, the number correct, reconstruction losses, one finiteness sum per
target) come back (`arrays.py`). Runs on a CUDA GPU, or, slowly, on the CPU under Numba's CUDA simulator
(`NUMBA_ENABLE_CUDASIM=1` set before Numba is imported), which is how the tests run it without a GPU.
"""

from numba import config, cuda

from ...errors import LocalnetError

SIMULATED = bool(config.ENABLE_CUDASIM)  # kernels run as Python threads on the CPU
if not cuda.is_available():
    raise LocalnetError("backend 'cuda': no CUDA GPU is available (numba.cuda.is_available() is False) and the CUDA "
                        "simulator is off; use another backend, or set NUMBA_ENABLE_CUDASIM=1 before Python starts "
                        "to run the kernels on the CPU (very slowly, for tests)")

from . import activations, arrays, dense, loss, optim  # noqa: E402  (only once a device is known to exist)

NAME = "cuda"
ONE_THREAD = True  # the engine runs no layer jobs in threads: launches are asynchronous already, on one stream
RULES = ("dtp", "tp", "bp")  # rules whose every step runs on these kernels (DDTP's direct maps do host arithmetic)


def check_supported(spec, engine):
    """SpecError or LocalnetError, at build time, for what does not run on the device: rules other than RULES,
    message and weight constraints (they transform arrays with numpy; fixed_feedback only stops training and is
    fine), graphs other than chains (joining inputs and summing messages is numpy work), diagnostics (the probe
    reads activations with numpy), and any engine but the in-process one."""
    from ...engines.local import LocalEngine
    from ...graph import spec_error
    if spec.rule.name not in RULES:
        raise spec_error(spec, ("rule", "name"), f"rule {spec.rule.name!r} does not run on backend 'cuda'",
                         expected=" or ".join(RULES))
    places = [(("network", "constraints", j), c) for j, c in enumerate(spec.network.constraints)]
    places += [(("network", "layers", i, "constraints", j), c)
               for i, layer in enumerate(spec.network.layers) for j, c in enumerate(layer.constraints)]
    places += [(("network", "channels", i, "constraints", j), c)
               for i, channel in enumerate(spec.network.channels or ()) for j, c in enumerate(channel.constraints)]
    for path, c in places:
        if c.type != "fixed_feedback":
            raise spec_error(spec, path, f"constraint {c.type!r} does not run on backend 'cuda'",
                             expected="no constraints but fixed_feedback, or backend numpy or numba")
    if spec.diagnostics.every:
        raise spec_error(spec, ("diagnostics", "every"), "diagnostics do not run on backend 'cuda'",
                         expected="0, or backend numpy or numba")
    if type(engine) is not LocalEngine:
        raise LocalnetError(f"backend 'cuda' runs in one process only (the local engine), not under "
                            f"{type(engine).__name__}; use backend numpy or numba with --engine mpi")
    if not engine.graph.is_chain:
        raise spec_error(spec, ("network", "layers"), "backend 'cuda' runs chains of layers only (each one input "
                         "and one consumer)", expected="a chain, or backend numpy or numba")