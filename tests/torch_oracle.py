"""PyTorch re-evaluation of the samples' ONNX graphs: the oracle for gradients (tests only)."""
import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

DTYPE = torch.float32   # the oracle's own error (~1e-5 relative) is far below the tests' tolerances
# One thread: on a busy 2-core machine torch's OpenMP threads contend (40x slower double backward).
torch.set_num_threads(1)


def _conv(x, w, b, a):
    pads = a.get("pads", [0] * 4)
    assert pads[:2] == pads[2:], "asymmetric padding"
    return F.conv2d(x, w, b, stride=a.get("strides", 1), padding=pads[:2], groups=a.get("group", 1))


def _gemm(a_, b, c, a):
    b = b.t() if a.get("transB", 0) else b
    return a.get("alpha", 1.0) * a_ @ b + (a.get("beta", 1.0) * c if c is not None else 0)


OPS = {
    "Conv": lambda i, a: _conv(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "BatchNormalization": lambda i, a: F.batch_norm(i[0], None, None, i[1], i[2], training=True,
                                                    eps=a.get("epsilon", 1e-5)),
    "Gemm": lambda i, a: _gemm(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "Relu": lambda i, a: F.relu(i[0]),
    "Add": lambda i, a: i[0] + i[1],
    "GlobalAveragePool": lambda i, a: i[0].mean((2, 3), keepdim=True),
    "Flatten": lambda i, a: i[0].flatten(a.get("axis", 1)),
    "MaxPool": lambda i, a: F.max_pool2d(i[0], a["kernel_shape"], a.get("strides"), a.get("pads", [0, 0])[:2]),
    "AveragePool": lambda i, a: F.avg_pool2d(i[0], a["kernel_shape"], a.get("strides"), a.get("pads", [0, 0])[:2]),
}


def forward(model, params: dict, x):
    """The model's first output at ``params`` (tensors by initializer name); BatchNorm in training mode."""
    env = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    env.update(params)
    env[model.graph.input[0].name] = x
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        env[node.output[0]] = OPS[node.op_type]([env[n] for n in node.input if n], attrs)
    return env[model.graph.output[0].name]


def coefficient_gradient(model, weights: dict, omega: dict, x, labels, rows, tracked, coefficients,
                         variant="authors", constrained=False) -> dict:
    """dJ/dw_k by double backward, theta_k = w_k W_k, g_d = grad of the sub-batch loss d
    over the ``tracked`` weights; J = mean_d |g_d| when constrained, else -(GC + GN) of the variant."""
    w = {k: torch.tensor(np.asarray(v), dtype=DTYPE) for k, v in weights.items()}
    scale = {k: torch.tensor(float(omega.get(k, 1.0)), dtype=DTYPE, requires_grad=k in coefficients)
             for k in w}
    theta = {k: scale[k] * w[k] for k in w}
    per_sample = F.cross_entropy(forward(model, theta, torch.tensor(x, dtype=DTYPE)),
                                 torch.tensor(labels), reduction="none")
    grads = []
    for row in torch.tensor(rows, dtype=DTYPE):
        g = torch.autograd.grad((row * per_sample).sum(), [theta[k] for k in tracked], create_graph=True)
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    g = torch.stack(grads)
    norms = g.norm(dim=1)
    cos = (g / norms[:, None]) @ (g / norms[:, None]).T
    count = len(rows)
    if constrained:
        objective = norms.mean()
    elif variant == "authors":
        objective = -((cos.sum() - cos.diagonal().sum()) / (count * count - count) + norms.sum())
    else:
        objective = -(cos.sum() / count ** 2 + norms.mean())
    out = torch.autograd.grad(objective, [scale[k] for k in coefficients])
    return {k: float(v.detach()) for k, v in zip(coefficients, out)}
