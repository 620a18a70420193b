"""First-order optimizers in numpy, updating a dict of weights in place."""
from __future__ import annotations

import numpy as np

from ..errors import OnnxInitError


class SGD:
    """b <- mu b + g;  w <- w - lr b  (plain SGD with mu = 0)."""

    def __init__(self, lr: float, momentum: float = 0.0):
        self.lr, self.momentum = lr, momentum
        self.buffers: dict[str, np.ndarray] = {}

    def step(self, weights: dict, grads: dict) -> None:
        for name, g in grads.items():
            if self.momentum:
                b = self.buffers[name] = self.momentum * self.buffers.get(name, 0.0) + g
            else:
                b = g
            weights[name] -= (self.lr * b).astype(weights[name].dtype)


class Adam:
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  w <- w - lr m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)."""

    def __init__(self, lr: float, betas: tuple = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.t = 0

    def step(self, weights: dict, grads: dict) -> None:
        beta1, beta2 = self.betas
        self.t += 1
        for name, g in grads.items():
            m = self.m[name] = beta1 * self.m.get(name, 0.0) + (1 - beta1) * g
            v = self.v[name] = beta2 * self.v.get(name, 0.0) + (1 - beta2) * g * g
            update = self.lr * (m / (1 - beta1 ** self.t)) / (np.sqrt(v / (1 - beta2 ** self.t)) + self.eps)
            weights[name] -= update.astype(weights[name].dtype)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, lr: float, **options):
    """The optimizer ``name`` (sgd | adam) with learning rate ``lr`` and its ``options``
    (sgd: momentum; adam: betas, eps)."""
    if name not in OPTIMIZERS:
        raise OnnxInitError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")
    if not lr > 0:
        raise OnnxInitError(f"the learning rate must be positive, not {lr}")
    return OPTIMIZERS[name](lr, **options)
