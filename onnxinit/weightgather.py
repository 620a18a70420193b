"""Weights assembled from pieces of weight tensors: W = the elements of sources, rearranged.

torch's dynamo exporter feeds an LSTM its W as Unsqueeze(Concat(Slice(weight_ih, gate 0),
Slice(weight_ih, gate 1), ...)) (PyTorch's gate order made ONNX's), and a bidirectional
layer concatenates two such tensors. Every op on the way only selects and moves elements
(Slice, Concat, Split, Gather with constant indices, and weightview.py's moves), so running
the same subgraph on the sources' element numbers instead of their values gives, for every
element of W, the source element it is:

    index = subgraph(arange over the sources),   W.flat = concat(sources).flat[index]

A new W is written back through that index (source elements W does not use keep their
values). A subgraph that repeats an element (Expand, Tile) is not such a view.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .op_eval import run_node
from .weightview import FLOATS, VIEW_OPS

GATHER_OPS = VIEW_OPS | {"Slice", "Concat", "Split", "Gather"}
MAX_NODES = 64
MAX_ELEMENTS = 1 << 24   # source elements numbered at most (the index is kept with the graph)


@dataclass(frozen=True)
class GatheredView:
    output: str
    sources: tuple          # the weight tensors the elements come from
    offsets: tuple          # where each source's elements start in the numbering
    index: np.ndarray       # W's shape: the number of the source element at each position
    dtype: np.dtype

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def shape(self) -> tuple:
        return tuple(self.index.shape)

    def _flat_sources(self, graph):
        values = [graph.constant_value(s) for s in self.sources]
        if any(v is None for v in values):
            return None
        return np.concatenate([np.asarray(v).reshape(-1) for v in values])

    def evaluate(self, graph) -> np.ndarray | None:
        flat = self._flat_sources(graph)
        return None if flat is None else flat[self.index].astype(self.dtype, copy=False)

    def write(self, graph, w: np.ndarray) -> None:
        w = np.asarray(w).reshape(-1)
        index = self.index.reshape(-1)
        for source, start in zip(self.sources, self.offsets):
            current = np.array(graph.constant_value(source), copy=True)
            flat = current.reshape(-1)
            mine = (index >= start) & (index < start + flat.size)
            flat[index[mine] - start] = w[mine]
            graph.replace_payload(source, current)


def _data_inputs(node) -> list:
    return list(node.input) if node.op_type == "Concat" else list(node.input[:1])


def detect(graph, name: str) -> GatheredView | None:
    """The element-selecting subgraph computing ``name`` from float weight tensors, or None."""
    nodes, sources, stack, seen = [], [], [name], set()
    while stack:
        tensor_name = stack.pop()
        if tensor_name in seen:
            continue
        seen.add(tensor_name)
        tensor = graph.weight_tensor(tensor_name)
        if tensor is not None:
            if tensor.data_type not in FLOATS:
                return None
            sources.append(tensor_name)
            continue
        node = graph.producer.get(tensor_name)
        if node is None or node.op_type not in GATHER_OPS or node.domain not in ("", "ai.onnx") \
                or len(nodes) >= MAX_NODES:
            return None
        if node.op_type == "Cast" and next((a.i for a in node.attribute if a.name == "to"), None) not in FLOATS:
            return None
        data = _data_inputs(node)
        if any(n and n not in data and graph.constant_value(n) is None for n in node.input):
            return None    # a shape, index or axis computed at run time
        if node not in nodes:
            nodes.append(node)
        stack.extend(n for n in data if n)
    if not nodes or not sources:
        return None
    dtypes = {graph.weight_tensor(s).data_type for s in sources}
    if len(dtypes) != 1:
        return None
    sources = sorted(set(sources), key=sources.index)
    if sum(int(np.prod(graph.weight_tensor(s).dims, dtype=np.int64)) for s in sources) > MAX_ELEMENTS:
        return None
    values, offsets, start = {}, [], 0
    for source in sources:
        dims = tuple(int(d) for d in graph.weight_tensor(source).dims)
        size = int(np.prod(dims, dtype=np.int64))
        values[source] = np.arange(start, start + size, dtype=np.int64).reshape(dims)
        offsets.append(start)
        start += size
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    try:
        for node in sorted(nodes, key=lambda n: order[id(n)]):
            data = _data_inputs(node)
            inputs = [values[n] if n in data else (graph.constant_value(n) if n else None) for n in node.input]
            if node.op_type == "Cast":   # element numbers stay integers
                outputs = [inputs[0]]
            else:
                outputs = run_node(node, inputs, graph.opsets)
            for out, value in zip(node.output, outputs):
                if out:
                    values[out] = np.asarray(value)
    except Exception:  # noqa: BLE001 - an op the reference cannot run on these inputs: not a view
        return None
    index = values.get(name)
    if index is None or index.dtype.kind not in "iu" or np.unique(index).size != index.size:
        return None
    if start < 2 ** 31:
        index = index.astype(np.int32)   # kept while the graph lives: half the memory
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtypes.pop()))
    return GatheredView(name, tuple(sources), tuple(offsets), index, dtype)
