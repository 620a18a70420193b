"""Ops that transformers are made of: embedding lookups, indexing, LayerNorm, products of activations."""
from __future__ import annotations

import numpy as np

from ..correlation import pointwise
from ..graph import upstream
from ..montecarlo import site_grid
from ..signal import SITE_BUDGET, Signal, Sites, constant_signal, gaussian
from .common import Unsupported, attributes, softmax_on_last_axis
from .normalize import set_scaled


def single_row(ids, rows: int) -> int | None:
    """The one table row that constant ``ids`` all name, or None (unknown ids, several rows)."""
    if ids is None:
        return None
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0 or not np.all(ids == ids[0]):
        return None
    return int(ids[0]) % rows


def embedding(node, rule, ctx):
    """Gather(W, ids) with W a weight and ids from the input: the output is a row of W.

    For tokens spread over the table, column d has mean_d = avg_v W[v, d] and
    variance var_d over the rows. AutoInit draws W with every column centered
    and unit second moment, so the output has mean 0 and variance 1. Ids known to be one
    constant (a token type buffer) read one row: a bias on every token, drawn as 0.
    """
    table_name, out = node.input[0], node.output[0]
    table = ctx.value(table_name)
    if table is None or table.ndim < 2 or int(attributes(node).get("axis", 0)) != 0:
        raise Unsupported("embedding lookup needs a constant table gathered along axis 0")
    ids = ctx.value(node.input[1])
    row = single_row(ids, table.shape[0])   # ids known: a buffer expanded to the batch
    if ctx.scheme is not None:
        ctx.scheme.draw_embedding(table_name, table, ctx, reference=row)
        table = ctx.value(table_name)
    rank = ctx.rank(out) or (table.ndim + 1)
    if ids is not None and row is None and np.ndim(ids) + table.ndim - 1 <= rank:
        # known ids naming several rows (RoBERTa's positions 2..T+1, computed from the input but
        # the same for any ids but the padding one): one fixed row per token, as a position table
        value = np.take(np.asarray(table, np.float64), np.asarray(ids, np.int64) % table.shape[0], axis=0)
        signal = constant_signal(value, rank)
        ctx.set(out, signal)
        ctx.embeddings.append((node.name or out, table_name, signal.moments()))
        return
    rows = np.asarray(table, np.float64).reshape(table.shape[0], -1)
    if row is not None:   # every token reads the same row (BERT's token type 0): a constant, no variance
        rows = rows[row][None, :]
    mean, var = rows.mean(axis=0), rows.var(axis=0)
    width = rows.shape[1]
    axes = [None] * rank
    shape = [1] * rank
    if table.ndim == 2 and width > 1:
        axes[-1], shape[-1] = Sites.full(width), width
    else:
        mean, var = np.array(mean.mean()), np.array(var.mean() + mean.var())
    signal = gaussian(out, mean.reshape(shape), 0.0, var.reshape(shape), axes, ctx.has_positions(out))
    ctx.set(out, signal)
    ctx.embeddings.append((node.name or out, table_name, signal.moments()))


def gather(node, rule, ctx):
    """Gather on activations with constant indices: the indexed sites, the axis dropped for a scalar index.

    Axis 0 is the batch axis in most graphs, but not in a seq-first attention
    (nn.MultiheadAttention stacks q, k, v on axis 0): a static axis 0 is indexed too."""
    data, indices, out = node.input[0], node.input[1], node.output[0]
    if not ctx.is_signal(data):
        return embedding(node, rule, ctx)
    index = ctx.value(indices)
    if index is None:
        raise Unsupported("indices are not constant")
    sig = ctx.signal(data)
    axis = int(attributes(node).get("axis", 0)) % sig.rank
    if axis == 0 and sig.axes[0] is None and (ctx.graph.static_dims(data) or [None])[0] is None:
        raise Unsupported("gather along the batch axis")
    index = np.asarray(index, np.int64)
    sites = sig.axes[axis]
    length = sites.length if sites is not None else (ctx.graph.static_dims(data) or [None] * sig.rank)[axis]
    if length:
        index = np.where(index < 0, index + length, index)
    if index.ndim > 1:
        raise Unsupported("multi-dimensional indices")
    r = len(sig.roots)
    flat = index.reshape(-1)
    picked = np.take(sig.values, sites.index_of(flat) if sites is not None else [0], axis=r + axis)
    axes = list(sig.axes)
    if index.ndim == 0:
        picked = np.take(picked, 0, axis=r + axis)
        del axes[axis]
    elif sites is not None and flat.size > 1:
        axes[axis] = Sites.full(flat.size)
    else:
        picked = np.take(picked, [0], axis=r + axis)
        axes[axis] = None
    ctx.set(out, Signal(sig.roots, np.ascontiguousarray(picked), axes))


def layernorm(node, rule, ctx):
    """y = (x - m) / sqrt(v + eps) * gamma + beta, m and v over the axes from ``axis`` on, per sample.

    For many normalized elements m and v are those of x's sites pooled over the
    normalized axes, so the op is an affine map of x on its grid, as BatchNorm
    in training mode is over channels. With ``center = false`` (RMSNormalization) m is 0
    and v the mean square: y = x / sqrt(E[x^2] + eps) * gamma.
    """
    attrs = attributes(node)
    scale = node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 else ""
    if ctx.scheme is not None:
        ctx.scheme.set_affine(node, scale, bias)
    factors = [np.asarray(ctx.value(name), np.float64) if name and ctx.value(name) is not None else None
               for name in (scale, bias)]
    normalize(ctx, node.input[0], node.output[0], int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5)),
              rule.get("center", True), *factors)


def normalize(ctx, x: str, out: str, axes, eps: float, center: bool, gamma=None, beta=None) -> None:
    """out = (x - m) / sqrt(v + eps) * gamma + beta over ``axes`` (an int: the axes from it on;
    m = 0 and v the mean square without ``center``), m and v from x's sites pooled over them."""
    sig = ctx.signal(x)
    normalized = tuple(range(axes % sig.rank, sig.rank)) if isinstance(axes, int) else tuple(axes)
    mean, var, _ = sig.stats()
    w = np.broadcast_to(sig.site_weights(), mean.shape)
    total = w.sum(axis=normalized, keepdims=True)
    m = (w * mean).sum(axis=normalized, keepdims=True) / total
    second = (w * (var + mean ** 2)).sum(axis=normalized, keepdims=True) / total
    if not center:
        m = np.zeros_like(m)
    std = np.sqrt(np.maximum(second - m * m, 0.0) + eps)
    r = len(sig.roots)
    values = (sig.values - m.reshape((1,) * r + m.shape)) / std.reshape((1,) * r + std.shape)
    set_scaled(ctx, out, Signal(sig.roots, values, sig.axes), gamma, beta)


TRANSPARENT_TO_ROWS = {"Identity", "Cast", "Dropout"}


def _through_copies(name: str, ctx) -> str:
    """Back from ``name`` through Identity / Cast / Dropout, a reshape that keeps the last two
    axes (DeBERTa merges the heads into the batch: (N, H, T, T) -> (N·H, T, T)), and a Where
    whose condition is a known constant that picks one side everywhere (RoBERTa's masked fill
    of fully masked rows, Where(mask == 0 everywhere, 0, probabilities), with a mask of ones)."""
    graph = ctx.graph
    while (node := graph.producer.get(name)) is not None and node.domain in ("", "ai.onnx"):
        if node.op_type in TRANSPARENT_TO_ROWS or node.op_type in ROW_RESHAPES and _keeps_rows(node, ctx):
            name = node.input[0]
            continue
        condition = ctx.value(node.input[0]) if node.op_type == "Where" else None
        if condition is None or np.size(condition) == 0:
            break
        if not np.any(condition):
            name = node.input[2]
        elif np.all(condition):
            name = node.input[1]
        else:
            break
    return name


ROW_RESHAPES = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}


def _keeps_rows(node, ctx) -> bool:
    """Does this reshape leave the last two axes (queries, keys) as they are?"""
    dims_in, dims_out = ctx.graph.static_dims(node.input[0]), ctx.graph.static_dims(node.output[0])
    return bool(dims_in) and bool(dims_out) and len(dims_in) >= 2 and len(dims_out) >= 2 \
        and None not in dims_in[-2:] and dims_in[-2:] == dims_out[-2:]


def rows_sum_to_one(name: str, ctx) -> bool:
    """Is ``name`` a softmax over its last axis (through copies, see _through_copies)?"""
    node = ctx.graph.producer.get(_through_copies(name, ctx))
    return node is not None and softmax_on_last_axis(node, ctx)


def attention_mix(node, ctx):
    """Y = P @ V with P a softmax over the key axis (attention-weighted values).

    Per value channel, V along the key axis is m_k + s + e_k: site means m_k, a part s
    constant over the keys (variance S: the sample roots, tokens mixed by an earlier
    attention or offsets shared by every position) and a part e_k independent from key
    to key (variance W). With P independent of V, mean p = 1/K, variance v_P:
        Y = sum_k p_k m_k + s + sum_k p_k e_k,   mean = avg_k m_k,
        shared (equal for every query) = S + K p^2 W = S + W / K,
        within (query to query) = K v_P (W + D),   D = avg_k (m_k - avg m)^2.
    Treating s like e_k (the independent product rule) would shrink it K times.
    Where the softmax rule measured how much two queries read the same keys (kappa, and
    d = E[sum_k p_k^2], montecarlo.query_overlap), the e_k part splits as measured:
        shared = S + kappa W,   within = (d - kappa) W + K v_P D
    (uniform rows: kappa = 1/K, d - kappa = K v_P; a causal mask makes kappa larger).
    """
    p, v = ctx.moments[node.input[0]], ctx.signal(node.input[1])
    rank = v.rank
    if rank < 2 or ctx.rank(node.output[0]) != rank:
        raise Unsupported("attention product with broadcast ranks")
    k = (ctx.graph.static_dims(node.input[1]) or [None] * rank)[-2]
    if not k:
        raise Unsupported("unknown number of keys")
    mean, var, shared = v.stats()
    w = np.broadcast_to(v.site_weights(), mean.shape)
    w = w / w.sum(axis=-2, keepdims=True)
    m = (w * mean).sum(axis=-2, keepdims=True)
    spread = (w * (mean - m) ** 2).sum(axis=-2, keepdims=True)
    s = (w * shared).sum(axis=-2, keepdims=True)
    within = (w * np.maximum(var - shared, 0.0)).sum(axis=-2, keepdims=True)
    rows = k * p.mean
    axes = list(v.axes)
    axes[-2] = None
    out = node.output[0]
    tilt = _tilt(node.input[0], node.input[1], ctx)
    common, own = k * p.mean ** 2, k * p.var
    overlap = ctx.query_overlap.get(_softmax_behind(node.input[0], ctx))
    if overlap is not None:
        kappa, d = overlap
        common, own = kappa, max(d - kappa, 0.0)
    ctx.set(out, gaussian(out, rows * m, rows * rows * s + common * within,
                          own * within + k * p.var * spread + tilt * within, axes, ctx.has_positions(out)))


def _softmax_behind(name: str, ctx) -> str:
    """The softmax output that ``name`` is (through copies, see _through_copies)."""
    return _through_copies(name, ctx)


def _tilt(probabilities: str, values: str, ctx) -> float:
    """tau / D for the softmax behind ``probabilities`` (montecarlo.softmax_tilt): scores and
    values both read the keys' tokens x_j, and a value channel w . x_j has 1/D of its variance
    along the score direction a . x_j (random directions in the tokens' D dimensions), so
        E[(sum_j p_j v_j)^2] gains  nu_v / D * (E[(sum_j p_j e_j)^2] - E[sum_j p_j^2] nu_e) / nu_e.
    D: the fan-in of the projection that made the values (``_token_width``), else heads x
    value width (the model width, where the heads split it); 0 when unknown."""
    tau = ctx.softmax_tilt.get(_softmax_behind(probabilities, ctx))
    if tau is None:
        return 0.0
    width = _token_width(values, ctx)
    dims = ctx.graph.static_dims(values)
    if width is None and dims and len(dims) == 4 and dims[1] and dims[3]:
        width = dims[1] * dims[3]
    return max(tau, 0.0) / width if width else 0.0


VALUE_PATH = {"Reshape", "Transpose", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze", "Identity", "Cast",
              "Add", "Sub", "Mul", "Div", "BatchNormalization", "Flatten"}


def _token_width(values: str, ctx, limit: int = 8) -> int | None:
    """The tokens' width D that the values were projected from: the fan-in of the pointwise
    layer found going back from ``values`` through reshapes, splits, head transposes, a bias or
    a scale (one signal input each). LeViT-style blocks project 32-wide tokens to 2 heads of
    8, where heads x value width would give 16."""
    for name in upstream(ctx.graph, values, VALUE_PATH, limit):
        layer = ctx.layer_outputs.get(name)
        if layer is not None:
            return layer.layout.fan_in if pointwise(layer.layout) else None
    return None


def matmul_product(node, ctx):
    """Y = A @ B for two independent activations (attention scores and weighted values).

    With K the contraction length and A, B independent:
        mean = K m_A m_B,   E[Y^2] = K (E[A^2] E[B^2] - m_A^2 m_B^2) + mean^2.
    A softmax A (attention probabilities) goes to ``attention_mix``.
    """
    if rows_sum_to_one(node.input[0], ctx):
        return attention_mix(node, ctx)
    dims = ctx.graph.static_dims(node.input[0])
    k = dims[-1] if dims and dims[-1] else None
    if k is None:
        raise Unsupported("unknown contraction length")
    product_of_independent(node.output[0], node.input[0], node.input[1], k, ctx, row_factors="matmul")


def product_of_independent(out: str, first: str, second: str, k: int, ctx, key_axis: int | None = -1,
                           row_factors: str | None = None):
    """Sum over k products of independent factors (the moments of MatMul's rule above).
    ``key_axis``: the axis of ``second`` that becomes the output's last axis (-1 for MatMul;
    Einsum 'bid,bjd->bij' reads its keys along -2), None where no axis of it does.
    ``row_factors``: "matmul" where out = first @ second, "keys_first" where out = first @ second^T
    (Einsum 'bhid,bhjd->bhij'): a row softmax may draw the scores from the factors (scores.py)."""
    a, b = ctx.moments[first], ctx.moments[second]
    mean = k * a.mean * b.mean
    var = k * (a.second_moment * b.second_moment - (a.mean * b.mean) ** 2)
    rank = ctx.rank(out) or 2
    positions = ctx.has_positions(out)
    shared = var if not positions else 0.0
    if positions and feeds_row_softmax(out, ctx):
        # scores q_i . k_j: the part sum_u q_iu (m_u + s_u) of B's mean and shared part is the
        # same for every key j, and a softmax over j cancels it: carried as the shared part
        shared = float(np.clip(k * (a.second_moment * _same_for_every_key(ctx.signal(second), b, key_axis)
                                    - (a.mean * b.mean) ** 2), 0.0, var))
        if row_factors:   # the softmax draws its rows from q and k (scores.py); kept past their release
            ctx.score_factors[out] = tuple((ctx.signal(f), ctx.graph.static_dims(f)) for f in (first, second)) \
                + (row_factors == "keys_first",)
    elif row_factors == "matmul" and _mixes_softmax_rows(first, ctx):
        per_site = _product_per_site(out, first, second, ctx, positions)
        if per_site is not None:
            ctx.set(out, per_site)
            return
    ctx.set(out, gaussian(out, mean, shared, var - shared, (None,) * rank, positions))


MIXED_ROWS_PATH = {"Conv", "Add", "Sub", "Mul", "Div", "Reshape", "Transpose", "Identity", "Cast"}
PER_SITE_LIMIT = 1 << 22   # elements a sample of either factor, beyond which the pooled rule is used


def _mixes_softmax_rows(name: str, ctx) -> bool:
    """Is ``name`` softmax rows mixed across heads (a 1x1 conv over the heads: talking heads),
    shifted or scaled? Its products with the values then contract over the keys."""
    graph = ctx.graph
    for tensor in upstream(graph, name, MIXED_ROWS_PATH, 6):
        node = graph.producer.get(tensor)
        if node is not None and softmax_on_last_axis(node, ctx):
            return True
    return False


def _product_per_site(out: str, first: str, second: str, ctx, positions: bool):
    """Y = A @ B for A softmax rows mixed across heads (each row sums to a constant) and B
    independent of A, with their sites' own moments (not pooled first):

        mean_ij = sum_k m_A,ik m_B,kj,
        var_ij  = sum_k E[A_ik^2] nu_B,kj + K / (K - 1) sum_k nu_A,ik (m_B,kj - avg_k m_B,kj)^2,

    averaged over the rows i (kept along every other axis); a row's fixed sum leaves the part of
    B's mean common to all keys no variance to carry. Pooled means can cancel where the
    sites' do not add up to zero: EfficientFormerV2's talking heads mix the softmax rows of
    all heads with signed weights, so each head's mixed rows have their own mean (1/K times
    that head's weights' sum), which times each value unit's own mean adds up over the K keys
    (measured E[Y^2] 228, of it 191 the per-(head, unit) means; pooled, the rule gave 49 and
    mean 0). Used for mixed softmax rows only (_mixes_softmax_rows): EfficientViT's linear
    attention, (ReLU(k)^T [v, 1]) then a division by its last column, came out worse with it
    (37 of 52 layers in band instead of 50), its quotient's parts being far from independent.
    None where the shapes are not static or the output would need too many sites."""
    dims_a, dims_b = ctx.graph.static_dims(first), ctx.graph.static_dims(second)
    if not dims_a or not dims_b or len(dims_a) != len(dims_b) or len(dims_a) < 3 \
            or any(d is None for d in dims_a[1:] + dims_b[1:]) \
            or max(np.prod(dims_a[1:], dtype=np.float64), np.prod(dims_b[1:], dtype=np.float64)) > PER_SITE_LIMIT:
        return None
    a_mean, a_var, _ = site_grid(ctx.signal(first), [1] + list(dims_a[1:]))
    b_mean, b_var, _ = site_grid(ctx.signal(second), [1] + list(dims_b[1:]))
    if not all(np.all(np.isfinite(x)) for x in (a_mean, a_var, b_mean, b_var)):
        return None
    keys = a_mean.shape[-1]

    def rows(x):
        return x.mean(axis=-2, keepdims=True)

    b_offset = b_mean - b_mean.mean(axis=-2, keepdims=True)
    try:
        mean = np.matmul(rows(a_mean), b_mean)
        var = np.matmul(rows(a_var + a_mean ** 2), b_var) \
            + np.matmul(rows(a_var), b_offset ** 2) * (keys / max(keys - 1, 1))
    except ValueError:
        return None
    if int(np.prod(mean.shape, dtype=np.int64)) > SITE_BUDGET:
        return None
    axes = [None] + [Sites.full(d) if d > 1 else None for d in mean.shape[1:]]
    var = np.maximum(var, 0.0)
    return gaussian(out, mean, 0.0 if positions else var, var if positions else 0.0, axes, positions)


def _same_for_every_key(keys, pooled, key_axis: int | None = -1) -> float:
    """E over units of (the part of B = K^T equal along ``key_axis``, the keys)^2: each unit's
    mean over the keys, squared, plus its sample roots' variance. Site means that differ from
    key to key (BERT's position rows, a fixed pattern over the tokens) are not part of it: a
    softmax over the keys does not cancel them. ``pooled``: B's pooled moments, used when
    B carries no sites."""
    if keys.rank < 2 or key_axis is None:
        return pooled.mean ** 2 + pooled.shared
    mean, _, shared = keys.stats()
    w = np.broadcast_to(keys.site_weights(), mean.shape)
    per_key_total = np.sum(w, axis=key_axis, keepdims=True)
    over_keys = np.sum(w * mean, axis=key_axis, keepdims=True) / per_key_total
    shared_over_keys = np.sum(w * shared, axis=key_axis, keepdims=True) / per_key_total
    weights = per_key_total / np.sum(per_key_total)
    return float(np.sum(weights * (over_keys ** 2 + shared_over_keys)))


SHAPE_READERS = {"Shape", "Size"}   # consumers that read a tensor's shape, not its values
ROW_SOFTMAX_PATH = {"Div", "Mul", "Add", "Sub", "Where", "Cast", "Identity", "Reshape"}


def feeds_row_softmax(name: str, ctx, limit: int = 6) -> bool:
    """Does ``name`` reach a softmax over its last axis through scaling, masking and reshapes only?
    (A Shape reading it on the way, as RoBERTa's export does, does not count.)"""
    graph = ctx.graph
    for _ in range(limit):
        consumers = [c for c in graph.consumers.get(name, []) if c.op_type not in SHAPE_READERS]
        if len(consumers) != 1 or consumers[0].domain not in ("", "ai.onnx"):
            return False
        node = consumers[0]
        if node.op_type == "Softmax":
            return softmax_on_last_axis(node, ctx)
        if node.op_type not in ROW_SOFTMAX_PATH:
            return False
        name = node.output[0]
    return False
