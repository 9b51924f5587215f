"""Small real PyTorch models and an independent recorder of BN inputs for the
PyTorch capture tests. Imports neither TensorFlow nor Keras."""

import numpy as np
import torch
from torch import nn


def data(n=96, seed=0, shape=(3, 8, 8), classes=4):
    """Random images far from the running statistics' initial (0, 1), and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g) * 2.0 + 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus the identity."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    """stem conv-BN, ``layer1`` of two blocks, a pooled head with a BatchNorm1d."""

    def __init__(self, width=8, classes=4, head_bn=None):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width), Block(width))
        self.fc1 = nn.Linear(width, 16, bias=False)
        self.head_bn = head_bn if head_bn is not None else nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn(self.conv(x))))
        return self.fc2(torch.relu(self.head_bn(self.fc1(x.mean((2, 3))))))


RESNET_BN = ["bn", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2", "head_bn"]


class InputRecorder:
    """Our own forward pre-hooks: each training forward's BN inputs (float64
    numpy) and, after the forward, the running statistics."""

    def __init__(self, model):
        self.inputs, self.running, self._handles = [], [], []
        self.named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for name, module in self.named:
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))

    def _pre(self, name):
        def hook(module, args):
            if module.training:
                self.current[name] = args[0].detach().double().cpu().numpy()

        return hook

    def begin_step(self):
        self.current = {}

    def end_step(self):
        self.inputs.append(self.current)
        self.running.append({n: (m.running_mean.detach().double().numpy().copy(),
                                 m.running_var.detach().double().numpy().copy(),
                                 int(m.num_batches_tracked)) for n, m in self.named if m.running_mean is not None})

    def remove(self):
        for h in self._handles:
            h.remove()


def channel_axes(x):
    return (0, *range(2, x.ndim))


def train(model, x, y, batch=16, epochs=1, monitor=None, recorder=None, lr=0.05, accumulate=1, compiled=None,
          autocast=None, channels_last=False):
    """A plain SGD loop; returns the losses (floats, read after the run)."""
    forward = compiled if compiled is not None else model
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(epochs):
        for start in range(0, len(x), batch * accumulate):
            if recorder is not None:
                recorder.begin_step()
            opt.zero_grad()
            for k in range(accumulate):
                xb = x[start + k * batch:start + (k + 1) * batch]
                yb = y[start + k * batch:start + (k + 1) * batch]
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                if autocast is not None:
                    with torch.autocast("cpu", dtype=autocast):
                        loss = nn.functional.cross_entropy(forward(xb), yb)
                else:
                    loss = nn.functional.cross_entropy(forward(xb), yb)
                (loss / accumulate).backward()
            opt.step()
            losses.append(loss.detach())
            if recorder is not None:
                recorder.end_step()
            if monitor is not None:
                monitor.step(loss=loss)
    return [float(v) for v in losses]


def bessel(var, n):
    return var * n / (n - 1.0)


def assert_close(actual, expected, scale, rtol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)
