"""The built-in rules' numbers on small networks: every parameter after a few training steps, one case per rule and
network kind. `tests/data/rule_numbers.npz` holds them as recorded before the rules moved onto the open rule API
(localnet/rules/base.py); test_rules.py checks that each case still gives them bit for bit on the machine class
they were recorded on, and to 1e-12 elsewhere (a BLAS may sum in another order on another CPU).

Re-record (only on purpose, saying why in the commit): `python tests/rule_numbers.py`."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from localnet.network import Network
from localnet.spec import load_spec

FILE = Path(__file__).parent / "data" / "rule_numbers.npz"
N_IN, N_OUT, IMAGE = 6, 3, (1, 6, 6)

DENSE = [{"name": "h1", "size": 5}, {"name": "h2", "size": 4}, {"name": "out", "size": N_OUT, "activation": "linear"}]
CONV = [{"name": "c1", "type": "conv2d", "channels": 2, "kernel": 3, "padding": 1, "pool": "max", "pool_size": 2},
        {"name": "c2", "type": "conv2d", "channels": 3, "kernel": 2, "pool": "avg", "pool_size": 1},
        {"name": "f", "type": "flatten"}, {"name": "out", "size": N_OUT, "activation": "linear"}]
SKIP = [{"name": "h1", "size": 4}, {"name": "h2", "size": 4}, {"name": "r", "type": "add", "inputs": ["h2", "h1"]},
        {"name": "cat", "size": 5, "inputs": ["r", "input"]}, {"name": "out", "size": N_OUT, "activation": "linear"}]


def _spec(layers, rule, backend="numpy", **changes):
    spec = {"name": "numbers", "seed": 3, "dtype": "float64", "backend": backend, "data": {"name": "digits"},
            "network": {"layers": layers, "feedback": {"activation": "tanh"}},
            "rule": {"name": rule, "target_step": 0.3, "feedback_noise": 0.2, "feedback_iterations": 2},
            "optimizer": {"forward": {"type": "adam", "lr": 0.01}, "feedback": {"type": "sgd", "lr": 0.05}}}
    for path, value in changes.items():
        *head, last = path.split("__")
        node = spec
        for key in head:
            node = node[key]
        node[last] = value
    return spec


# name -> (spec, per-sample input shape, steps kind)
CASES = {
    "dtp": (_spec(DENSE, "dtp"), (N_IN,)),
    "dtp-last-hidden": (_spec(DENSE, "dtp", rule__first_target="last_hidden"), (N_IN,)),
    "tp": (_spec(DENSE, "tp"), (N_IN,)),
    "bp": (_spec(DENSE, "bp"), (N_IN,)),
    "ddtp_linear": (_spec(DENSE, "ddtp_linear", network__feedback={"activation": "linear", "bias": False}),
                    (N_IN,)),
    "dtp_drl": (_spec(DENSE, "dtp_drl"), (N_IN,)),
    "ldrl": (_spec(DENSE, "ldrl"), (N_IN,)),
    "dtp-fixed-feedback": (_spec([DENSE[0], {**DENSE[1], "constraints": [{"type": "fixed_feedback"}]}, DENSE[2]],
                                 "dtp"), (N_IN,)),
    "dtp-delay": (_spec(DENSE, "dtp", network__constraints=[{"kind": "target", "type": "delay", "steps": 1}]),
                  (N_IN,)),
    "ldrl-feedback-first": (_spec(DENSE, "ldrl", rule__schedule="feedback_first"), (N_IN,)),
    "conv-dtp": (_spec(CONV, "dtp"), IMAGE),
    "conv-tp": (_spec(CONV, "tp"), IMAGE),
    "conv-bp": (_spec(CONV, "bp"), IMAGE),
    "conv-ldrl": (_spec(CONV, "ldrl"), IMAGE),
    "skip-dtp": (_spec(SKIP, "dtp"), (N_IN,)),
    "skip-bp": (_spec(SKIP, "bp"), (N_IN,)),
    "skip-ldrl": (_spec(SKIP, "ldrl"), (N_IN,)),
    "numba-dtp": (_spec(DENSE, "dtp", backend="numba"), (N_IN,)),
    "numba-conv-ldrl": (_spec(CONV, "ldrl", backend="numba"), IMAGE),
}
STEPS = 3


def machine():
    """What decides whether sums come out in the same order: the CPU model, the numpy build's BLAS and the kernels
    that BLAS picked for this CPU (OpenBLAS's differ between, say, Intel's and AMD's, at the same version)."""
    from threadpoolctl import threadpool_info
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    kernels = sorted({lib["architecture"] for lib in threadpool_info()  # (MKL, where loaded, names none)
                      if lib.get("user_api") == "blas" and lib.get("architecture")})
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return (f"{platform.machine()} {model or platform.processor()} {blas.get('name')} {blas.get('version')} "
            f"({', '.join(kernels)}) numpy {np.__version__}")


def numbers(name):
    """{layer.param: array} after STEPS training steps of case `name` (and the last step's feedback losses)."""
    spec, shape = CASES[name]
    net = Network(load_spec(spec), 0, shape, N_OUT)
    rng = np.random.default_rng(11)
    for _ in range(STEPS):
        x, y = rng.standard_normal((7, *shape)), rng.integers(0, N_OUT, 7)
        if spec["rule"].get("schedule") == "feedback_first":
            net.feedback_first_step(x, y)
        else:
            net.train_step(x, y)
    out = {f"{layer}.{key}": np.asarray(value) for layer, params in net.parameters().items()
           for key, value in params.items()}
    out.update({f"{name}.reconstruction_loss": np.float64(layer.reconstruction_loss)
                for name, layer in net.layers.items() if getattr(layer, "reconstruction_loss", None) is not None})
    return out


def main():
    FILE.parent.mkdir(exist_ok=True)
    arrays = {f"{case}/{key}": value for case in CASES for key, value in numbers(case).items()}
    np.savez_compressed(FILE, machine=np.array(machine()), **arrays)
    print(f"{FILE}: {len(arrays)} arrays from {len(CASES)} cases on {machine()}")


if __name__ == "__main__":
    main()
