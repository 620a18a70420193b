"""Synthetic ResNet-50 (bottleneck blocks 3-4-6-3, 25.6M parameters) built with onnx.helper.

Conv + BatchNormalization (inference, running statistics) + Relu, as a
torchvision inference export writes it before BN folding; random weights.
Used by the benches: ``build_resnet50(path)``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, rng):
        self.rng = rng
        self.nodes, self.inits = [], []
        self.count = 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def init(self, stem, array):
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), n))
        return n

    def conv_bn(self, x, cin, cout, k, stride, relu=True):
        w = self.init("conv.weight", self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.05)
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, w], [y], name=y, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        bn = [self.init(s, v) for s, v in (("bn.scale", np.ones(cout)), ("bn.bias", np.zeros(cout)),
                                           ("bn.mean", np.zeros(cout)), ("bn.var", np.ones(cout)))]
        z = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [y] + bn, [z], name=z, epsilon=1e-5))
        if not relu:
            return z
        r = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [z], [r], name=r))
        return r

    def add_relu(self, a, b):
        s, r = self.name("add"), self.name("relu")
        self.nodes.append(helper.make_node("Add", [a, b], [s], name=s))
        self.nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r


def build_resnet50(path, image: int = 224, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(np.random.default_rng(seed))
    x = b.conv_bn("input", 3, 64, 7, 2)
    pooled = b.name("maxpool")
    b.nodes.append(helper.make_node("MaxPool", [x], [pooled], name=pooled, kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = pooled, 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            h = b.conv_bn(x, cin, width, 1, 1)
            h = b.conv_bn(h, width, width, 3, stride)
            h = b.conv_bn(h, width, width * 4, 1, 1, relu=False)
            short = b.conv_bn(x, cin, width * 4, 1, stride, relu=False) if block == 0 else x
            x, cin = b.add_relu(h, short), width * 4
    gap, flat = b.name("gap"), b.name("flatten")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [gap], name=gap))
    b.nodes.append(helper.make_node("Flatten", [gap], [flat], name=flat))
    fc_w = b.init("fc.weight", b.rng.standard_normal((1000, cin), dtype=np.float32) * 0.01)
    fc_b = b.init("fc.bias", np.zeros(1000))
    b.nodes.append(helper.make_node("Gemm", [flat, fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet50_synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model
