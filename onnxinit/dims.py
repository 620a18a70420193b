"""Static dims of structural ops' outputs where shape inference left them open.

Exporters compute Reshape targets from Shape (to keep the batch size
dynamic), which ONNX shape inference cannot always follow. With the shape
arithmetic evaluated on a probe batch size (propagate.PROBE_BATCH), the
target is known: a dim divisible by the probe depends on the batch (None),
any other is static. Transpose, Squeeze, Unsqueeze, Flatten, Split, Slice, Pad,
Concat and MatMul then carry the dims on.
"""
from __future__ import annotations

import numpy as np

from .kinds.common import attributes

PROBE_BATCH = 9973      # propagate evaluates shape arithmetic with these two batch sizes
SECOND_PROBE = 10007


def _value(ctx, name):
    """A constant's value, or a shape-arithmetic value with -7 where it depends on the batch size."""
    if not name:
        return None
    value = ctx.graph.constant_value(name)
    if value is not None:
        return np.asarray(value).astype(np.int64).reshape(-1)
    pair = ctx.graph.shape_values.get(name)
    if pair is None or pair[0].shape != pair[1].shape:
        return None
    a, b = (np.asarray(v).astype(np.int64).reshape(-1) for v in pair)
    return np.where(a == b, a, BATCH_DEPENDENT)


BATCH_DEPENDENT = -7
# ops whose first output has their first input's shape
SAME_SHAPE = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
              "MeanVarianceNormalization", "LpNormalization", "Softmax", "LogSoftmax", "Hardmax", "Dropout",
              "Identity", "Cast", "CumSum"}


def _axes(node, ctx, rank):
    attrs = attributes(node)
    axes = _value(ctx, node.input[1]) if len(node.input) > 1 else None
    if axes is None and "axes" in attrs:
        axes = np.asarray(attrs["axes"], np.int64)
    return None if axes is None else [int(a) % rank for a in axes]


def _probe(dims):
    return [PROBE_BATCH if d is None else d for d in dims]


def _unprobe(values):
    return [None if v % PROBE_BATCH == 0 else int(v) for v in values]


def split_sizes(node, ctx, length):
    """Sizes of a Split's outputs along its axis (``length`` long), or None."""
    attrs = attributes(node)
    sizes = _value(ctx, node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if sizes is None and "split" in attrs:
        sizes = list(attrs["split"])
    n_out = len(node.output)
    if sizes is None:
        if length is None:
            return None
        part = -(-length // n_out)
        sizes = [part] * (n_out - 1) + [length - part * (n_out - 1)]
    return [int(v) for v in sizes]


def output_dims(node, ctx):
    """[dims per output] for a structural node, or None when they cannot be worked out."""
    dims = ctx.graph.static_dims(node.input[0]) if node.input else None
    op = node.op_type
    attrs = attributes(node)
    if dims is None and op == "Reshape":   # a target without 0 or -1 needs no input dims
        target = _value(ctx, node.input[1])
        if target is not None and all(t > 0 or t == BATCH_DEPENDENT for t in target):
            return [[None if t == BATCH_DEPENDENT else int(t) for t in target]]
    if dims is None:
        return None
    if op == "Gather":
        index = ctx.graph.constant_value(node.input[1])
        if index is None:
            return None
        axis = int(attrs.get("axis", 0)) % len(dims)
        return [dims[:axis] + list(np.shape(index)) + dims[axis + 1:]]
    if op == "Transpose":
        perm = list(attrs.get("perm", range(len(dims) - 1, -1, -1)))
        return [[dims[p] for p in perm]]
    if op == "Reshape":
        target = _value(ctx, node.input[1])
        if target is None or sum(d is None for d in dims) > 1:
            return None
        out = [dims[i] if t == 0 and not attrs.get("allowzero", 0) else (None if t == BATCH_DEPENDENT else int(t))
               for i, t in enumerate(target)]
        if -1 in out:
            known = [v for v in out if v != -1]
            static_in = int(np.prod([d for d in dims if d is not None]))
            static_known = int(np.prod([v for v in known if v is not None]))
            batch_in, batch_out = None in dims, None in known
            # the batch goes into -1 when no other target dim takes it
            out[out.index(-1)] = None if batch_in and not batch_out else static_in // max(static_known, 1)
        return [out]
    if op == "Squeeze":
        axes = _axes(node, ctx, len(dims))
        if axes is None:
            return [[d for d in dims if d != 1]]
        return [[d for i, d in enumerate(dims) if i not in axes]]
    if op == "Unsqueeze":
        axes = _axes(node, ctx, len(dims) + len(node.input[1:] and _value(ctx, node.input[1]) or
                                                 attrs.get("axes", [])))
        if axes is None:
            return None
        out = list(dims)
        for a in sorted(axes):
            out.insert(a, 1)
        return [out]
    if op == "Flatten":
        axis = int(attrs.get("axis", 1)) % (len(dims) + 1)
        src = _probe(dims)
        return [_unprobe([int(np.prod(src[:axis])), int(np.prod(src[axis:]))])]
    if op in SAME_SHAPE:
        return [list(dims)]
    if op == "Expand":
        return expand_dims(dims, _value(ctx, node.input[1]))
    if op in WINDOW_OPS:
        return window_dims(node, ctx, dims)
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        return [dims[:2] + [1] * (len(dims) - 2)]
    if op == "Tile":
        repeats = _value(ctx, node.input[1])
        if repeats is None or len(repeats) != len(dims) or (repeats < 0).any():
            return None
        return [[None if d is None else d * int(t) for d, t in zip(dims, repeats)]]
    if op == "Slice":
        return slice_dims(node, ctx, dims)
    if op == "Pad":
        return pad_dims(node, ctx, dims)
    if op == "Concat":
        return concat_dims(node, ctx)
    if op == "MatMul":
        return matmul_dims(dims, ctx.graph.static_dims(node.input[1]))
    if op in REDUCE_OPS:
        return reduce_dims(node, ctx, dims)
    if op == "Split":
        axis = int(attrs.get("axis", 0)) % len(dims)
        if dims[axis] is None:
            return None
        sizes = split_sizes(node, ctx, dims[axis])
        if sizes is None:
            return None
        result = []
        for size in sizes:
            d = list(dims)
            d[axis] = int(size)
            result.append(d)
        return result
    return None


WINDOW_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool"}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


def reduce_dims(node, ctx, dims):
    """[dims] of a Reduce* output: the reduced axes kept as 1 (keepdims, the default) or dropped;
    no axes reduces every axis, or none with noop_with_empty_axes. None when the axes input is
    not known."""
    attrs = attributes(node)
    if len(node.input) > 1 and node.input[1] and _value(ctx, node.input[1]) is None:
        return None
    axes = _axes(node, ctx, len(dims))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [list(dims)]
        axes = list(range(len(dims)))
    if attrs.get("keepdims", 1):
        return [[1 if i in axes else d for i, d in enumerate(dims)]]
    return [[d for i, d in enumerate(dims) if i not in axes]]


def window_dims(node, ctx, dims):
    """[dims] of a Conv or pooling output: per spatial axis, with k the kernel, s the stride,
    d the dilation and pads p_b, p_e (auto_pad resolved as ONNX does),
        out = floor_or_ceil((size + p_b + p_e - (k - 1) d - 1) / s) + 1."""
    from .windows import pads_for
    attrs = attributes(node)
    n = len(dims) - 2
    if n < 1 or any(d is None for d in dims[2:]):
        return None
    if node.op_type == "Conv":
        weight = ctx.graph.static_dims(node.input[1])
        if not weight or len(weight) != len(dims) or any(w is None for w in weight):
            return None
        channels, kernel = weight[0], list(attrs.get("kernel_shape", weight[2:]))
    else:
        channels, kernel = dims[1], list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1] * n)) or [1] * n
    dilations = list(attrs.get("dilations", [1] * n)) or [1] * n
    if len(kernel) != n or len(strides) != n or len(dilations) != n:
        return None
    begins, ends = pads_for(attrs, dims[2:], kernel, strides, dilations)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    spatial = []
    for size, k, st, d, pb, pe in zip(dims[2:], kernel, strides, dilations, begins, ends):
        extent = size + pb + pe - (k - 1) * d - 1
        if extent < 0:
            return None
        out = (-(-extent // st) if ceil_mode else extent // st) + 1
        if ceil_mode and (out - 1) * st >= size + pb:   # the last window may not start in the padding
            out -= 1
        spatial.append(out)
    return [[dims[0], channels] + spatial]


def expand_dims(dims, shape):
    """[dims] of Expand(x, shape): x's dims and ``shape`` broadcast, both right-aligned."""
    if shape is None:
        return None
    rank = max(len(dims), len(shape))
    dims = [1] * (rank - len(dims)) + list(dims)
    shape = [1] * (rank - len(shape)) + [int(t) for t in shape]
    out = []
    for d, t in zip(dims, shape):
        if t == BATCH_DEPENDENT:
            out.append(None)
        elif d is None:
            out.append(None if t == 1 else t)
        elif d != 1 and t != 1 and d != t:
            return None
        else:
            out.append(max(d, t))
    return [out]


def _exact(ctx, name):
    """A constant or shape-arithmetic value that does not depend on the batch size, else None."""
    value = _value(ctx, name)
    if value is None or (ctx.graph.constant_value(name) is None and np.any(value == BATCH_DEPENDENT)):
        return None
    return value


def slice_dims(node, ctx, dims):
    """[dims] of a Slice (bounds as inputs, or as attributes before opset 10), or None.

    Exporters compute chunk bounds from Shape ((n + 2) // 3 * i for q, k, v), which shape
    inference does not follow; evaluated here, they give the output's static dims, so the
    Shape -> Sqrt scale of the attention after it is known too. Length per axis is Python's
    slice arithmetic, which clamps start and end the way the ONNX Slice spec does."""
    attrs = attributes(node)
    if len(node.input) >= 3:
        starts, ends = _exact(ctx, node.input[1]), _exact(ctx, node.input[2])
        axes = _exact(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = _exact(ctx, node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if (len(node.input) > 3 and node.input[3] and axes is None) or \
                (len(node.input) > 4 and node.input[4] and steps is None):
            return None
    else:
        starts, ends = attrs.get("starts"), attrs.get("ends")
        axes, steps = attrs.get("axes"), None
    if starts is None or ends is None:
        return None
    starts, ends = [int(v) for v in starts], [int(v) for v in ends]
    axes = list(range(len(starts))) if axes is None else [int(a) % len(dims) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        return None
    out = list(dims)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        out[axis] = None if dims[axis] is None else len(range(*slice(start, end, step).indices(dims[axis])))
    return [out]


def pad_dims(node, ctx, dims):
    """[dims] of a Pad: each axis grows by its begin and end pads (negative ones crop)."""
    attrs = attributes(node)
    if len(node.input) > 1 and node.input[1]:
        pads = _exact(ctx, node.input[1])
    else:
        pads = attrs.get("pads")
    if pads is None:
        return None
    axes = _exact(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else range(len(dims))
    if axes is None:
        return None
    axes = [int(a) % len(dims) for a in axes]
    if len(pads) != 2 * len(axes):
        return None
    out = list(dims)
    for i, axis in enumerate(axes):
        if out[axis] is not None:
            out[axis] = out[axis] + int(pads[i]) + int(pads[i + len(axes)])
    return [out]


def concat_dims(node, ctx):
    """[dims] of a Concat: lengths along its axis add up, the other axes agree."""
    shapes = []
    for name in node.input:
        dims = ctx.graph.static_dims(name) if name else None
        if dims is None or None in dims[1:]:
            # a constant's own shape (ViT's class token expanded over the batch is kept at batch 1)
            value = ctx.graph.constant_value(name) if name else None
            if value is None and dims is None:
                return None
            if value is not None and (dims is None or np.ndim(value) == len(dims)):
                dims = [None if dims is None else dims[0]] + list(np.shape(value))[1:]
        shapes.append(dims)
    rank = len(shapes[0])
    if any(len(d) != rank for d in shapes):
        return None
    axis = int(attributes(node).get("axis", 0)) % rank
    out = []
    for i in range(rank):
        column = [d[i] for d in shapes]
        if i == axis:
            out.append(None if None in column else int(sum(column)))
        else:
            known = {c for c in column if c is not None}
            out.append(known.pop() if len(known) == 1 else None)
    return [out]


def matmul_dims(a, b):
    """[dims] of A @ B (numpy matmul rules): batch dims broadcast, then (M, K) @ (K, N)."""
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    batch_a, batch_b = a[:-2], b[:-2]
    rank = max(len(batch_a), len(batch_b))
    batch_a = [1] * (rank - len(batch_a)) + list(batch_a)
    batch_b = [1] * (rank - len(batch_b)) + list(batch_b)
    batch = []
    for x, y in zip(batch_a, batch_b):
        if x == 1 or y == 1:
            batch.append(y if x == 1 else x)
        elif x is None or y is None:
            batch.append(x if y is None else y)
        elif x == y:
            batch.append(x)
        else:
            return None
    return [batch + [a[-2], b[-1]]]


def broadcast_dims(node, ctx):
    """[dims] of an elementwise op's output: its inputs' dims broadcast (None where unknown)."""
    shapes = []
    for name in node.input:
        if not name:
            continue
        dims = ctx.graph.static_dims(name)
        if dims is None:
            value = ctx.graph.constant_value(name)
            if value is None:
                return None
            dims = list(np.shape(value))
        shapes.append(dims)
    if not shapes:
        return None
    rank = max(len(d) for d in shapes)
    out = []
    for i in range(rank):
        column = [d[i - rank + len(d)] for d in shapes if i - rank + len(d) >= 0]
        sized = {c for c in column if c is not None and c != 1}
        if len(sized) > 1:
            return None
        out.append(sized.pop() if sized else (1 if all(c == 1 for c in column) else None))
    return [out]


def fill_dims(node, ctx, elementwise: bool = False) -> None:
    """Record worked-out dims for outputs whose static dims are missing some entries."""
    try:
        worked = broadcast_dims(node, ctx) if elementwise else output_dims(node, ctx)
    except (ValueError, IndexError, TypeError):
        return
    if not worked:
        return
    for name, dims in zip(node.output, worked):
        current = ctx.graph.static_dims(name)
        if not name or current == dims:
            continue
        if current is None or (len(current) == len(dims) and
                               sum(d is None for d in current) > sum(d is None for d in dims)):
            ctx.graph.dims_override[name] = dims
