"""Prepare a training graph for ONNX Runtime's gradient builder: rewrites kept as data.

The table (``rules/train_rewrites.toml``) maps an op type to an action; each action is
implemented once here:

* ``add_outputs``: the node gets ``count`` outputs (fresh names for the missing ones);
* ``identity``: ``y = x`` (the node's other outputs must be unused);
* ``expression``: the node becomes the ONNX nodes of an arithmetic expression in ``x``,
  e.g. HardSwish ``x * clip(alpha * x + beta, 0, 1)``, built from ops that have gradients;
* ``depthwise_conv``: an AveragePool becomes a Conv with one filter per channel, every tap
  1/prod(kernel_shape) (exact when no padding is excluded from the count).

Rewrites keep the node's output names and its place in the node list.
"""
from __future__ import annotations

import ast
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxInitError
from ..graph import Graph

ACTIONS = ("add_outputs", "identity", "expression", "depthwise_conv")
_OPERATORS = {ast.Add: "Add", ast.Sub: "Sub", ast.Mult: "Mul", ast.Div: "Div"}
_FUNCTIONS = {"relu": ("Relu", 1), "exp": ("Exp", 1), "log": ("Log", 1), "abs": ("Abs", 1),
              "sqrt": ("Sqrt", 1), "tanh": ("Tanh", 1), "sigmoid": ("Sigmoid", 1),
              "min": ("Min", 2), "max": ("Max", 2), "clip": ("Clip", 3)}


def _table_text() -> tuple[str, str]:
    try:
        return resources.files("onnxinit._rules").joinpath("train_rewrites.toml").read_text(), "train_rewrites.toml"
    except (ModuleNotFoundError, FileNotFoundError):
        path = Path(__file__).resolve().parents[2] / "rules" / "train_rewrites.toml"
        return path.read_text(), str(path)


def _check_expression(op: str, expr: str, params: dict, source: str) -> None:
    """Only x, the entry's params, numbers, + - * / and the known functions."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise OnnxInitError(f"{source}: [{op}] expr {expr!r} is not an expression ({exc.msg})") from exc
    called = {id(item.func) for item in ast.walk(tree) if isinstance(item, ast.Call)}
    for item in ast.walk(tree):
        if isinstance(item, ast.Call):
            if not isinstance(item.func, ast.Name) or item.func.id not in _FUNCTIONS \
                    or len(item.args) != _FUNCTIONS[item.func.id][1] or item.keywords:
                raise OnnxInitError(f"{source}: [{op}] expr {expr!r}: unknown call {ast.unparse(item)!r} "
                                    f"(functions: {', '.join(sorted(_FUNCTIONS))})")
        elif isinstance(item, ast.Name):
            if id(item) not in called and item.id != "x" and item.id not in params:
                raise OnnxInitError(f"{source}: [{op}] expr {expr!r}: unknown name {item.id!r}")
        elif isinstance(item, ast.Constant):
            if not isinstance(item.value, (int, float)):
                raise OnnxInitError(f"{source}: [{op}] expr {expr!r}: only numbers may appear as constants")
        elif not isinstance(item, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.USub, ast.Load,
                                   *_OPERATORS)):
            raise OnnxInitError(f"{source}: [{op}] expr {expr!r}: {type(item).__name__} is not allowed")


def load_table(text: str | None = None, source: str = "train_rewrites.toml") -> dict[str, dict]:
    """op type -> entry (``action`` and its keys), checked."""
    if text is None:
        text, source = _table_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OnnxInitError(f"{source}: not a valid rewrites file ({exc})") from exc
    for op, entry in data.items():
        action = entry.get("action") if isinstance(entry, dict) else None
        if action not in ACTIONS:
            raise OnnxInitError(f"{source}: [{op}] needs an action among {', '.join(ACTIONS)}")
        if action == "add_outputs" and not isinstance(entry.get("count"), int):
            raise OnnxInitError(f"{source}: [{op}] add_outputs needs an integer count")
        if action == "expression":
            _check_expression(op, entry.get("expr", ""), entry.get("params", {}), source)
    return data


class _Expression:
    """Emits the ONNX nodes of one expression; the last node writes ``output``."""

    def __init__(self, node: onnx.NodeProto, params: dict, dtype: int, prefix: str):
        self.node, self.params, self.dtype, self.prefix = node, params, dtype, prefix
        self.nodes: list[onnx.NodeProto] = []

    def _name(self) -> str:
        return f"{self.prefix}/{len(self.nodes)}"

    def _emit(self, op: str, inputs: list, **attrs) -> str:
        out = self._name()
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _constant(self, value: float) -> str:
        array = np.array(value, dtype=helper.tensor_dtype_to_np_dtype(self.dtype))
        return self._emit("Constant", [], value=onnx.numpy_helper.from_array(array))

    def visit(self, item) -> str:
        if isinstance(item, ast.Expression):
            return self.visit(item.body)
        if isinstance(item, ast.Name):
            return self.node.input[0] if item.id == "x" else self._constant(self.params[item.id])
        if isinstance(item, ast.Constant):
            return self._constant(float(item.value))
        if isinstance(item, ast.UnaryOp):
            return self._emit("Neg", [self.visit(item.operand)])
        if isinstance(item, ast.BinOp):
            return self._emit(_OPERATORS[type(item.op)], [self.visit(item.left), self.visit(item.right)])
        op, _ = _FUNCTIONS[item.func.id]
        return self._emit(op, [self.visit(a) for a in item.args])

    def build(self, expr: str, output: str) -> list[onnx.NodeProto]:
        result = self.visit(ast.parse(expr, mode="eval"))
        if not self.nodes or self.nodes[-1].output[0] != result:   # the expression is x or a constant
            self._emit("Identity", [result])
        self.nodes[-1].output[0] = output
        return self.nodes


def _params(node: onnx.NodeProto, defaults: dict) -> dict:
    """Each parameter from the node's attribute of that name, else the table's default."""
    values = dict(defaults)
    for attr in node.attribute:
        if attr.name in values:
            values[attr.name] = float(helper.get_attribute_value(attr))
    return values


def _depthwise_conv(node: onnx.NodeProto, view: Graph, prefix: str) -> list[onnx.NodeProto]:
    """AveragePool(x) = Conv(x, W, group=C) with W[c, 0, ...] = 1/prod(kernel_shape)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kernel = list(attrs["kernel_shape"])
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    padded = any(pads) or auto_pad not in ("NOTSET", "VALID")
    dims = view.static_dims(node.input[0])
    channels = dims[1] if dims and len(dims) == len(kernel) + 2 else None
    if attrs.get("ceil_mode", 0) or (padded and not attrs.get("count_include_pad", 0)) or not channels:
        raise OnnxInitError(f"node {node.name or node.op_type}: this AveragePool (ceil_mode, padding left out of "
                            "the count, or an unknown channel count) has no gradient in ONNX Runtime 1.19")
    dtype = helper.tensor_dtype_to_np_dtype(view.elem_type(node.input[0]) or onnx.TensorProto.FLOAT)
    weight = np.full([channels, 1, *kernel], 1.0 / np.prod(kernel), dtype)
    conv_attrs = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "auto_pad")}
    return [helper.make_node("Constant", [], [prefix + "/filter"], name=prefix + "/filter",
                             value=onnx.numpy_helper.from_array(weight)),
            helper.make_node("Conv", [node.input[0], prefix + "/filter"], [node.output[0]], name=prefix,
                             group=channels, kernel_shape=kernel, **conv_attrs)]


def _require_unused(node: onnx.NodeProto, consumed: set, graph_outputs: set) -> None:
    for out in node.output[1:]:
        if out and (out in consumed or out in graph_outputs):
            raise OnnxInitError(f"node {node.name or node.op_type}: output {out!r} is used, "
                                f"so the {node.op_type} cannot be simplified for training")


def apply_rewrites(model: onnx.ModelProto, table: dict | None = None) -> dict:
    """Rewrite ``model``'s main graph in place; returns {op type: nodes rewritten}."""
    table = load_table() if table is None else table
    graph = model.graph
    view = Graph(model)   # element types and static dims, read before any node changes
    consumed = {name for n in graph.node for name in n.input}
    graph_outputs = {o.name for o in graph.output}
    counts: dict[str, int] = {}
    rewritten: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        entry = table.get(f"{domain}::{node.op_type}" if domain else node.op_type)
        if entry is None:
            rewritten.append(node)
            continue
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        prefix = f"{node.name or node.op_type}#{index}/train"
        action = entry["action"]
        if action == "add_outputs":
            outputs = list(node.output) + [""] * max(0, entry["count"] - len(node.output))
            del node.output[:]
            node.output.extend(out or f"{prefix}/out{i}" for i, out in enumerate(outputs))
            rewritten.append(node)
            continue
        _require_unused(node, consumed, graph_outputs)
        if action == "identity":
            rewritten.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=prefix))
        elif action == "depthwise_conv":
            rewritten.extend(_depthwise_conv(node, view, prefix))
        else:
            dtype = view.elem_type(node.input[0]) or onnx.TensorProto.FLOAT
            expression = _Expression(node, _params(node, entry.get("params", {})), dtype, prefix)
            rewritten.extend(expression.build(entry["expr"], node.output[0]))
    del graph.node[:]
    graph.node.extend(rewritten)
    return counts
