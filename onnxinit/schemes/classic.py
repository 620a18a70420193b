"""The classic data-free schemes, with torch.nn.init's fan conventions and gain table.

Fans are computed on each weight in PyTorch's layout (conv kernels as stored,
dense weights as (out, in)): fan_in = size(1)·k, fan_out = size(0)·k with k the
kernel's receptive field (layers.StaticLayer.torch_fans).

    he-normal       W ~ N(0, σ²),  σ = gain / √fan_in            (gain √2: ReLU)
    he-uniform      W ~ U(−b, b),  b = gain · √(3 / fan_in)
    glorot-normal   σ = gain · √(2 / (fan_in + fan_out))          (gain 1)
    glorot-uniform  b = gain · √(6 / (fan_in + fan_out))
    lecun-normal    σ = gain / √fan_in                            (gain 1)
    lecun-uniform   b = gain · √(3 / fan_in)
    orthogonal      W (flattened to size(0) × rest) with orthonormal rows or columns, times gain
    torch-default   what PyTorch's layers do at construction: kaiming_uniform(a=√5) on the
                    weight, i.e. b = 1/√fan_in, and the bias ~ U(−1/√fan_in, 1/√fan_in)

Biases are zero except for torch-default; normalization layers get scale 1, shift 0 and
running statistics 0 / 1; embedding tables N(0, 1) (nn.Embedding's construction).

``gain="scheme"`` uses each scheme's own gain (above); ``gain="auto"`` takes it per layer
from the nonlinearity that follows (torch.nn.init.calculate_gain's table, GAINS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..distributions import orthogonal
from .autoinit import tensor_rng

SCHEMES = ("he-normal", "he-uniform", "glorot-normal", "glorot-uniform", "lecun-normal", "lecun-uniform",
           "orthogonal", "torch-default")
SCHEME_GAIN = {"he": math.sqrt(2.0), "glorot": 1.0, "lecun": 1.0, "orthogonal": 1.0}


def _leaky_relu_gain(attrs: dict) -> float:
    slope = float(attrs.get("alpha", 0.01))
    return math.sqrt(2.0 / (1.0 + slope * slope))


# torch.nn.init.calculate_gain by the ONNX op that computes the nonlinearity; others: 1 (linear).
GAINS = {
    "Relu": lambda attrs: math.sqrt(2.0),
    "LeakyRelu": _leaky_relu_gain,
    "Tanh": lambda attrs: 5.0 / 3.0,
    "Sigmoid": lambda attrs: 1.0,
    "Selu": lambda attrs: 0.75,
}


def nonlinearity_gain(nonlinearity: tuple) -> float:
    op_type, attrs = nonlinearity
    rule = GAINS.get(op_type)
    return rule(attrs) if rule else 1.0


@dataclass
class Draw:
    """What one tensor got: for the report and the tests."""
    tensor: str
    role: str               # weight | bias | scale | shift | running_mean | running_var | embedding
    layer: str
    distribution: str       # normal | uniform | orthogonal | constant
    std: float              # the formula's standard deviation (constant: the value)
    fan_in: int = 0
    fan_out: int = 0
    gain: float = 1.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def weight_draw(scheme: str, fan_in: int, fan_out: int, gain: float) -> tuple[str, float]:
    """(distribution, standard deviation) of a weight under ``scheme``."""
    family, _, shape = scheme.partition("-")
    if scheme == "torch-default":
        return "uniform", 1.0 / math.sqrt(3.0 * max(fan_in, 1))
    if scheme == "orthogonal":
        return "orthogonal", gain
    if family in ("he", "lecun"):
        std = gain / math.sqrt(max(fan_in, 1))
    elif family == "glorot":
        std = gain * math.sqrt(2.0 / max(fan_in + fan_out, 1))
    else:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return shape, std


def sample(distribution: str, std: float, shape, rng: np.random.Generator) -> np.ndarray:
    """float64 samples of the given standard deviation (uniform: bound √3·std)."""
    if distribution == "normal":
        return rng.standard_normal(shape) * std
    if distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return rng.uniform(-bound, bound, size=shape)
    raise ValueError(distribution)


def orthogonal_weight(layer, gain: float, rng: np.random.Generator) -> np.ndarray:
    """torch.nn.init.orthogonal_: the weight in PyTorch's layout flattened to (size(0), rest),
    rows (or columns when taller) orthonormal, times gain; returned in the ONNX layout."""
    layout = layer.layout
    if layout.kind in ("conv", "conv_transpose"):
        shape = layout.shape
        rows = shape[0]
        return gain * orthogonal(rng, (1, rows, int(np.prod(shape)) // rows))[0].reshape(shape)
    out, fan, _ = layout.canonical_shape
    groups = layout.group_count
    q = orthogonal(rng, (groups, out // groups, fan)).reshape(out, fan, 1)
    return gain * layout.from_canonical(q)


class ClassicScheme:
    """Draws every weight of a model under one classic scheme."""

    def __init__(self, scheme: str, seed: int = 0, gain: str = "scheme"):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        if gain not in ("scheme", "auto"):
            raise ValueError(f"gain must be 'scheme' or 'auto', not {gain!r}")
        self.scheme, self.seed, self.gain_mode = scheme, seed, gain

    def layer_gain(self, layer) -> float:
        if self.gain_mode == "auto":
            return nonlinearity_gain(layer.nonlinearity)
        return SCHEME_GAIN.get(self.scheme.split("-")[0], 1.0)

    def weight(self, layer) -> tuple[np.ndarray, Draw]:
        fan_in, fan_out = layer.torch_fans
        gain = 1.0 if self.scheme == "torch-default" else self.layer_gain(layer)
        distribution, std = weight_draw(self.scheme, fan_in, fan_out, gain)
        rng = tensor_rng(self.seed, layer.weight)
        if distribution == "orthogonal":
            value = orthogonal_weight(layer, gain, rng)
        else:
            value = sample(distribution, std, layer.layout.shape, rng)
        return value, Draw(layer.weight, "weight", layer.name, distribution, std, fan_in, fan_out, gain)

    def bias(self, layer, shape) -> tuple[np.ndarray, Draw]:
        if self.scheme != "torch-default":
            return np.zeros(shape), Draw(layer.bias, "bias", layer.name, "constant", 0.0)
        fan_in, _ = layer.torch_fans
        std = 1.0 / math.sqrt(3.0 * max(fan_in, 1))
        value = sample("uniform", std, shape, tensor_rng(self.seed, layer.bias))
        return value, Draw(layer.bias, "bias", layer.name, "uniform", std, fan_in)

    def embedding(self, name: str, shape) -> tuple[np.ndarray, Draw]:
        return (tensor_rng(self.seed, name).standard_normal(shape),
                Draw(name, "embedding", name, "normal", 1.0))
