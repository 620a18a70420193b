"""A read-only view of an ONNX graph: order, producers, consumers, weights, shapes, signal."""
from __future__ import annotations

from collections import defaultdict, deque
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import OnnxInitError
from .model_io import deferred_array, is_deferred, set_inline

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
# Ops whose outputs describe a tensor's shape, never its values.
SHAPE_OPS = {"Shape", "Size"}
CACHE_LIMIT = 1 << 20  # weights above this many bytes are not kept as arrays beside their TensorProto
LIGHT_LIMIT = 1024  # initializers above this many elements are stubbed out for shape inference
# A symbolic input dim after the first (a sequence length, a dynamic image size) is taken as
# this size for the analysis, so attention and windows have static shapes; the model keeps
# its symbolic dims. It is the size `inspect --measure` feeds too; `--dim NAME=SIZE` sets
# another per dim name (``sizes``).
SYMBOLIC_DIM = 16


class Graph:
    """Nodes in topological order plus lookups; never modifies the model."""

    def __init__(self, model: onnx.ModelProto, sizes: dict | None = None):
        self.model = model
        self.sizes = dict(sizes or {})   # symbolic input dim name -> size for the analysis
        self.graph = model.graph
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in self.graph.node
                               if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}
        self.inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.outputs = [o.name for o in self.graph.output]
        self.nodes = self._topological_order()
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in self.reads(node):
                if name:
                    self.consumers[name].append(node)
        self._values: dict[str, np.ndarray] = {}
        self.shape_values: dict[str, np.ndarray] = {}   # shape arithmetic with a probe batch size
        self.dims_override: dict[str, list] = {}         # static dims worked out during propagation
        self.spill = None                                # model_io.Spill: where large new payloads go
        self._weight_norms: dict = {}                    # computed weight -> weightnorm.WeightNorm or None
        self._weight_views: dict = {}                    # computed weight -> weightview.WeightView or None

    def reads(self, node) -> list:
        """The tensors ``node`` reads: its inputs, then the enclosing-graph tensors its subgraphs
        use (an If branch or Loop body may read any tensor of the graph around it)."""
        return list(node.input) + outer_references(node)

    def _topological_order(self):
        nodes = list(self.graph.node)
        produced = {out: i for i, n in enumerate(nodes) for out in n.output if out}
        deps = [set() for _ in nodes]
        users = defaultdict(list)
        for i, node in enumerate(nodes):
            for name in self.reads(node):
                j = produced.get(name)
                if j is not None and j != i and j not in deps[i]:
                    deps[i].add(j)
                    users[j].append(i)
        ready = deque(i for i in range(len(nodes)) if not deps[i])
        order = []
        remaining = [len(d) for d in deps]
        while ready:
            i = ready.popleft()
            order.append(nodes[i])
            for k in users[i]:
                remaining[k] -= 1
                if remaining[k] == 0:
                    ready.append(k)
        if len(order) != len(nodes):
            raise OnnxInitError("the graph has a cycle")
        return order

    # --- types and shapes -------------------------------------------------
    @cached_property
    def _value_infos(self):
        """name -> ValueInfoProto from shape inference on a copy without large payloads."""
        light = _bound(_light_model(self.model), self.sizes)
        try:
            inferred = shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - inference is best effort; fall back to declared types
            inferred = light
        infos = {}
        for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            infos[vi.name] = vi
        return infos

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        if name in self.constant_nodes:
            value = self.constant_value(name)
            return None if value is None else onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        vi = self._value_infos.get(name)
        if vi is not None and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type or None
        return None

    def shape(self, name: str):
        """Tuple of ints (or str for symbolic, None for unknown dims); None if rank unknown."""
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        vi = self._value_infos.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        return tuple(dims)

    def rank(self, name: str, default: int | None = None):
        if name in self.dims_override:
            return len(self.dims_override[name])
        shape = self.shape(name)
        return default if shape is None else len(shape)

    def static_dims(self, name: str):
        """Dims as ints, None where unknown or batch-dependent.

        Where symbolic inference leaves a dim open (a Reshape whose target is
        computed from Shape), inference with the input's symbolic dims set to 2
        and to 3 fills it in when both runs agree: such a dim does not depend on
        the batch size.
        """
        if name in self.dims_override:
            return list(self.dims_override[name])
        shape = self.shape(name)
        if shape is None:
            probed = self._probed_dims.get(name)
            return None if probed is None else [probed[i] if i > 0 else None for i in range(len(probed))]
        dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if all(d is not None for d in dims[1:]):
            return dims
        probed = self._probed_dims.get(name)
        if probed is not None and len(probed) == len(dims):
            dims = [d if d is not None or i == 0 else probed[i] for i, d in enumerate(dims)]
        return dims

    @cached_property
    def _probed_dims(self) -> dict:
        """name -> dims that come out the same with every symbolic input dim set to 2 and to 3."""
        runs = []
        for probe in (2, 3):
            light = _bound(_light_model(self.model), self.sizes)
            for vi in light.graph.input:
                for d in vi.type.tensor_type.shape.dim:
                    if not d.HasField("dim_value"):
                        d.Clear()
                        d.dim_value = probe
            try:
                inferred = shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
            except Exception:  # noqa: BLE001 - best effort
                return {}
            dims = {}
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                    dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                     for d in vi.type.tensor_type.shape.dim]
            runs.append(dims)
        agreed = {}
        for name, a in runs[0].items():
            b = runs[1].get(name)
            if b is not None and len(a) == len(b):
                agreed[name] = [x if x == y and x else None for x, y in zip(a, b)]
        return agreed

    # --- weights and constants -------------------------------------------
    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes or name in self._values

    def is_weight(self, name: str) -> bool:
        """A float initializer, the float output of a Constant node, a view of one (weightview.py)
        or a weight norm's output."""
        if name in self.initializers:
            return self.initializers[name].data_type in FLOAT_TYPES
        if name in self.constant_nodes:
            return self.elem_type(name) in FLOAT_TYPES
        return self.weight_view(name) is not None or self.weight_norm(name) is not None

    def weight_view(self, name: str):
        """The transpose / reshape chain feeding a weight tensor to ``name`` (weightview.py), or the
        element-selecting subgraph assembling it from pieces of weights (weightgather.py), or None."""
        if name not in self._weight_views:
            from . import weightgather, weightview
            view = weightview.detect(self, name) if name in self.producer else None
            if view is None and name in self.producer:
                view = weightgather.detect(self, name)
            self._weight_views[name] = view
        return self._weight_views[name]

    def weight_shape(self, name: str):
        """(shape, numpy dtype) of a weight, without reading its values; None if unknown."""
        tensor = self.weight_tensor(name)
        if tensor is not None:
            return tuple(int(d) for d in tensor.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        view = self.weight_view(name)
        if view is not None:
            return view.shape, view.dtype
        norm = self.weight_norm(name)
        return None if norm is None or not norm.shape else (norm.shape, None)

    def payload_names(self, name: str) -> list:
        """The tensors whose payload a weight is stored in: itself, a view's source, a weight norm's v and g."""
        if self.weight_tensor(name) is not None:
            return [name]
        view = self.weight_view(name)
        if view is not None:
            return list(getattr(view, "sources", [view.source]))
        norm = self.weight_norm(name)
        return [norm.v, norm.g] if norm is not None else []

    def weight_norm(self, name: str):
        """The weight-norm subgraph computing ``name`` (w = g·v/‖v‖, weightnorm.py), or None."""
        if name not in self._weight_norms:
            from . import weightnorm, weightstd
            found = weightnorm.detect(self, name) if name in self.producer else None
            if found is None and name in self.producer:
                found = weightstd.detect(self, name)
            self._weight_norms[name] = found
        return self._weight_norms[name]

    def linear_source(self, name: str) -> str | None:
        """The initializer a weight is linear in: scaling it by c scales the weight by c.
        The weight itself, the source of its view (weightview.py) or its weight norm's g
        (w = g·v/‖v‖); None when there is none (a weight computed some other way)."""
        if name in self.initializers:
            return name
        view = self.weight_view(name)
        if view is not None:
            sources = getattr(view, "sources", [view.source])
            return sources[0] if len(sources) == 1 and sources[0] in self.initializers else None
        wn = self.weight_norm(name)
        return wn.g if wn is not None and wn.g in self.initializers else None

    def weight_tensor(self, name: str) -> onnx.TensorProto | None:
        """The TensorProto holding a weight's payload (initializer or Constant's value)."""
        if name in self.initializers:
            return self.initializers[name]
        node = self.constant_nodes.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    return attr.t
        return None

    def constant_value(self, name: str):
        """numpy value of an initializer, Constant output or folded tensor; None if unknown."""
        if name in self._values:
            return self._values[name]
        tensor = self.weight_tensor(name)
        if tensor is None:
            node = self.constant_nodes.get(name)
            if node is None:
                view = self.weight_view(name) if name in self.producer else None
                if view is None and name in self.producer:
                    view = self.weight_norm(name)   # a weight norm or standardization
                return None if view is None else view.evaluate(self)
            from .op_eval import run_node
            try:
                value = run_node(node, [], self.opsets)[0]
            except Exception:  # noqa: BLE001 - an unsupported Constant form carries no value
                return None
        else:
            value = deferred_array(tensor) if is_deferred(tensor) else numpy_helper.to_array(tensor)
            if value.nbytes > CACHE_LIMIT:
                return value   # large weights are read again when needed: one copy of the model, not two
        self._values[name] = value
        return value

    def replace_payload(self, name: str, value: np.ndarray) -> None:
        """Write a weight's new values into its TensorProto now (name, dims, type, doc string stay);
        the old bytes are released, so the model is held once. A weight norm's output is written
        through its v and g."""
        tensor = self.weight_tensor(name)
        if tensor is None:
            view = self.weight_view(name)
            (view or self.weight_norm(name)).write(self, value)
            if np.asarray(value).nbytes <= CACHE_LIMIT:
                self._values[name] = np.asarray(value)
            else:
                self._values.pop(name, None)
            return
        target = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        value = np.ascontiguousarray(np.asarray(value).astype(target, copy=False)).reshape(tuple(tensor.dims))
        if self.spill is not None and value.nbytes >= self.spill.MIN_BYTES:
            self.spill.write(tensor, value)
        else:
            set_inline(tensor, value.tobytes())
        self._values.pop(name, None)
        if value.nbytes <= CACHE_LIMIT:
            self._values[name] = value

    def set_value(self, name: str, value: np.ndarray) -> None:
        """Record a folded constant or a rewritten weight's new value."""
        self._values[name] = value

    # --- signal ------------------------------------------------------------
    @cached_property
    def signal_tensors(self) -> set:
        """Float tensors whose values depend on a graph input (not shape arithmetic)."""
        signal = {n for n in self.inputs if self.elem_type(n) in FLOAT_TYPES or self.elem_type(n) is None}
        carries = set(self.inputs)
        for node in self.nodes:
            if node.op_type in SHAPE_OPS:
                continue
            if any(i in carries for i in self.reads(node) if i):
                for out in node.output:
                    if out:
                        carries.add(out)
                        if self.elem_type(out) in FLOAT_TYPES or self.elem_type(out) is None:
                            signal.add(out)
        return {s for s in signal if self.elem_type(s) in FLOAT_TYPES or self.elem_type(s) is None}


def upstream(graph: Graph, name: str, ops, limit: int):
    """``name``, then the tensors before it, going back through producers of a type in ``ops``
    (default domain) with one signal input each, at most ``limit`` steps."""
    yield name
    for _ in range(limit):
        node = graph.producer.get(name)
        if node is None or node.op_type not in ops or node.domain not in ("", "ai.onnx"):
            return
        inputs = [i for i in node.input if i and i in graph.signal_tensors]
        if len(inputs) != 1:
            return
        name = inputs[0]
        yield name


def subgraphs(node) -> list:
    """The GraphProtos in ``node``'s attributes (If branches, Loop and Scan bodies)."""
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def outer_references(node) -> list:
    """Names ``node``'s subgraphs (nested ones too) read from the graphs around them: used by
    a subgraph node but neither a subgraph input, initializer nor node output there."""
    names = []
    for graph in subgraphs(node):
        defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | \
            {t.values.name for t in graph.sparse_initializer}
        for inner in graph.node:
            defined.update(o for o in inner.output if o)
        for inner in graph.node:
            for name in list(inner.input) + outer_references(inner):
                if name and name not in defined and name not in names:
                    names.append(name)
    return names


def subgraph_weights(node) -> list:
    """Float initializers inside ``node``'s subgraphs (nested ones too)."""
    names = []
    for graph in subgraphs(node):
        names += [t.name for t in graph.initializer if t.data_type in FLOAT_TYPES]
        for inner in graph.node:
            names += subgraph_weights(inner)
    return names


def model_shell(model: onnx.ModelProto, as_inputs) -> onnx.ModelProto:
    """The same graph with the initializers named in ``as_inputs`` turned into typed graph inputs
    (the others kept). Built field by field, so those payloads are neither copied nor touched."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, source = light.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    declared = {i.name for i in source.input}
    for t in source.initializer:
        if t.name not in as_inputs:
            graph.initializer.append(t)
        elif t.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def symbolic_size(dim, sizes: dict | None) -> int:
    """The size taken for a symbolic input dim after the first: ``sizes[name]``, else SYMBOLIC_DIM."""
    return int((sizes or {}).get(dim.dim_param, SYMBOLIC_DIM))


def taken_sizes(model: onnx.ModelProto, sizes: dict | None) -> dict:
    """{symbolic input dim name (after the first axis): the size the analysis takes}, sorted."""
    return {name: int((sizes or {}).get(name, SYMBOLIC_DIM)) for name in sorted(symbolic_dim_names(model))}


def symbolic_dim_names(model: onnx.ModelProto) -> set:
    """Names of the symbolic dims of the graph inputs (after the first axis)."""
    return {d.dim_param for vi in model.graph.input for axis, d in enumerate(vi.type.tensor_type.shape.dim)
            if axis > 0 and not d.HasField("dim_value") and d.dim_param}


def _bound(light: onnx.ModelProto, sizes: dict | None = None) -> onnx.ModelProto:
    """``light`` (a copy) with every symbolic graph-input dim after the first set to its size."""
    for vi in light.graph.input:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if axis > 0 and not d.HasField("dim_value"):
                size = symbolic_size(d, sizes)
                d.Clear()
                d.dim_value = size
    return light


def _light_model(model) -> onnx.ModelProto:
    """A model for shape inference: large float initializers as typed inputs, and an Identity of a
    small initializer replaced by a copy of it (torch.onnx reads a merged initializer, a Reshape's
    target shape among them, through an Identity, which shape inference does not see through)."""
    large = {t.name for t in model.graph.initializer
             if t.data_type in FLOAT_TYPES and (int(np.prod(t.dims)) if t.dims else 1) > LIGHT_LIMIT}
    light = model_shell(model, large)
    small = {t.name: t for t in light.graph.initializer}
    kept = []
    for node in light.graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in small:
            copy = light.graph.initializer.add()
            copy.CopyFrom(small[node.input[0]])
            copy.name = node.output[0]
        else:
            kept.append(node)
    if len(kept) != len(light.graph.node):
        del light.graph.node[:]
        light.graph.node.extend(kept)
    return light
