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
from ..prefetch import Prefetcher


DEGENERATE = 1e-4   # realized E[y^2] below this share of the fan-in's: the statistics, not the weights, are off


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per tensor, from the seed and the tensor's name: independent of visit order."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, digest])


def unit_samples(seed: int, name: str, distribution: str, shape) -> np.ndarray:
    """Float32 samples of unit second moment for tensor ``name``, shaped (groups, rows, cols)."""
    return SAMPLERS[distribution](tensor_rng(seed, name), shape)


def centered_samples(seed: int, name: str, distribution: str, shape) -> np.ndarray:
    """Unit samples for tensor ``name`` shaped (groups, units per group, fan-in), centered across
    the units of each group (every input/tap column sums to 0); orthogonal draws are not centered."""
    w = unit_samples(seed, name, distribution, shape)
    if distribution != "orthogonal" and w.shape[1] > 1:
        w -= w.mean(axis=1, keepdims=True)
    return w


def sample_shape(layout) -> tuple:
    """(groups, units per group, fan-in) of a layout's canonical weights."""
    out, fan, taps = layout.canonical_shape
    groups = layout.group_count
    return groups, out // groups, fan * taps


def project_out_mean(c: np.ndarray, layout, direction: np.ndarray) -> None:
    """Make the layer's mean output exactly 0: remove from C its component along the mean direction.

    The layer mean is <C, D> (D broadcast over each group's units), so
    C -= (<C, D> / <D, D>) D puts it on the zero-mean hyperplane. After centering
    across units it is already there unless a group has a single unit (depthwise).
    """
    out, fan, taps = c.shape
    groups = layout.group_count
    grouped = c.reshape(groups, out // groups, fan, taps)
    d = direction.reshape(groups, 1, fan, taps)
    norm = float(np.sum(d * d)) * (out // groups)
    if norm <= 0:
        return
    dot = float(np.einsum("gjit,git->", grouped, direction, dtype=np.float64))
    grouped -= np.float32(dot / norm) * d.astype(np.float32)


def mean_square(w: np.ndarray) -> float:
    flat = w.reshape(-1)
    return float(np.dot(flat, flat)) / max(flat.size, 1)


class AutoInit:
    """The scheme object the weighted and batchnorm kinds call while propagating."""

    def __init__(self, graph, seed: int = 0, distribution: str = "truncated", planned=(), tied_scales=None):
        """``planned``: [(weight name, sample_shape)] in visit order, drawn and centered ahead on a
        second thread.

        ``tied_scales``: {embedding table: scale} for tables that a later weighted layer
        reuses (a tied output head); the table is drawn with second moment scale^2 so the
        head, not the lookup, gets E[y^2] = 1. A pass that finds a tied head whose output is
        off by more than 1% lists the factor it needs in ``tied_factors``; the caller then
        propagates again with the scales multiplied by them (api.autoinit)."""
        if distribution not in SAMPLERS:
            raise ValueError(f"unknown distribution {distribution!r}")
        self.graph = graph
        self.seed = seed
        self.distribution = distribution
        self.new_values: set[str] = set()   # weights written so far
        self.tied_scales = dict(tied_scales or {})
        self.tied_factors: dict[str, float] = {}
        self._embedded: set[str] = set()      # tables drawn by draw_embedding
        self._taken: dict = {}                # source: mask of its elements written through weights cut from it
        self._prefetch = Prefetcher(list(planned) if distribution != "orthogonal" else [],
                                    lambda name, shape: centered_samples(seed, name, distribution, shape))

    def close(self) -> None:
        self._prefetch.close()

    def _samples(self, layer) -> np.ndarray:
        """Centered unit samples in the layer's canonical (out, fan, taps) shape."""
        shape = sample_shape(layer.layout)
        if self.distribution == "orthogonal":
            samples = centered_samples(self.seed, layer.weight, self.distribution, shape)
        else:
            samples = self._prefetch.take(layer.weight, shape)
        return samples.reshape(layer.layout.canonical_shape)

    def _store(self, name: str, value: np.ndarray) -> None:
        pieces = self._pieces(name)
        if pieces is None:
            self.new_values.update([name] + self.graph.payload_names(name))
        else:   # a weight assembled from pieces: only those elements of its sources are taken
            self.new_values.add(name)
            for source, elements in pieces.items():
                size = int(np.prod(self.graph.weight_tensor(source).dims, dtype=np.int64))
                self._taken.setdefault(source, np.zeros(size, bool))[elements] = True
        self.graph.replace_payload(name, value)

    def _pieces(self, name: str):
        """{source: element numbers} of a weight assembled from pieces of weights (weightgather.py),
        None for any other weight."""
        view = self.graph.weight_view(name) if self.graph.weight_tensor(name) is None else None
        if view is None or not hasattr(view, "offsets"):
            return None
        index = view.index.reshape(-1).astype(np.int64)
        pieces = {}
        for source, start in zip(view.sources, view.offsets):
            size = int(np.prod(self.graph.weight_tensor(source).dims, dtype=np.int64))
            pieces[source] = index[(index >= start) & (index < start + size)] - start
        return pieces

    def _written(self, name: str) -> bool:
        """Has this weight, or a tensor its payload lives in, been written already? Two weights
        cut from one tensor (the query and key rows of a packed projection) are written apart."""
        if name in self.new_values:
            return True
        pieces = self._pieces(name)
        if pieces is not None:
            return any(source in self.new_values or (source in self._taken and self._taken[source][elements].any())
                       for source, elements in pieces.items())
        return any(n in self.new_values or n in self._taken for n in self.graph.payload_names(name))

    def draw_weighted(self, layer, ctx) -> None:
        if self._written(layer.weight):
            table = next((n for n in [layer.weight] + self.graph.payload_names(layer.weight) if n in self._embedded), None)
            if table is not None:
                self._tied_head(layer, table, ctx)
            else:
                ctx.warn(f"weight {layer.weight!r} is shared by several layers; drawn once, for its first use")
            return
        second = layer.effective_second_moment
        if not np.isfinite(second) or second <= 0:
            ctx.warn(f"{layer.node.name or layer.node.op_type}: input E[x^2] = {second}; "
                     "weights drawn for E[x^2] = 1")
            second = 1.0
        target = 1.0 / (layer.layout.fan_in * second)
        c = self._samples(layer)
        if self.distribution != "orthogonal" and c.shape[0] == layer.layout.group_count:
            project_out_mean(c, layer.layout, layer.mean_direction())
        standardized = self.graph.weight_norm(layer.weight) if self.graph.weight_tensor(layer.weight) is None \
            and self.graph.weight_view(layer.weight) is None else None
        if getattr(standardized, "row_centered", False):   # the graph removes each unit's mean itself
            c = layer.layout.to_canonical(standardized.center(layer.layout.from_canonical(c)))
        realized = layer.realized_second_moment(c)
        ms = mean_square(c)
        nominal = ms / target    # E[y^2] for inputs independent of each other, as many as the fan-in
        if np.isfinite(realized) and realized > DEGENERATE * nominal:
            factor = 1.0 / np.sqrt(realized)
        else:
            if np.isfinite(realized) and realized > 0:
                ctx.warn(f"{layer.node.name or layer.node.op_type}: these weights would output E[y^2] = "
                         f"{realized:.3g} of the {nominal:.3g} the fan-in gives; drawn for the fan-in")
            factor = np.sqrt(target / ms) if ms > 0 else 1.0
        c *= np.float32(factor)
        layer.rescale_stats(factor)
        layer.weight_rms = float(np.sqrt(ms) * abs(factor))   # the report's weight std, without reading it back
        self._store(layer.weight, layer.layout.from_canonical(c).astype(layer.dtype, copy=False))
        if layer.bias and self.graph.payload_names(layer.bias) and not self._written(layer.bias):
            self._store(layer.bias, np.zeros_like(self.graph.constant_value(layer.bias)))

    def _tied_head(self, layer, table: str, ctx) -> None:
        """A weighted layer reusing an embedding table (a tied LM head: logits = h @ E^T).

        One tensor cannot give both uses E[y^2] = 1 (the lookup outputs E^2, the head
        fan_in * E^2 * E[h^2]), so the head wins: its output is usually the model's. The
        factor that would make the head's E[y^2] exactly 1 goes to ``tied_factors``."""
        realized = layer.realized_second_moment(layer.layout.to_canonical(ctx.value(layer.weight)))
        if not (np.isfinite(realized) and realized > 0):
            return
        factor = 1.0 / np.sqrt(realized)
        if abs(factor - 1.0) > 0.01:
            self.tied_factors[table] = factor
        lookup_var = self.tied_scales.get(table, 1.0) ** 2
        ctx.warn(f"weight {table!r} is shared by an embedding lookup and {layer.node.name or layer.node.op_type}: "
                 f"drawn for the latter (output variance 1); the lookup outputs variance {lookup_var:.3g}")

    def draw_embedding(self, name: str, table: np.ndarray, ctx, reference: int | None = None) -> None:
        """An embedding table: every column centered over the rows, unit second moment: E[y^2] = 1
        (scale^2 for a table tied to a later weighted layer, see ``tied_scales``).

        ``reference``: the one row every token reads (BERT's token type table at the constant
        type 0). That row is a bias added to every token, so it is 0, as biases are, and the
        columns are taken relative to it instead of centered."""
        if name in self.new_values or self.graph.weight_tensor(name) is None:
            return
        rows = table.shape[0]
        w = unit_samples(self.seed, name, "normal" if self.distribution == "orthogonal" else self.distribution,
                         (1, rows, int(np.prod(table.shape[1:]))))[0]
        if reference is not None:
            w -= w[reference:reference + 1].copy()
        elif rows > 1:
            w -= w.mean(axis=0, keepdims=True)
        others = np.delete(w, reference, axis=0) if reference is not None and rows > 1 else w
        ms = mean_square(others)   # the rows a token may read at random: unit second moment
        if ms > 0:
            w *= np.float32(self.tied_scales.get(name, 1.0) / np.sqrt(ms))
        self._embedded.add(name)
        self._store(name, w.reshape(table.shape).astype(table.dtype, copy=False))

    def draw_unit(self, name: str, shape) -> np.ndarray:
        """Samples for weight ``name`` shaped (groups, rows, cols), orthogonal per group with
        ``orthogonal``, scaled to a mean square of exactly 1 (a normal truncated at two standard
        deviations has variance 0.77); a kind scales them and hands them to ``write`` (recurrent.py)."""
        w = unit_samples(self.seed, name, self.distribution, tuple(shape))
        ms = mean_square(w)
        return w / np.float32(np.sqrt(ms)) if ms > 0 else w

    def write(self, name: str, value: np.ndarray) -> None:
        """Store a weight a kind computed, unless it was written already (a shared tensor)."""
        if not self._written(name) and self.graph.payload_names(name):   # a view's sources too
            self._store(name, value)

    def rescale(self, name: str, value: np.ndarray) -> None:
        """A drawn weight changed after the fact (``--residual weighted`` folds a scale into it)."""
        self._store(name, value)

    def set_affine(self, node, scale: str, bias: str) -> None:
        """Normalization layers: scale 1, shift 0 (through the Identity nodes torch.onnx reads a
        merged initializer with; untie.py has split it where its readers need other values)."""
        for name, fill in ((scale, 1.0), (bias, 0.0)):
            between = []
            while name and self.graph.weight_tensor(name) is None and \
                    getattr(self.graph.producer.get(name), "op_type", None) == "Identity":
                between.append(name)
                name = self.graph.producer[name].input[0]
            if name and name not in self.new_values and self.graph.weight_tensor(name) is not None:
                self._store(name, np.full_like(self.graph.constant_value(name), fill))
            if between and name in self.new_values:   # their values were folded from the old payload
                for copy in between:
                    self.graph.set_value(copy, self.graph.constant_value(name))
