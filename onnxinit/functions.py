"""Function calls opened for the analysis.

A node may stand for a graph of other ops: a call of a model-local function (what
``torch.onnx.export(export_modules_as_functions=...)`` writes, with the module's weights
passed in as inputs), or a standard op that has no rule but whose schema builds it as a
function of other ops for the node at hand (opset 23's Attention and RotaryEmbedding, CastLike). Left closed, the weights of a local function are never
drawn and such an op can only be estimated by Monte Carlo as a whole.

``opened_nodes`` gives the graph's nodes with every such call replaced by its body
(``onnx.inliner`` renames the inner tensors apart); the caller analyses the model with
them in place of its own nodes and puts the original nodes back before the model is
written, so the file keeps its structure and only the weights change.
"""
from __future__ import annotations

import onnx
from onnx import defs, inliner

from .graph import model_shell, outer_references

OPENED_DOMAIN = "onnxinit.opened"   # a temporary local domain the standard ops' bodies are called through
MAX_ROUNDS = 4                      # bodies may call function ops themselves (Attention's CastLike)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _types(shell: onnx.ModelProto) -> dict:
    """{tensor name: TypeProto} from shape inference on the shell (no payloads)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(shell, strict_mode=False)
    except Exception:  # noqa: BLE001 - a model inference rejects still gets its local functions inlined
        inferred = shell
    graph = inferred.graph
    return {v.name: v.type for v in list(graph.input) + list(graph.value_info) + list(graph.output)}


def _schema_body(node, opset: int, types: dict):
    """The FunctionProto onnx builds for this node of a standard op at ``opset`` (a
    context-dependent function: the node's attributes and input types are in it), or None."""
    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except Exception:  # noqa: BLE001 - not a standard op at this opset
        return None
    try:
        if schema.has_context_dependent_function:
            version = _latest(schema.context_dependent_function_opset_versions, opset)
            empty = onnx.TypeProto().SerializeToString()
            inputs = [types[name].SerializeToString() if name in types else empty for name in node.input]
            data = schema.get_context_dependent_function_with_opset_version(
                version, node.SerializeToString(), inputs) if version else b""
        else:   # a static body refers to the node's attributes and their defaults: left closed
            return None
    except Exception:  # noqa: BLE001 - a body onnx cannot build for this node (types unknown)
        return None
    if not data:
        return None
    body = onnx.FunctionProto()
    body.ParseFromString(data)
    return body if len(body.node) else None


def _body_opset(body) -> int | None:
    return next((o.version for o in body.opset_import if o.domain in ("", "ai.onnx")), None)


def _latest(versions, opset: int):
    """The newest of a schema's function versions the model's opset can use (None if none)."""
    usable = [v for v in versions if v <= opset]
    return max(usable) if usable else None


CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _carries_floats(node, types: dict) -> bool:
    """A float input and a float output (Range over int64 shape arithmetic, GreaterOrEqual's
    bools are left closed)."""
    def is_float(name):
        t = types.get(name)
        return t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type in FLOATS
    return any(is_float(n) for n in node.input if n) and any(is_float(n) for n in node.output if n)


def _open_standard_ops(shell: onnx.ModelProto, has_rule, opened: list) -> bool:
    """Route every rule-less standard op that onnx builds a body for through a local function of
    that body, where it computes floats from floats and the body has no control flow; True when
    any was."""
    opset = _default_opset(shell)
    types = _types(shell)
    changed = False
    for node in shell.graph.node:
        if node.domain not in ("", "ai.onnx") or has_rule(node) or not _carries_floats(node, types):
            continue
        body = _schema_body(node, opset, types)
        if body is None or any(n.op_type in CONTROL_FLOW for n in body.node) or _body_opset(body) != opset:
            continue   # a body written for an older opset is not inlined into this one
        body.domain, body.name = OPENED_DOMAIN, f"{node.op_type}_{len(shell.functions)}"
        shell.functions.append(body)
        opened.append(node.op_type)
        node.domain, node.op_type = OPENED_DOMAIN, body.name
        changed = True
    if changed and not any(o.domain == OPENED_DOMAIN for o in shell.opset_import):
        shell.opset_import.append(onnx.helper.make_opsetid(OPENED_DOMAIN, 1))
    return changed


def opened_nodes(model: onnx.ModelProto, has_rule) -> tuple[list, list, list[str]]:
    """(nodes, opset imports, what was opened): the graph's nodes with local function calls and
    rule-less standard function ops replaced by their bodies; ``([], [], [])`` when there is none.

    ``has_rule(node)`` tells whether the analysis has a rule for a node. The work is done on
    a shell of the model (initializers as typed inputs), so no weight payload is copied."""
    local = {(f.domain, f.name) for f in model.functions}
    calls_local = any((n.domain, n.op_type) in local for n in model.graph.node)
    opset = _default_opset(model)
    may_open = any(n.domain in ("", "ai.onnx") and not has_rule(n) and _has_body(n.op_type, opset)
                   for n in model.graph.node)
    if not calls_local and not may_open:
        return [], [], []
    shell = model_shell(model, {t.name for t in model.graph.initializer})
    opened = [f"local function {n.domain}::{n.op_type}" if n.domain else f"local function {n.op_type}"
              for n in model.graph.node if (n.domain, n.op_type) in local]
    for _ in range(MAX_ROUNDS):
        _open_standard_ops(shell, has_rule, opened)
        if not shell.functions:
            break
        try:
            shell = inliner.inline_local_functions(shell)
        except Exception:  # noqa: BLE001 - onnx cannot inline it: analyse the graph as written
            return [], [], []
        if any((n.domain, n.op_type) in {(f.domain, f.name) for f in shell.functions} for n in shell.graph.node):
            return [], [], []   # a call onnx left in place (opset versions it would not mix)
        del shell.functions[:]
    if not opened:
        return [], [], []
    own = {o for n in model.graph.node for o in n.output}
    nodes = _without_dead_body_nodes(list(shell.graph.node), own | {o.name for o in shell.graph.output})
    return nodes, [o for o in shell.opset_import if o.domain != OPENED_DOMAIN], opened


def _without_dead_body_nodes(nodes: list, keep: set) -> list:
    """Drop body nodes nothing reads (Attention's body makes a scale constant it does not use
    when the node gives one); nodes whose outputs are in ``keep`` stay."""
    while True:
        read = {name for n in nodes for name in list(n.input) + outer_references(n)}
        alive = [n for n in nodes if any(o in read or o in keep for o in n.output if o)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


class OpenedCalls:
    """The model's nodes swapped for their opened form (``opened_nodes``) until ``restore``.

    ``notes`` names what was opened. ``restore`` puts the original nodes and opset imports
    back, keeping the payloads written meanwhile into top-level Constant nodes (weights
    given as Constant outputs are outside any function body, so they keep their names)."""

    def __init__(self, model: onnx.ModelProto, has_rule):
        self.model = model
        nodes, opsets, self.notes = opened_nodes(model, has_rule)
        self._saved = None
        if not nodes:
            return
        self._saved = onnx.ModelProto()
        self._saved.graph.node.extend(model.graph.node)
        self._saved.opset_import.extend(model.opset_import)
        _swap(model, nodes, opsets)

    @property
    def active(self) -> bool:
        return self._saved is not None

    def restore(self) -> None:
        if self._saved is None:
            return
        written = {n.output[0]: n for n in self.model.graph.node if n.op_type == "Constant" and n.output}
        original = onnx.ModelProto()
        for node in self._saved.graph.node:
            keep = written.get(node.output[0]) if node.op_type == "Constant" and node.output else None
            original.graph.node.append(keep if keep is not None else node)
        _swap(self.model, original.graph.node, self._saved.opset_import)
        self._saved = None


def _swap(model: onnx.ModelProto, nodes, opsets) -> None:
    holder = onnx.ModelProto()            # copies first: ``nodes`` may live in ``model`` itself
    holder.graph.node.extend(nodes)
    holder.opset_import.extend(opsets)
    del model.graph.node[:]
    model.graph.node.extend(holder.graph.node)
    del model.opset_import[:]
    model.opset_import.extend(holder.opset_import)


def _has_body(op_type: str, opset: int) -> bool:
    try:
        schema = defs.get_schema(op_type, opset, "")
    except Exception:  # noqa: BLE001 - not a standard op
        return False
    return schema.has_context_dependent_function
