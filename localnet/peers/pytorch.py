"""The PyTorch peer: the bench's steps (dense DTP and backprop, conv backprop) as one would write them in PyTorch,
on batches gathered in numpy and handed over with `torch.from_numpy` each step."""

from __future__ import annotations

import numpy as np
import torch

from . import check, time_steps


class TorchNet:
    """The spec's chain of dense layers in PyTorch, trained by DTP (the spec's settings) or by backprop.

    Written the way one would in PyTorch: forward under no_grad, each local loss through autograd, one Adam per
    pathway (the sum of independent local losses has the same gradients as each loss alone).
    """

    def __init__(self, spec, n_features, n_classes, device="cpu"):
        if not check(spec):
            raise ValueError("TorchNet is for dense chains: TorchConvBP has conv blocks")
        self.device = device
        layers = spec.network.layers
        sizes = [n_features] + [layer.size for layer in layers[:-1]] + [n_classes]
        gen = torch.Generator().manual_seed(spec.seed)
        self.acts = [self._act(layer.activation) for layer in layers]
        self.W = [torch.nn.init.xavier_normal_(torch.empty(a, b), generator=gen).to(device).requires_grad_()
                  for a, b in zip(sizes[:-1], sizes[1:])]
        self.b = [torch.zeros(b, device=device, requires_grad=True) for b in sizes[1:]]
        self.rule = r = spec.rule
        self.opt = _adam(self.W + self.b, spec.optimizer.forward)
        if r.name == "dtp":
            fb = spec.network.feedback
            self.fb_act = self._act(fb.activation)
            self.V = [None] + [torch.nn.init.xavier_normal_(torch.empty(b, a), generator=gen).to(device)
                               .requires_grad_() for a, b in zip(sizes[1:-1], sizes[2:])]
            self.c = [None] + [torch.zeros(a, device=device, requires_grad=True) for a in sizes[1:-1]]
            self.fb_opt = _adam(self.V[1:] + self.c[1:], spec.optimizer.feedback)

    @staticmethod
    def _act(name):
        return {"linear": lambda a: a, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
                "elu": torch.nn.functional.elu}[name]

    def step(self, x, y):
        x, y = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
        x, y = x.to(self.device), y.to(self.device)
        if self.rule.name == "bp":
            h = x
            for W, b, act in zip(self.W, self.b, self.acts):
                h = act(h @ W + b)
            loss = torch.nn.functional.cross_entropy(h, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return float(loss.detach())
        B, n = x.shape[0], len(self.W)
        with torch.no_grad():
            hs = [x]
            for W, b, act in zip(self.W, self.b, self.acts):
                hs.append(act(hs[-1] @ W + b))
        # targets: first target on the output, then the difference correction down the chain
        out = hs[n].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(out, y)
        (grad,) = torch.autograd.grad(loss, out)
        with torch.no_grad():
            targets = [None] * (n + 1)
            targets[n] = hs[n] - self.rule.target_step * grad
            for i in range(n - 1, 0, -1):  # layer i+1's feedback map g(h) = s̄(h V + c)
                V, c = self.V[i], self.c[i]
                targets[i] = hs[i] + self.fb_act(targets[i + 1] @ V + c) - self.fb_act(hs[i + 1] @ V + c)
        # feedback training, after the targets (they used g as it was), every layer from the second up:
        # ‖g(f(x̃)) − x̃‖², x̃ = x + N(0, σ²)
        self.fb_opt.zero_grad(set_to_none=True)
        rec = 0
        for i in range(1, n):
            xn = hs[i] + self.rule.feedback_noise * torch.randn_like(hs[i])
            with torch.no_grad():
                hn = self.acts[i](xn @ self.W[i] + self.b[i])
            r = self.fb_act(hn @ self.V[i] + self.c[i])
            rec = rec + ((r - xn) ** 2).sum() / B
        rec.backward()
        self.fb_opt.step()
        # forward training: each layer's local loss ‖f(h_{i-1}) − ĥ_i‖²
        self.opt.zero_grad(set_to_none=True)
        local = 0
        for i in range(n):
            local = local + ((self.acts[i](hs[i] @ self.W[i] + self.b[i]) - targets[i + 1]) ** 2).sum() / B
        local.backward()
        self.opt.step()
        return float(loss.detach())


class TorchConvBP:
    """Backprop on the spec's chain of conv2d, flatten and dense layers in PyTorch, as one would write it: an
    nn.Sequential of Conv2d, the activation, MaxPool2d/AvgPool2d, Flatten and Linear, xavier_normal weights, zero
    biases, Adam, mean cross-entropy."""

    def __init__(self, spec, n_features, n_classes, device="cpu"):
        from torch import nn

        from ..data import sample_shape
        check(spec)
        self.device = device
        acts = {"linear": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "elu": nn.ELU}
        self.shape = sample_shape(spec.data)
        torch.manual_seed(spec.seed)
        modules, shape = [], self.shape
        for layer in spec.network.layers:
            if layer.type == "conv2d":
                conv = nn.Conv2d(shape[0], layer.channels, layer.kernel, layer.stride, layer.padding, bias=layer.bias)
                modules += [conv, acts[layer.activation]()]
                if layer.pool and layer.pool_size > 1:
                    pool = nn.MaxPool2d if layer.pool == "max" else nn.AvgPool2d
                    modules.append(pool(layer.pool_size))
            elif layer.type == "flatten":
                modules.append(nn.Flatten())
            else:
                if len(shape) > 1:
                    modules.append(nn.Flatten())
                modules += [nn.Linear(int(np.prod(shape)), layer.size, bias=layer.bias), acts[layer.activation]()]
            with torch.no_grad():
                shape = tuple(nn.Sequential(*modules)(torch.zeros(1, *self.shape)).shape[1:])
        for m in modules:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.net = nn.Sequential(*modules).to(device)
        self.opt = _adam(self.net.parameters(), spec.optimizer.forward)

    def step(self, x, y):
        x = torch.from_numpy(np.ascontiguousarray(x, np.float32)).reshape(len(x), *self.shape).to(self.device)
        y = torch.from_numpy(np.asarray(y, np.int64)).to(self.device)
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _adam(params, o):
    """torch.optim.Adam with the spec's settings: localnet's Adam (backends/numpy/optim.py) up to rounding."""
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def time_epochs(spec, x, y, n_classes, *, epochs, warmup, batches=None, device="cpu"):
    """`time_steps` of the spec's step in PyTorch on every core localnet uses; each batch gathered in numpy."""
    from ..threads import cores
    torch.set_num_threads(cores())  # every core, whatever OMP_NUM_THREADS says (localnet/blas.py may have set it)
    net = (TorchNet if check(spec) else TorchConvBP)(spec, x.shape[1], n_classes, device)
    torch.manual_seed(spec.seed)
    out = time_steps(lambda idx: net.step(x[idx], y[idx]), len(x), spec.train.batch_size, epochs=epochs,
                     warmup=warmup, batches=batches)
    return dict(out, threads=torch.get_num_threads(), version=torch.__version__)
