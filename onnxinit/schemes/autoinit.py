"""AutoInit (Bingham & Miikkulainen): weights so every weighted layer outputs mean 0, variance 1.

For input moments (mu, nu) and fan-in n (per group), weights are drawn with
    Var(W) = 1 / (n * f * alpha^2 * (nu + mu^2))
so E[y^2] = 1; biases 0; normalization scale 1 and shift 0.

Where we differ from the reference code (deliberately, see README):
* f, the average fraction of kernel taps inside the zero-padded input, is the
  reference's "padding mixes zeros into the input" rule applied per layer.
* Drawn weights are centered across the output units of each group (each
  input/tap column sums to 0), so the layer's mean over channels is exactly 0
  for any per-channel input means, then rescaled so their mean square equals
  Var(W) exactly. Then the whole draw is rescaled so that the output's E[y^2],
  computed from these very weights and the per-channel input statistics, is
  exactly 1 rather than 1 only in expectation over draws. Orthogonal draws are
  not centered.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..distributions import SAMPLERS


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per tensor, from the seed and the tensor's name: independent of visit order."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, digest])


def draw(layout, target_var: float, distribution: str, rng: np.random.Generator) -> np.ndarray:
    """Canonical weights (out, in, taps) with mean square ``target_var``."""
    out, fan, taps = layout.canonical_shape
    groups = layout.group_count
    grouped = (groups, out // groups, fan * taps)
    w = SAMPLERS[distribution](rng, grouped)
    if distribution != "orthogonal" and grouped[1] > 1:
        w -= w.mean(axis=1, keepdims=True)
    mean_square = float(np.mean(np.square(w, dtype=np.float64)))
    if mean_square > 0:
        w *= np.float32(np.sqrt(target_var / mean_square))
    return w.reshape(out, fan, taps)


class AutoInit:
    """The scheme object the weighted and batchnorm kinds call while propagating."""

    def __init__(self, graph, seed: int = 0, distribution: str = "truncated"):
        if distribution not in SAMPLERS:
            raise ValueError(f"unknown distribution {distribution!r}")
        self.graph = graph
        self.seed = seed
        self.distribution = distribution
        self.new_values: dict[str, np.ndarray] = {}

    def _store(self, name: str, value: np.ndarray) -> None:
        self.new_values[name] = value
        self.graph.set_value(name, value)

    def draw_weighted(self, layer, ctx) -> None:
        if layer.weight in self.new_values:
            ctx.warn(f"weight {layer.weight!r} is shared by several layers; drawn once, for its first use")
            return
        second = layer.effective_second_moment
        if not np.isfinite(second) or second <= 0:
            ctx.warn(f"{layer.node.name or layer.node.op_type}: input E[x^2] = {second}; "
                     "weights drawn for E[x^2] = 1")
            second = 1.0
        target = 1.0 / (layer.layout.fan_in * second)
        c = draw(layer.layout, target, self.distribution, tensor_rng(self.seed, layer.weight))
        realized = layer.realized_second_moment(c)
        if np.isfinite(realized) and realized > 0:
            c *= np.float32(1.0 / np.sqrt(realized))
        self._store(layer.weight, layer.layout.from_canonical(c).astype(layer.dtype, copy=False))
        if layer.bias and self.graph.weight_tensor(layer.bias) is not None and layer.bias not in self.new_values:
            self._store(layer.bias, np.zeros_like(self.graph.constant_value(layer.bias)))

    def set_affine(self, node, scale: str, bias: str) -> None:
        """Normalization layers: scale 1, shift 0."""
        for name, fill in ((scale, 1.0), (bias, 0.0)):
            if name and name not in self.new_values and self.graph.weight_tensor(name) is not None:
                self._store(name, np.full_like(self.graph.constant_value(name), fill))
