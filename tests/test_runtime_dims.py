"""Dims that shape inference leaves open but the shape arithmetic fixes: chunked q/k/v, rolls, pads.

timm's CoAtNet splits q, k and v with Slice bounds computed from Shape ((n + 2) // 3 * i) and
scales by a Sqrt of a Shape; Swin rolls windows with Slice + Concat and pads with computed pads.
ONNX shape inference leaves those outputs without dims, so before dims.py worked them out the
attention was passed through unchanged (CoAtNet-0's attention projections measured 1,000-16,000
after autoinit). Built here with onnx.helper, batch dynamic, checked with ONNX Runtime.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.measure import gaussian_feeds, measure

TOKENS, WIDTH = 12, 32


def _const(name, value, dtype=np.int64):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))


def chunked_attention_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
               for n, s in (("w_qkv", (WIDTH, 3 * WIDTH)), ("w_proj", (WIDTH, WIDTH)), ("w_out", (WIDTH, WIDTH)))]
    nodes = [
        helper.make_node("MatMul", ["x", "w_qkv"], ["qkv"]),
        # chunk(3, dim=-1) as torch exports it: bounds from the runtime shape
        helper.make_node("Shape", ["qkv"], ["qkv_shape"]),
        _const("last", [-1]), _const("two", [2]), _const("three", [3]), _const("one", [1]), _const("zero", [0]),
        helper.make_node("Gather", ["qkv_shape", "last"], ["n"], axis=0),
        helper.make_node("Add", ["n", "two"], ["n2"]),
        helper.make_node("Div", ["n2", "three"], ["part"]),
        helper.make_node("Mul", ["part", "two"], ["part2"]),
        helper.make_node("Mul", ["part", "three"], ["part3"]),
        helper.make_node("Slice", ["qkv", "zero", "part", "last"], ["q"]),
        helper.make_node("Slice", ["qkv", "part", "part2", "last"], ["k"]),
        helper.make_node("Slice", ["qkv", "part2", "part3", "last"], ["v"]),
        # scale = 1 / sqrt(q.shape[-1])
        helper.make_node("Shape", ["q"], ["q_shape"]),
        helper.make_node("Gather", ["q_shape", "last"], ["d"], axis=0),
        helper.make_node("Cast", ["d"], ["d_float"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["d_float"], ["sqrt_d"]),
        helper.make_node("Div", ["q", "sqrt_d"], ["q_scaled"]),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q_scaled", "k_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["mixed"]),
        helper.make_node("MatMul", ["mixed", "w_proj"], ["proj"]),
        # a roll by 2 along the tokens (Slice + Concat) and a computed pad of 0 rows back
        helper.make_node("Slice", ["proj", "minus_two", "big", "one"], ["tail"]),
        helper.make_node("Slice", ["proj", "zero", "minus_two", "one"], ["head"]),
        _const("minus_two", [-2]), _const("big", [2 ** 62]),
        helper.make_node("Concat", ["tail", "head"], ["rolled"], axis=1),
        helper.make_node("Sub", ["n", "n"], ["no_pad"]),
        helper.make_node("Concat", ["zero", "zero", "zero", "zero", "no_pad", "zero"], ["pads"], axis=0),
        helper.make_node("Pad", ["rolled", "pads"], ["padded"]),
        helper.make_node("LayerNormalization", ["padded", "ln_scale"], ["normed"], axis=-1),
        helper.make_node("MatMul", ["normed", "w_out"], ["y"]),
    ]
    # Constants before their first use, as exporters write them
    nodes.sort(key=lambda n: 0 if n.op_type == "Constant" else 1)
    weights.append(numpy_helper.from_array(np.ones(WIDTH, np.float32), "ln_scale"))
    graph = helper.make_graph(
        nodes, "chunked_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", TOKENS, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", TOKENS, WIDTH])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_computed_chunks_rolls_and_pads_keep_static_dims():
    model, report = onnxinit.autoinit(chunked_attention_model(), seed=0, return_report=True)
    assert not report.fallbacks, report.warnings
    assert not [w for w in report.warnings if "passed through" in w], report.warnings
    outputs = {n.name or n.output[0]: n.output[0] for n in model.graph.node}
    names = [outputs[r.node] for r in report.layers]
    assert len(names) == 3
    measured = measure(model, names, gaussian_feeds(model, 512, np.random.default_rng(1)))
    for r, name in zip(report.layers, names):
        assert 0.8 <= measured[name][1] <= 1.25, (r.node, measured[name])


def test_sum_of_two_streams_with_shared_parts_stays_one_gaussian():
    """Two independent streams, each with a per-sample (pooled) and a per-position part, added:
    exactly Gaussian, so two roots (not the four-root product grid that made CoAtNet-0's
    propagation take 75 s), with the inputs' site statistics added up."""
    from onnxinit.graph import Graph
    from onnxinit.moments import Moments
    from onnxinit.propagate import propagate
    from onnxinit.rules import RuleTable
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3, f"w{i}")
               for i in range(4)]
    nodes = []
    for s in (0, 1):
        nodes += [helper.make_node("Conv", ["x", f"w{2 * s}"], [f"a{s}"]),
                  helper.make_node("Conv", ["x", f"w{2 * s + 1}"], [f"b{s}"]),
                  helper.make_node("GlobalAveragePool", [f"b{s}"], [f"p{s}"]),
                  helper.make_node("Add", [f"a{s}", f"p{s}"], [f"s{s}"])]
    nodes.append(helper.make_node("Add", ["s0", "s1"], ["t"]))
    graph = helper.make_graph(nodes, "streams",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 6, 6])],
                              [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 8, 6, 6])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ctx = propagate(Graph(model), RuleTable(()), Moments(0.0, 1.0))
    for s in ("s0", "s1"):   # (released once read: their moments stay) a shared and a per-position part each
        assert ctx.moments[s].shared > 0.02 * ctx.moments[s].var and ctx.moments[s].within > 0
    total = ctx.signals["t"]
    assert len(total.roots) <= 2 and total.affine
    m0, m1, mt = ctx.moments["s0"], ctx.moments["s1"], ctx.moments["t"]
    assert abs(mt.var - (m0.var + m1.var)) < 1e-9 * mt.var
    assert abs(mt.shared - (m0.shared + m1.shared)) < 1e-9 * mt.var
