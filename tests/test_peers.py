"""The bench's peers (localnet/peers/) compute localnet's step: on localnet's initial weights, a few steps of each
peer leave the parameters localnet's numpy backend leaves (feedback noise off, so that both draw nothing)."""

from pathlib import Path

import numpy as np
import pytest

import localnet

SPECS = Path(__file__).resolve().parent.parent / "specs"
NARROW = [f"network.layers.h{i}.size=8" for i in range(1, 6)]  # the bench's dense nets, 8 units wide
CASES = [("fashion-mnist-bp.yaml", NARROW), ("fashion-mnist-dtp.yaml", [*NARROW, "rule.feedback_noise=0"]),
         ("fashion-mnist-lenet-bp.yaml", [])]


def localnet_and_batches(name, overrides, dtype, steps=3, batch=16):
    """localnet's net on the spec (numpy backend), and `steps` batches of random data of the spec's shape."""
    spec = localnet.load_spec(SPECS / name, ["backend=numpy", f"dtype={dtype}", *overrides])
    conv = any(layer.type == "conv2d" for layer in spec.network.layers)  # (its 1×28×28 from the data set's shape)
    net = localnet.build(spec) if conv else localnet.build(spec, n_features=12, n_classes=10)
    n_features = 784 if conv else 12
    rng = np.random.default_rng(0)
    x, y = rng.random((steps * batch, n_features)).astype(dtype), rng.integers(0, 10, steps * batch)
    return spec, net, x, y, [np.arange(k * batch, (k + 1) * batch) for k in range(steps)]


def assert_same_parameters(ours, theirs, **tolerance):
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in theirs.items()}
    for name, params in ours.items():
        for key, value in params.items():
            np.testing.assert_allclose(theirs[name][key], value, err_msg=f"{name}.{key}", **tolerance)


@pytest.fixture
def x64():
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


# (loss rel, parameters rtol, atol) per dtype; in float32 Adam's first steps are lr·g/(|g| + ε) per weight: where
# |g| is near ε their size follows g's rounding
TOLERANCES = {"float64": (1e-12, 1e-10, 1e-12), "float32": (1e-5, 1e-4, 5e-5)}


@pytest.mark.parametrize("name, overrides, dtype",
                         [(*case, "float64") for case in CASES] + [(*case, "float32") for case in CASES[:2]],
                         ids=["bp-float64", "dtp-float64", "lenet-bp-float64", "bp-float32", "dtp-float32"])
def test_the_jax_step_is_localnets_step(request, name, overrides, dtype):
    if dtype == "float64":
        request.getfixturevalue("x64")
    pytest.importorskip("jax")
    from localnet.peers.jax import JaxNet
    loss_rel, rtol, atol = TOLERANCES[dtype]
    spec, net, x, y, batches = localnet_and_batches(name, overrides, dtype)
    peer = JaxNet(spec, x.shape[1], 10, params=net.parameters())
    peer.place(x, y)
    for idx in batches:
        assert float(peer.step(idx)) == pytest.approx(net.train_step(x[idx], y[idx])["loss"], rel=loss_rel)
    assert_same_parameters(net.parameters(), peer.parameters(), rtol=rtol, atol=atol)


def test_the_jax_peer_trains_from_its_own_weights_with_noise():
    """As the bench runs it: its own xavier_normal weights, the spec's feedback noise, one key split per step."""
    pytest.importorskip("jax")
    from localnet.peers.jax import JaxNet
    spec = localnet.load_spec(SPECS / "fashion-mnist-dtp.yaml", NARROW)
    peer = JaxNet(spec, 12, 10)
    rng = np.random.default_rng(0)
    peer.place(rng.random((16, 12), dtype=np.float32), rng.integers(0, 10, 16))
    losses = [float(peer.step(np.arange(16))) for _ in range(30)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert {k: sorted(v) for k, v in peer.parameters().items()} == \
        {"h1": ["W", "b"], **{k: ["V", "W", "b", "c"] for k in ("h2", "h3", "h4", "h5", "out")}}


def test_float64_in_jax_needs_x64():
    jax = pytest.importorskip("jax")
    from localnet.peers.jax import JaxNet
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on in this process")
    spec = localnet.load_spec(SPECS / "fashion-mnist-bp.yaml", [*NARROW, "dtype=float64"])
    with pytest.raises(ValueError, match="jax_enable_x64"):
        JaxNet(spec, 12, 10)


def torch_dense_peer(spec, net):
    """The PyTorch peer with localnet's initial weights copied in."""
    import torch

    from localnet.peers.pytorch import TorchNet
    peer = TorchNet(spec, 12, 10)
    with torch.no_grad():
        for i, params in enumerate(net.parameters().values()):
            peer.W[i].copy_(torch.from_numpy(params["W"]))
            peer.b[i].copy_(torch.from_numpy(params["b"]))
            if "V" in params:
                peer.V[i].copy_(torch.from_numpy(params["V"]))
                peer.c[i].copy_(torch.from_numpy(params["c"]))
    return peer


@pytest.mark.parametrize("name, overrides", CASES[:2], ids=["bp", "dtp"])
def test_the_pytorch_dense_step_is_localnets_step(name, overrides):
    pytest.importorskip("torch")
    spec, net, x, y, batches = localnet_and_batches(name, overrides, "float32")
    peer = torch_dense_peer(spec, net)
    for idx in batches:
        assert peer.step(x[idx], y[idx]) == pytest.approx(net.train_step(x[idx], y[idx])["loss"], rel=1e-5)
    names = list(net.parameters())
    theirs = {name: {"W": peer.W[i].detach().numpy(), "b": peer.b[i].detach().numpy()} for i, name in enumerate(names)}
    if spec.rule.name == "dtp":
        for i, name in enumerate(names[1:], 1):
            theirs[name].update(V=peer.V[i].detach().numpy(), c=peer.c[i].detach().numpy())
    assert_same_parameters(net.parameters(), theirs, rtol=1e-4, atol=5e-5)


def test_the_pytorch_dense_step_trains_from_its_own_weights():
    torch = pytest.importorskip("torch")
    from localnet.peers.pytorch import TorchNet
    for name in ("fashion-mnist-dtp.yaml", "fashion-mnist-bp.yaml"):
        net = TorchNet(localnet.load_spec(SPECS / name, NARROW), 12, 10)
        rng = np.random.default_rng(0)
        x, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 10, 16)
        losses = [net.step(x, y) for _ in range(30)]
        assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert torch.get_num_threads() >= 1


def test_pytorch_conv_backprop_takes_localnets_step_on_the_same_weights():
    """With localnet's initial weights copied in, one Adam step of PyTorch's LeNet gives localnet's loss and its
    parameters after the step (float32)."""
    torch = pytest.importorskip("torch")
    from localnet.peers.pytorch import TorchConvBP
    spec = localnet.load_spec(SPECS / "fashion-mnist-lenet-bp.yaml", ["backend=numpy"])
    net = localnet.build(spec)
    peer = TorchConvBP(spec, 784, 10)
    modules = [m for m in peer.net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    params = net.parameters()
    with torch.no_grad():
        for module, name in zip(modules, ["c1", "c2", "f3", "f4", "out"]):
            W = params[name]["W"]
            module.weight.copy_(torch.from_numpy(W if W.ndim == 4 else W.T.copy()))
            module.bias.copy_(torch.from_numpy(params[name]["b"]))
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 784), dtype=np.float32), rng.integers(0, 10, 32)
    ours = net.train_step(x, y)["loss"]
    assert peer.step(x, y) == pytest.approx(ours, rel=1e-5)
    after = net.parameters()
    for module, name in zip(modules, ["c1", "c2", "f3", "f4", "out"]):
        W = after[name]["W"]
        # Adam's first step is lr·g/(|g| + ε) per weight: where |g| is near ε its size follows g's rounding, so
        # the tolerance is 5 % of one step (lr 1e-3)
        np.testing.assert_allclose(module.weight.detach().numpy(), W if W.ndim == 4 else W.T, rtol=1e-4, atol=5e-5)
