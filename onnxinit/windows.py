"""Sliding windows (Conv, pooling) over site-resolved spatial axes.

Along one spatial axis, output position o with tap t reads input coordinate
    i = o * stride + t * dilation - pad_begin,   valid when 0 <= i < length.
A window op keeps its output's sites apart wherever that validity (or the
input's own sites) differ: next to each border (signal.edge_sites), so zero
padding of a non-zero-mean input is followed exactly at the borders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kinds.common import Unsupported
from .signal import EDGE, Sites, edge_sites

FULL_SITES = 256   # an axis whose every input coordinate is its own site keeps that many output sites
MAX_EDGE = 32   # a window reaching further into the padding than this is refused (unless every
                # output position fits in 2 * MAX_EDGE + 1 sites: then each is its own site)


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def pads_for(attrs, lengths, kernel, strides, dilations):
    """(begin, end) pads per spatial axis from ``pads`` or ``auto_pad``."""
    n = len(kernel)
    auto = _decode(attrs.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(lengths, kernel, strides, dilations):
            size = size or 0
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins, ends
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(attrs.get("pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


@dataclass
class Window:
    out_sites: list          # per spatial axis: Sites or None
    index: tuple             # per axis: (K_a, O_a) input site index
    valid: list              # per axis: (K_a, O_a) bool
    out_lengths: list

    @property
    def kernel(self):
        return [i.shape[0] for i in self.index]

    def gather(self, x: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """x: (C, S_1..S_d) -> (C, K_1..K_d, O_1..O_d), ``fill`` where a tap is outside."""
        d = len(self.index)
        idx, mask = [], np.ones((1,) * (2 * d), bool)
        for a, (index, valid) in enumerate(zip(self.index, self.valid)):
            shape = [1] * (2 * d)
            shape[a], shape[d + a] = index.shape
            idx.append(index.reshape(shape))
            mask = mask & valid.reshape(shape)
        g = x[(slice(None),) + tuple(idx)]
        return np.where(mask, g, fill)

    def valid_mask(self) -> np.ndarray:
        d = len(self.valid)
        mask = np.ones((1,) * (2 * d), bool)
        for a, valid in enumerate(self.valid):
            shape = [1] * (2 * d)
            shape[a], shape[d + a] = valid.shape
            mask = mask & valid.reshape(shape)
        return mask


def edge_for(max_sites: int | None, dims: int) -> int:
    """The widest border band (at most EDGE) whose classes fit ``max_sites`` per channel."""
    if max_sites is None:
        return EDGE
    for edge in range(EDGE, 0, -1):
        if (2 * edge + 1) ** dims <= max_sites:
            return edge
    return 1


def window(attrs, kernel, in_sites, lengths, ceil_mode: bool = False, max_sites: int | None = None) -> Window:
    """The window of a Conv/pool node over inputs with sites ``in_sites`` and ``lengths``.

    ``max_sites`` bounds the output sites per channel: the border band narrows
    for wide layers (see signal.SITE_BUDGET)."""
    n = len(kernel)
    band = edge_for(max_sites, n)
    strides = list(attrs.get("strides", [1] * n)) or [1] * n
    dilations = list(attrs.get("dilations", [1] * n)) or [1] * n
    begins, ends = pads_for(attrs, lengths, kernel, strides, dilations)
    out_sites, index, valid, out_lengths = [], [], [], []
    if len(strides) != n or len(dilations) != n or len(begins) != n or len(ends) != n \
            or min(list(kernel) + strides + dilations) < 1 or min(begins + ends) < 0:
        raise Unsupported("kernel, strides, dilations or pads do not fit the input")
    for a in range(n):
        k, s, d, pb, pe, size = kernel[a], strides[a], dilations[a], begins[a], ends[a], lengths[a]
        sites = in_sites[a]
        if not size:
            out_sites.append(None)
            out_lengths.append(None)
            index.append(np.zeros((k, 1), np.int64))
            valid.append(np.ones((k, 1), bool))
            continue
        span = (k - 1) * d + 1
        extent = size + pb + pe - span
        out_len = (-(-extent // s) if ceil_mode else extent // s) + 1
        if ceil_mode and (out_len - 1) * s >= size + pb:
            out_len -= 1
        out_len = max(out_len, 1)
        first_full = -(-pb // s)
        # outputs o with o*s + (k-1)*d - pb >= size read past the end
        first_over = max(0, -(-(size + pb - (k - 1) * d) // s))
        n_end = max(0, out_len - first_over)
        if max(first_full, n_end) > MAX_EDGE and out_len > 2 * MAX_EDGE + 1:
            raise Unsupported(f"padding of {max(pb, pe)} reaches too far into a {size}-long axis")
        if sites is None and first_full == 0 and n_end == 0:
            out_sites.append(None)
            index.append(np.zeros((k, 1), np.int64))
            valid.append(np.ones((k, 1), bool))
        else:
            out = edge_sites(out_len, max(band, first_full, n_end))
            if sites is not None and sites.size == size and 2 < out_len <= min(max_sites or FULL_SITES, FULL_SITES):
                out = Sites.full(out_len)   # every input coordinate its own site (channels laid out as
                                            # positions, ECA's conv): no interior to pool
            coords = out.coords[None, :] * s + np.arange(k)[:, None] * d - pb
            ok = (coords >= 0) & (coords < size)
            clipped = np.clip(coords, 0, size - 1)
            index.append(sites.index_of(clipped) if sites is not None else np.zeros_like(clipped))
            valid.append(ok)
            out_sites.append(out)
        out_lengths.append(out_len)
    return Window(out_sites, tuple(index), valid, out_lengths)


__all__ = ["Window", "window", "pads_for", "Sites"]
