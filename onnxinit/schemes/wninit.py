"""Arpit, Campos & Bengio (2019): orthogonal weights, zero biases, a gain per layer role.

Every weighted layer gets W = g · Ŵ, with Ŵ orthogonal and unit-norm rows
(flattened to out × in·k·k per group: orthonormal rows when out ≤ in·k·k, else
orthonormal columns, then rows scaled to norm 1, which is what weight norm does
to an orthogonal v), and biases 0. The gain, with fans per group as PyTorch
counts them for a conv kernel out × in × k × k (fan_in = in·k·k, fan_out =
out·k·k, so g² = γ · C_in / C_out):

    forward  (default)   g = √(γ · fan_in / fan_out)
    backward             g = √γ

and γ by the layer's role (patterns.py):

    first / middle layer of a residual branch   γ = 2 if a rectifier follows it, else 1
    last layer of a branch in stage k           γ = 1 / B_k   (B_k blocks in the stage)
    projection shortcut                         γ = 1
    feed-forward (stem, head, transition, MLP)  γ = 2 if a rectifier follows it, else 1

Where we differ from the authors' code, deliberately: they give the stem γ = 1
(wide ResNet, no ReLU after it) or 2 (plain ResNet), which the rectifier rule
reproduces from the graph; they leave the classifier at PyTorch's default
initialization, we give it γ = 1 (norm-preserving, no rectifier follows);
their bottleneck-free code has no middle layers, which get the feed-forward rule.
The backward variant is their "version 13" (g = √gain); the poster reports the
forward one superior.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..distributions import orthogonal
from .autoinit import tensor_rng

DIRECTIONS = ("forward", "backward")


def gamma(layer, stage_blocks: int | None) -> Fraction:
    """γ of a layer by its role; ``stage_blocks`` is B_k for a layer in a block."""
    if layer.role == "last":
        return Fraction(1, max(stage_blocks or 1, 1))
    if layer.role == "shortcut":
        return Fraction(1)
    return Fraction(2 if layer.rectified else 1)


def fans(layout) -> tuple[int, int]:
    """(fan_in, fan_out) per group: in·k·k and out·k·k of one group's kernel."""
    out, fan, taps = layout.canonical_shape
    return fan * taps, out // layout.group_count * taps


def gain(g: Fraction, fan_in: int, fan_out: int, direction: str = "forward") -> float:
    """g = √(γ · fan_in / fan_out) forward, √γ backward."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be forward or backward, not {direction!r}")
    return math.sqrt(float(g) * fan_in / fan_out) if direction == "forward" else math.sqrt(float(g))


def unit_orthogonal(seed: int, name: str, layout) -> np.ndarray:
    """Canonical (out, in, taps) weights: per group a seeded QR of a Gaussian (orthonormal rows, or columns
    when out > in·taps), each row then scaled to unit norm."""
    out, fan, taps = layout.canonical_shape
    groups = layout.group_count
    q = orthogonal(tensor_rng(seed, name), (groups, out // groups, fan * taps)).astype(np.float64)
    q /= np.linalg.norm(q, axis=2, keepdims=True)
    return q.reshape(out, fan, taps)


def weights(layer, seed: int, g: float, name: str) -> np.ndarray:
    """The layer's new weight in its ONNX layout, float64: g times unit-row orthogonal."""
    return layer.layout.from_canonical(unit_orthogonal(seed, name, layer.layout) * g)
