"""The streamed writer gives the bytes protobuf's own serializer gives, for every kind of model."""
import io

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import ALL_SAMPLES
from onnxinit.api import autoinit, save_model
from onnxinit.proto_stream import varint, write_model


def streamed(model) -> bytes:
    out = io.BytesIO()
    write_model(model, out)
    return out.getvalue()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1])
def test_varint_matches_protobuf(value):
    tensor = onnx.TensorProto(data_type=value % 16)
    tensor.dims.append(value)
    # TensorProto bytes: field 1 (dims, varint) then field 2 (data_type)
    assert tensor.SerializeToString().startswith(b"\x08" + varint(value))


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: p.stem)
def test_every_sample_streams_to_its_serialized_bytes(path):
    model = onnx.load(str(path))
    assert streamed(model) == model.SerializeToString()


def test_every_model_field_is_kept_in_order():
    """Fields on both sides of graph and of initializer: metadata, functions, value_info,
    sparse initializers, doc strings, training info."""
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    weight.doc_string = "a weight"
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm", doc_string="the layer")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])],
                              initializer=[weight, numpy_helper.from_array(np.zeros(3, np.float32), "unused")],
                              doc_string="graph doc",
                              value_info=[helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "s"), numpy_helper.from_array(np.zeros(1, np.int64)), [4]))
    function = helper.make_function("custom", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[function], doc_string="model doc", producer_name="test")
    helper.set_model_props(model, {"author": "someone"})
    model.training_info.add().algorithm.name = "step"
    assert streamed(model) == model.SerializeToString()
    assert onnx.load_model_from_string(streamed(model)) == model


def test_model_with_unknown_fields_keeps_them():
    """A model written by a newer onnx (a field this one does not know) is written whole."""
    model = onnx.load(str(ALL_SAMPLES[0]))
    extra = model.SerializeToString() + varint(999 << 3 | 2) + varint(3) + b"new"
    newer = onnx.load_model_from_string(extra)
    assert streamed(newer) == newer.SerializeToString()
    assert b"new" in streamed(newer)


def test_saved_file_is_the_serialized_model(tmp_path):
    model = autoinit(ALL_SAMPLES[0], seed=3)
    save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()
