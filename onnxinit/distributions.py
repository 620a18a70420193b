"""Seedable weight samplers, pure functions of (rng, shape) like jax.nn.initializers.

Each returns float32 samples of unit variance before truncation (the truncated normal: 0.77); callers
rescale them to the second moment they need.
"""
from __future__ import annotations

import numpy as np

TRUNCATION = 2.0  # truncated normal: redraw beyond two standard deviations (Keras, torch)


def truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    flat = x.reshape(-1)
    bad = np.flatnonzero(np.abs(flat) > TRUNCATION)
    while bad.size:
        flat[bad] = rng.standard_normal(bad.size, dtype=np.float32)
        bad = bad[np.abs(flat[bad]) > TRUNCATION]
    return x


def normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def uniform(rng: np.random.Generator, shape) -> np.ndarray:
    """U(-sqrt 3, sqrt 3): unit variance."""
    return (rng.random(shape, dtype=np.float32) * np.float32(2.0) - np.float32(1.0)) * np.float32(np.sqrt(3.0))


def orthogonal(rng: np.random.Generator, shape) -> np.ndarray:
    """Rows (or columns, when there are more rows) orthonormal for each leading group.

    ``shape`` is (groups, rows, cols); the QR of a Gaussian matrix with the
    sign of R's diagonal folded in gives a Haar-distributed orthogonal factor.
    """
    groups, rows, cols = shape
    out = np.empty(shape, dtype=np.float32)
    for g in range(groups):
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        out[g] = q.T if rows < cols else q
    return out


SAMPLERS = {"truncated": truncated_normal, "normal": normal, "uniform": uniform, "orthogonal": orthogonal}
