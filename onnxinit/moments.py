"""Signal statistics carried along every tensor of the graph.

A tensor's elements are modelled as ``x = mean + s + e`` with two independent
zero-mean parts:

* ``s`` (variance ``shared``): constant across the positions (spatial or
  sequence axes) of one (sample, channel); per-channel offsets live here.
* ``e`` (variance ``var - shared``): varies from position to position.

Only ops that mix positions of one channel (pooling, later sequence ops) need
the split; a tensor without positions (a Gemm output) has ``shared == var``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Moments:
    mean: float
    var: float
    shared: float = 0.0

    @property
    def second_moment(self) -> float:
        """E[x^2] = var + mean^2."""
        return self.var + self.mean * self.mean

    @property
    def within(self) -> float:
        return max(self.var - self.shared, 0.0)

    def clamped(self) -> "Moments":
        var = max(float(self.var), 0.0)
        return Moments(float(self.mean), var, min(max(float(self.shared), 0.0), var))

    def without_positions(self) -> "Moments":
        """The same statistics for a tensor with no position axes."""
        return Moments(self.mean, self.var, self.var)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "shared": self.shared}
