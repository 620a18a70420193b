"""Weight layouts: ONNX weight tensors <-> canonical (output, input-channel, tap) arrays.

Each weighted op stores its kernel its own way; every rule works on the
canonical form ``C[j, i, t]``: output unit j, input channel i of j's group,
kernel tap t. Then fan_in = C.shape[1] * C.shape[2] and
    y_j = sum_{i,t} C[j, i, t] x_i(p + t) + b_j.
Output units are ordered group by group, so group g is rows
[g*out/groups, (g+1)*out/groups).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    kind: str                 # conv | conv_transpose | gemm | matmul | einsum
    shape: tuple              # the ONNX weight's shape
    groups: int = 1
    trans_b: bool = False     # gemm: weight stored (out, in)
    weight_first: bool = False  # matmul: W @ x instead of x @ W
    order: tuple = ()         # einsum: the weight's axes, output-unit axes first, then contracted ones
    units: int = 0            # einsum: how many of ``order`` are output-unit axes

    @property
    def canonical_shape(self):
        s = self.shape
        if self.kind == "conv":
            return (s[0], s[1], int(np.prod(s[2:], dtype=np.int64)))
        if self.kind == "conv_transpose":
            return (s[1] * self.groups, s[0] // self.groups, int(np.prod(s[2:], dtype=np.int64)))
        if self.kind == "gemm":
            return (s[0], s[1], 1) if self.trans_b else (s[1], s[0], 1)
        if self.kind == "matmul":
            batch = int(np.prod(s[:-2], dtype=np.int64)) if len(s) > 2 else 1
            if len(s) == 1:
                return (1, s[0], 1)
            rows, cols = s[-2], s[-1]
            return (batch * rows, cols, 1) if self.weight_first else (batch * cols, rows, 1)
        if self.kind == "einsum":
            sizes = [s[a] for a in self.order]
            return (int(np.prod(sizes[:self.units], dtype=np.int64)), int(np.prod(sizes[self.units:], dtype=np.int64)), 1)
        raise ValueError(f"unknown layout {self.kind!r}")

    @property
    def group_count(self) -> int:
        """Number of independent output groups in the canonical form."""
        if self.kind in ("conv", "conv_transpose"):
            return self.groups
        if self.kind == "matmul" and len(self.shape) > 2:
            return int(np.prod(self.shape[:-2], dtype=np.int64))
        return 1

    @property
    def fan_in(self) -> int:
        _, channels, taps = self.canonical_shape
        return channels * taps

    def to_canonical(self, w: np.ndarray) -> np.ndarray:
        out, fan, taps = self.canonical_shape
        if self.kind == "conv":
            return w.reshape(out, fan, taps)
        if self.kind == "conv_transpose":
            g = self.groups
            return (w.reshape(g, fan, out // g, taps).transpose(0, 2, 1, 3).reshape(out, fan, taps))
        if self.kind == "gemm":
            return (w if self.trans_b else w.T).reshape(out, fan, 1)
        if self.kind == "einsum":
            return np.transpose(w, self.order).reshape(out, fan, 1)
        if len(self.shape) == 1:
            return w.reshape(1, fan, 1)
        m = w.reshape((-1,) + tuple(self.shape[-2:]))
        m = m if self.weight_first else np.swapaxes(m, 1, 2)
        return m.reshape(out, fan, 1)

    def from_canonical(self, c: np.ndarray) -> np.ndarray:
        out, fan, taps = self.canonical_shape
        if self.kind == "conv":
            return c.reshape(self.shape)
        if self.kind == "conv_transpose":
            g = self.groups
            return c.reshape(g, out // g, fan, taps).transpose(0, 2, 1, 3).reshape(self.shape)
        if self.kind == "gemm":
            m = c.reshape(out, fan)
            return np.ascontiguousarray(m if self.trans_b else m.T)
        if self.kind == "einsum":
            permuted = c.reshape([self.shape[a] for a in self.order])
            return np.ascontiguousarray(np.transpose(permuted, np.argsort(self.order)))
        if len(self.shape) == 1:
            return c.reshape(self.shape)
        rows, cols = self.shape[-2:]
        m = c.reshape(-1, rows, cols) if self.weight_first else np.swapaxes(c.reshape(-1, cols, rows), 1, 2)
        return np.ascontiguousarray(m).reshape(self.shape)


def conv_transpose_tap_fraction(attrs, in_sizes, kernel, out_sizes) -> float:
    """Average number of (input, tap) pairs reaching an output position, over the kernel size.

    ConvTranspose scatters, so its positions are summarized by this one fraction f
    (used as a single all-taps pattern with share f)."""
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    pads = list(attrs.get("pads", [0] * (2 * n)))
    fraction = 1.0
    for i, (size, k) in enumerate(zip(in_sizes, kernel)):
        out = out_sizes[i] if out_sizes else None
        if not size or not out:
            fraction *= 1.0 / strides[i]
            continue
        pos = np.arange(size)[:, None] * strides[i] - pads[i] + np.arange(k)[None, :] * dilations[i]
        hits = np.bincount(pos[(pos >= 0) & (pos < out)], minlength=out)
        fraction *= float(hits.mean()) / k
    return fraction
