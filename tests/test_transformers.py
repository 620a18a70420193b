"""A BERT-style export with token ids: every op has a rule, the result runs, the first block is predicted."""
import json

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort

import onnxinit
from conftest import ALL_SAMPLES
from onnxinit.measure import gaussian_feeds, measure

BERT = next(p for p in ALL_SAMPLES if p.stem == "bert_tiny")


def test_bert_autoinit_rules_every_op_and_runs():
    model, report = onnxinit.autoinit(BERT, seed=1, return_report=True)
    onnx.checker.check_model(model)
    assert not report.fallbacks, report.fallbacks
    assert {"gather", "layernorm", "split"} <= set(report.kinds_used)
    assert [e["table"] for e in report.extra["embeddings"]] == ["tok.weight"]
    assert "embedding tables initialized: 1" in report.summary()
    schema = json.loads((BERT.parent.parent / "docs" / "report-schema.json").read_text())
    jsonschema.validate(json.loads(report.to_json()), schema)
    table = next(t for t in model.graph.initializer if t.name == "tok.weight")
    rows = onnx.numpy_helper.to_array(table).astype(np.float64)
    assert np.abs(rows.mean(axis=0)).max() < 1e-5 and abs(np.mean(rows ** 2) - 1) < 1e-3
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = gaussian_feeds(model, 64, np.random.default_rng(0))
    assert feeds["input"].dtype == np.int64 and feeds["input"].max() < 1000
    out = session.run(None, feeds)[0]
    assert np.all(np.isfinite(out)) and 0.1 < out.var() < 10


def _predicted_and_measured(path, seed=1, batch=256):
    model, report = onnxinit.autoinit(path, seed=seed, return_report=True)
    outputs = {n.name: n.output[0] for n in model.graph.node}
    names = [outputs[r.node] for r in report.layers]
    measured = measure(model, names, gaussian_feeds(model, batch, np.random.default_rng(0)))
    return model, report, [(r, measured[n][1]) for r, n in zip(report.layers, names)]


def test_bert_every_block_predicted():
    """Both blocks of the BERT-style export within 10% of ONNX Runtime (the 10-unit head 15%).

    The second block's attention reads tokens the first one mixed: its values share a part
    constant over the keys, which the softmax-weighted average keeps whole (before the
    attention_mix rule, the projection after it measured 2.7 for a predicted 1)."""
    _, report, layers = _predicted_and_measured(BERT)
    assert len(layers) == 9
    for r, var in layers:
        tolerance = 0.15 if r.op_type == "Gemm" else 0.1   # the 10-unit head: few units, more spread
        assert abs(r.output.var - var) <= tolerance * var, (r.node, r.output.var, var)


def test_second_block_softmax_sees_only_what_varies_along_its_row():
    """In the second block the keys share a part over the tokens (the first attention mixed
    them), so q_i . k_j has a part equal for every key j of row i, which the softmax cancels.
    Counted as spread along the row, the softmax came out too peaked: E[p^2] predicted 15%
    above ONNX Runtime's (4 seeds, 0.85 +- 0.016); now carried as the shared part, within 5%."""
    from onnxinit.inspect import inspect_model
    model = onnxinit.autoinit(BERT, seed=2)
    result = inspect_model(model, measure_signal=True, batch=256, all_tensors=True)
    rows = {r.node: r for r in result.rows}
    for name in ("/Softmax", "/Softmax_1"):
        r = rows[name]
        predicted = r.predicted.var + r.predicted.mean ** 2
        measured = r.measured[1] + r.measured[0] ** 2
        assert abs(measured / predicted - 1) < 0.05, (name, predicted, measured)


def test_training_mode_transformer_weights_through_transpose():
    """A training-mode export without constant folding feeds every Linear weight to its MatMul
    through a Transpose: all 16 are initialized (written into the initializer behind the
    Transpose, the right way round) and measure in [0.8, 1.35]; predictions within 10% for the first two blocks and
    30% for the last two, where the part of the signal the attentions made equal across tokens
    grows and our per-channel statistics, which treat channels as independent, follow a
    64-wide realized network less closely (BERT-base, 768 wide: within 7%, README)."""
    path = next(p for p in ALL_SAMPLES if p.stem == "bert_train")
    original = onnx.load(path)
    model, report, layers = _predicted_and_measured(path)
    matmuls = [r for r in report.layers if r.op_type == "MatMul"]
    assert len(matmuls) == 16 and all(r.weight.endswith("Transpose_output_0") for r in matmuls)
    before = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {n.output[0]: n for n in model.graph.node}
    for r in matmuls:
        source = producers[r.weight].input[0]
        assert not np.array_equal(before[source], after[source]), source
        w = after[source].T.astype(np.float64)                     # what the MatMul multiplies: (in, out)
        # AutoInit centers every input's weights across the output units; written the wrong
        # way round, the sums would be over the inputs instead
        assert np.abs(w.sum(axis=1)).max() < 1e-4 * np.abs(w).max(), r.node
        assert np.abs(w.sum(axis=0)).max() > 1e-2 * np.abs(w).max(), r.node
    for i, (r, var) in enumerate(layers):
        assert 0.8 <= var <= 1.35, (r.node, var)
        tolerance = 0.1 if i < 8 else 0.3
        assert abs(r.output.var - var) <= tolerance * var, (r.node, r.output.var, var)


def test_vit_with_multihead_attention():
    """nn.MultiheadAttention exported in training mode works seq-first inside: q, k, v packed
    on axis 0 and picked with Gather, head reshapes with computed targets, the scale as
    Sqrt of a shape, the attention output flattened to (tokens x batch, E) rows for its
    projection and reshaped back. Every op has a rule; every layer measures in
    [0.8, 1.3] and is predicted within 25% (the first block's projection is the worst, about
    20%: before the share common to all tokens was carried across the rows, the later
    projections measured 0.50-0.57)."""
    path = next(p for p in ALL_SAMPLES if p.stem == "vit_mha")
    model, report, layers = _predicted_and_measured(path, batch=512)
    assert not report.fallbacks, report.warnings
    assert len(layers) == 14     # patch conv, 3 x (in_proj, out_proj, fc1, fc2), head
    for r, var in layers:
        assert 0.8 <= var <= 1.3, (r.node, var)
        assert abs(r.output.var - var) <= 0.25 * var, (r.node, r.output.var, var)


def test_seq_first_attention_keeps_unit_offsets_through_its_head_reshapes():
    """nn.MultiheadAttention's (tokens, batch, 3, width) projection goes through Unsqueeze(0),
    Transpose and Squeeze before q, k and v are picked, then (tokens, batch x heads, width /
    heads) reshapes. Unsqueeze and Squeeze keep every site; the head reshape keeps as common
    to all tokens each unit's mean offset (the same for every token: the softmax-weighted
    average passes it on whole). E[y^2] of the attention-weighted values of both later blocks,
    predicted / measured over four draws: 0.98-1.12 (before: 0.77-0.95, the unit offsets
    averaged over the keys as if they varied from token to token)."""
    from onnxinit.inspect import inspect_model
    path = next(p for p in ALL_SAMPLES if p.stem == "vit_mha")
    for seed in range(4):
        model = onnxinit.autoinit(path, seed=seed)
        rows = inspect_model(model, measure_signal=True, batch=1024, all_tensors=True).rows
        mixed = [r for r in rows if r.node.startswith(("/attn_1/", "/attn_2/")) and r.node.endswith("/MatMul_2")]
        assert len(mixed) == 2
        for r in mixed:
            predicted, measured = r.predicted.second_moment, r.measured[1] + r.measured[0] ** 2
            assert abs(predicted / measured - 1) < 0.15, (seed, r.node, predicted, measured)


def _attention(seq):
    """x (batch, seq, 8) -> q, k, v -> softmax(q k^T / sqrt 8) v -> output projection."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n) for n in "qkvo"]
    inits.append(numpy_helper.from_array(np.array(np.sqrt(8), np.float32), "scale"))
    nodes = [helper.make_node("MatMul", ["x", n], [n + "x"], name=n) for n in "qkv"]
    nodes += [helper.make_node("Transpose", ["kx"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["qx", "kt"], ["scores"]), helper.make_node("Div", ["scores", "scale"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vx"], ["mixed"]),
              helper.make_node("MatMul", ["mixed", "o"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_symbolic_sequence_length_is_analysed_at_the_default_size():
    """An export with a dynamic sequence axis ('batch', 'seq', 8) is analysed with the symbolic
    dim taken as graph.SYMBOLIC_DIM: the attention keeps its rules (without a static key count
    the value mix fell back), the predictions equal those of the same graph declared with 16
    tokens, and the written model keeps its symbolic dim."""
    from onnxinit.graph import SYMBOLIC_DIM
    _, expected = onnxinit.autoinit(_attention(SYMBOLIC_DIM), seed=1, return_report=True)
    model, report = onnxinit.autoinit(_attention("seq"), seed=1, return_report=True)
    assert "MatMul" not in report.fallbacks, report.fallbacks
    assert report.fallbacks == expected.fallbacks
    assert [(r.node, round(r.output.var, 9)) for r in report.layers] == \
        [(r.node, round(r.output.var, 9)) for r in expected.layers]
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "seq"


def _self_attention(width=32, tokens=16, heads=2, seed=0, causal=False, pooled=False):
    """x (N, T, D) -> q, k, v (random weights) -> softmax(q k^T / sqrt(d)) v, heads split (rank 4).
    ``causal``: scores above the diagonal masked to -inf (Where); ``pooled``: the output averaged
    over the queries, per head and value unit (units to axis 1, GlobalAveragePool), which keeps
    what is common to all queries."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    d = width // heads
    inits = [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), n)
             for n in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.array([0, tokens, heads, d], np.int64), "split_heads"),
              numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale")]
    nodes = []
    for n in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}0"]),
                  helper.make_node("Reshape", [f"{n}0", "split_heads"], [f"{n}1"]),
                  helper.make_node("Transpose", [f"{n}1"], [f"{n}h"], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["qh", "kt"], ["s0"]),
              helper.make_node("Mul", ["s0", "scale"], ["s" if not causal else "s1"])]
    if causal:
        inits += [numpy_helper.from_array(np.triu(np.ones((tokens, tokens), bool), 1), "future"),
                  numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf")]
        nodes.append(helper.make_node("Where", ["future", "minus_inf", "s1"], ["s"]))
    nodes += [helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["y" if not pooled else "mixed"])]
    if pooled:
        nodes += [helper.make_node("Transpose", ["mixed"], ["units_first"], perm=[0, 3, 1, 2]),
                  helper.make_node("GlobalAveragePool", ["units_first"], ["y"])]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_softmax_weighted_values_see_the_score_direction():
    """Scores and values read the same tokens: each value channel has about 1/D of its variance
    along the score direction, and the softmax favours keys whose scores (so values) are large
    in magnitude. E[(P @ V)^2] measured 18-25% above the independent product at width 32 (4
    weight draws; 10-14% at width 64, 31-43% at 16); with the tilt statistic from the softmax's
    Monte Carlo (montecarlo.softmax_tilt), -0.4% to +5% (-5% to +7% at width 16)."""
    from onnxinit.graph import Graph
    from onnxinit.moments import Moments
    from onnxinit.propagate import propagate
    from onnxinit.rules import RuleTable
    for seed in range(4):
        model = _self_attention(seed=seed)
        ctx = propagate(Graph(model), RuleTable(()), Moments(0.0, 1.0))
        assert ctx.softmax_tilt, ctx.warnings
        x = np.random.default_rng(7).standard_normal((4096, 16, 32)).astype(np.float32)
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        predicted, measured = ctx.moments["y"].second_moment, float(np.mean(y.astype(np.float64) ** 2))
        assert abs(predicted / measured - 1) < 0.06, (seed, predicted, measured)


def test_causal_attention_output_shares_what_its_queries_read_together():
    """Under a causal mask query q reads keys 0..q: two queries share the keys of the earlier
    one, so the part of the attention-weighted values common to all queries is
    E[sum_k p_qk p_q'k] W (montecarlo.query_overlap), not W / K as for rows spread over every
    key. Averaged over the queries (what a second attention over these tokens, or a pooling,
    keeps), E[y^2] predicted / measured is 0.95 and 0.98 for two weight draws (16 tokens);
    with W / K it was 0.63 and 0.65."""
    from onnxinit.graph import Graph
    from onnxinit.moments import Moments
    from onnxinit.propagate import propagate
    from onnxinit.rules import RuleTable
    for seed in range(2):
        model = _self_attention(seed=seed, heads=1, causal=True, pooled=True)
        ctx = propagate(Graph(model), RuleTable(()), Moments(0.0, 1.0))
        assert ctx.query_overlap and not ctx.fallbacks, ctx.warnings
        x = np.random.default_rng(7).standard_normal((4096, 16, 32)).astype(np.float32)
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        predicted, measured = ctx.moments["y"].second_moment, float(np.mean(y.astype(np.float64) ** 2))
        assert abs(predicted / measured - 1) < 0.06, (seed, predicted, measured)


def test_scores_keep_what_differs_from_key_to_key_in_the_keys_means():
    """Tokens plus a position table (BERT's embeddings), LayerNorm, q and k, softmax: each key's
    mean differs from token to token (its position row), a fixed pattern along the keys that
    the softmax does not cancel. Counted with what is equal for every key (as pooled moments
    count the spread of site means), it made the softmax twice too flat: on BERT-base the
    first softmax's variance was predicted 0.0021 for a measured 0.0045 and the attention
    projection after it measured 1.43 for a predicted 1; now 0.0043 and 1.04. Here the softmax
    output's variance, predicted / measured: 1.11 (0.57 before; the scores themselves carry
    no sites, so the fixed pattern is drawn as if it changed from sample to sample)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxinit.graph import Graph
    from onnxinit.moments import Moments
    from onnxinit.propagate import propagate
    from onnxinit.rules import RuleTable
    tokens, width = 16, 32
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((1, tokens, width)).astype(np.float32), "positions"),
             numpy_helper.from_array(np.ones(width, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(width, np.float32), "beta"),
             numpy_helper.from_array(np.array(1 / np.sqrt(width), np.float32), "scale")]
    inits += [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), n)
              for n in ("wq", "wk")]
    nodes = [helper.make_node("Add", ["x", "positions"], ["e"]),
             helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "wq"], ["q"]), helper.make_node("MatMul", ["h", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s"]),
             helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "scores", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    ctx = propagate(Graph(model), RuleTable(()), Moments(0.0, 1.0))
    x = np.random.default_rng(7).standard_normal((4096, tokens, width)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    predicted, measured = ctx.moments["y"].var, float(np.var(y.astype(np.float64)))
    assert abs(predicted / measured - 1) < 0.15, (predicted, measured)


def _every_layer_predicted(stem, seeds=(0, 1), tolerance=0.15):
    """autoinit a sample per seed: no fallback or warning, and every weighted layer's predicted
    variance within ``tolerance`` of ONNX Runtime's (batch 512); the reports, for more checks."""
    path = next(p for p in ALL_SAMPLES if p.stem == stem)
    reports = []
    for seed in seeds:
        _, report, layers = _predicted_and_measured(path, seed=seed, batch=512)
        assert not report.fallbacks and not report.warnings, report.warnings
        for r, var in layers:
            assert abs(r.output.var - var) <= tolerance * var, (seed, r.node, r.output.var, var)
        reports.append(report)
    return reports


def test_roberta_style_ids_positions_and_masked_fill_are_followed():
    """transformers' RoBERTa (samples/roberta_tiny.onnx, made the same way): position ids are
    computed from the token ids (cumsum of ids != padding), so they counted as input-dependent
    and the position rows as random per token; Equal(ids, padding id) is False for ids drawn
    over the table, and the positions fold to 2..T+1, one fixed row per token. Token type ids
    are a zero buffer gathered at those positions (GatherElements): row 0 everywhere. And the
    softmax goes through Where(mask == 0, 0, p), a known condition picking p everywhere, before
    the values. Worst weighted layer, |predicted - measured| / measured, over seeds 0-3: 7-20%
    (71-84% before, the second block's attention projection measured 2.9 for a predicted 1)."""
    for report in _every_layer_predicted("roberta_tiny"):
        assert len(report.extra["embeddings"]) == 3


def test_feed_forward_on_token_rows_keeps_each_units_offset():
    """OPT (samples/opt_tiny.onnx, made the same way) runs its feed-forward block on the tokens
    flattened to (N·T, D) rows and reshapes the residual sum back. Pooled to one Gaussian there,
    each unit's fixed offset became variance common to all units and tokens, and the next
    attention's values kept it whole: its projection measured 0.5 for a predicted 1 (worst
    layer 73-99% off over seeds 0-3, 2-14% now)."""
    _every_layer_predicted("opt_tiny")


def test_heads_merged_into_the_batch_keep_what_each_token_carries():
    """DeBERTa-style attention (samples/deberta_tiny.onnx): heads merged into the batch, (N, H,
    T, d) -> (N·H, T, d), and the softmax viewed as (N, H, T, T) and back before the values. The
    reshape back hid the softmax from the attention rule (the product of independent factors
    instead), and the merge pooled each token's fixed position pattern into variance shared by
    all tokens: the second attention projection measured 2.6-3.1 for a predicted 1 (worst layer
    66-70% off over seeds 0-3, 6-13% now)."""
    _every_layer_predicted("deberta_tiny")


def test_position_table_above_the_cache_limit_is_drawn_as_an_embedding():
    """A 2 MB position table gathered at constant ids (GPT-2's wpe is 3 MB) is folded and drawn
    like the token table; only moves through Identity / Transpose / Reshape skip folding large
    weights (a weight view reads them)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (1000, 512)).astype(np.float32), "tok"),
             numpy_helper.from_array(rng.normal(0, 1, (1024, 512)).astype(np.float32), "pos"),
             numpy_helper.from_array(np.arange(16, dtype=np.int64), "ids16"),
             numpy_helper.from_array(rng.normal(0, 1, (512, 512)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["tok", "ids"], ["t"]), helper.make_node("Gather", ["pos", "ids16"], ["p"]),
             helper.make_node("Add", ["t", "p"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, report = onnxinit.autoinit(model, return_report=True)
    assert [e["table"] for e in report.extra["embeddings"]] == ["tok", "pos"]
    assert not report.fallbacks and not report.warnings


def test_token_type_table_read_at_one_constant_row_is_a_zero_bias():
    """BERT's token_type_ids buffer (zeros, expanded to the batch) reads row 0 of the type table
    for every token: drawn as an embedding row of variance 1 it added one fixed vector to every
    token (a third of the stream's variance after the position table, common to all tokens).
    Row 0 is now 0 like any bias, the other rows drawn relative to it."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.02, (1000, 64)).astype(np.float32), "tok"),
             numpy_helper.from_array(rng.normal(0, 0.02, (2, 64)).astype(np.float32), "types"),
             numpy_helper.from_array(np.zeros((1, 16), np.int64), "type_buffer"),
             numpy_helper.from_array(rng.normal(0, 0.02, (64, 64)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["tok", "ids"], ["t"]), helper.make_node("Shape", ["ids"], ["shape"]),
             helper.make_node("Expand", ["type_buffer", "shape"], ["type_ids"]),
             helper.make_node("Gather", ["types", "type_ids"], ["k"]), helper.make_node("Add", ["t", "k"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    new, report = onnxinit.autoinit(model, return_report=True)
    types = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == "types"))
    assert np.all(types[0] == 0) and abs(np.sqrt(np.mean(types[1] ** 2)) - 1) < 1e-5
    assert abs(report.layers[0].input.var - 1) < 1e-6
    feeds = {"ids": np.random.default_rng(1).integers(0, 1000, (256, 16)).astype(np.int64)}
    measured = measure(new, ["h", "y"], feeds)
    assert abs(measured["h"][1] - 1) < 0.1 and abs(measured["y"][1] - 1) < 0.15, measured


def test_seq_first_token_ids_through_a_transpose_index_the_table():
    """XLNet transposes its (batch, seq) token ids to seq-first before the lookup: the ids are
    still token ids (random rows when measuring, an embedding drawn for unit variance), not a
    mask taken as all ones (which made every token read row 1, drawn as a zero bias)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxinit.measure import index_range
    rng = np.random.default_rng(0)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["ids"], ["ids_t"], perm=[1, 0]),
             helper.make_node("Gather", ["table", "ids_t"], ["e"]),
             helper.make_node("MatMul", ["e", "w"], ["y"])]
    inits = [numpy_helper.from_array(rng.normal(0, 0.02, (50, 16)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 0.02, (16, 16)).astype(np.float32), "w")]
    model = helper.make_model(helper.make_graph(nodes, "seq_first", [ids], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert index_range(model, "ids") == 50
    init, report = onnxinit.autoinit(model, seed=0, return_report=True)
    assert not report.warnings, report.warnings
    measured = measure(init, ["e", "y"], gaussian_feeds(init, 512, np.random.default_rng(1)))
    for name in ("e", "y"):
        assert 0.9 <= measured[name][1] <= 1.1, (name, measured[name])


def test_scores_read_by_a_shape_still_feed_their_softmax():
    """RoBERTa's export reads the scaled scores' shape (for the mask) on their way to the
    softmax; the Shape reads no values, so the scores still feed a row softmax (their part
    equal for every key is carried as shared, and the softmax draws them from q and k)."""
    from onnxinit.graph import Graph
    from onnxinit.kinds.transformer import feeds_row_softmax
    from onnxinit.moments import Moments
    from onnxinit.propagate import propagate
    from onnxinit.rules import RuleTable
    path = next(p for p in ALL_SAMPLES if p.stem == "roberta_tiny")
    graph = Graph(onnx.load(str(path)))
    scores = [n.output[0] for n in graph.nodes if n.op_type == "MatMul" and
              all(i in graph.signal_tensors for i in n.input)]
    readers = {c.op_type for name in scores for c in graph.consumers[graph.consumers[name][0].output[0]]}
    assert "Shape" in readers and "Softmax" in readers
    ctx = propagate(graph, RuleTable(()), Moments(0.0, 1.0))
    assert sum(feeds_row_softmax(name, ctx) for name in scores) == 2


def test_class_token_expanded_over_the_batch_keeps_the_token_count():
    """timm's PiT writes cls_token.expand(B, -1, -1) as Expand to Where(shape == -1, 1, shape),
    a shape ONNX shape inference cannot read, so the Concat with the patch tokens had an
    unknown token count and every softmax after it went to the fallback ("unknown row length",
    statistics passed through: PiT-Ti's attention projections measured 0.001-0.01 for 1). The
    class token is known at batch 1, so its own shape gives the count."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    width = 8
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("cls", rng.standard_normal((1, 1, width)).astype(np.float32)),
        ("zero", np.array([0], np.int64)), ("minus", np.array([-1, -1], np.int64)),
        ("ones", np.ones(3, np.int64)), ("m1", np.array(-1, np.int64)),
        ("wq", rng.standard_normal((width, width)).astype(np.float32)),
        ("wk", rng.standard_normal((width, width)).astype(np.float32)),
        ("wv", rng.standard_normal((width, width)).astype(np.float32))]]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["batch"]),
             helper.make_node("Concat", ["batch", "minus"], ["target"], axis=0),
             helper.make_node("Equal", ["target", "m1"], ["free"]),
             helper.make_node("Where", ["free", "ones", "target"], ["expand_to"]),
             helper.make_node("Expand", ["cls", "expand_to"], ["cls_tokens"]),
             helper.make_node("Concat", ["cls_tokens", "x"], ["tokens"], axis=1)]
    for name in "qkv":
        nodes.append(helper.make_node("MatMul", ["tokens", f"w{name}"], [name]))
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, report = onnxinit.autoinit(model, return_report=True)
    assert not report.fallbacks, report.warnings
    assert report.kinds_used.get("softmax") == 1
