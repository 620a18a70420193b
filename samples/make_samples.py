"""Export the bundled sample models (needs torch; the product never imports it).

    python samples/make_samples.py [OUTDIR [NAME ...]]

Each sample is a small real PyTorch export (< 5 MB) with a dynamic batch axis,
left with PyTorch's default initialization so the tools have something to fix.
"""
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17
OPSETS = {"decoder_opset11": 11}   # samples exported at another opset


def deep_relu_mlp(depth=20, width=128, n_in=64, n_out=10):
    layers = [nn.Linear(n_in, width), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers), (n_in,)


def selu_mlp(depth=12, width=128, n_in=64, n_out=10):
    layers = [nn.Linear(n_in, width), nn.SELU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.SELU(), nn.Dropout(0.1)]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers), (n_in,)


def plain_cnn():
    """No normalization; grouped and depthwise convs, max and average pooling."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU(),
        nn.Conv2d(64, 64, 1), nn.AvgPool2d(2), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ), (3, 32, 32)


def swish_cnn():
    """SiLU (exported as x*Sigmoid(x)), GELU (Erf form), dropout, hard-swish."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.GELU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.Hardswish(), nn.Dropout(0.2),
        nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.Tanh(),
        nn.Linear(64, 10),
    ), (3, 32, 32)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        bias = not norm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=bias),
                nn.BatchNorm2d(c_out) if norm else nn.Identity())

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al. 2016), projection shortcuts."""

    def __init__(self, n=3, norm=False, widths=(16, 32, 64), n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=not norm)
        self.bn = nn.BatchNorm2d(widths[0]) if norm else nn.Identity()
        blocks, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c_in, width, stride, norm))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyBert(nn.Module):
    """A BERT-style encoder on token ids: embeddings, 2 post-LN layers, explicit attention, GELU, CLS head."""

    def __init__(self, vocab=1000, seq=16, dim=64, heads=4, layers=2, ffn=128, n_out=10):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.ln0 = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim), "ln1": nn.LayerNorm(dim),
                "fc1": nn.Linear(dim, ffn), "fc2": nn.Linear(ffn, dim), "ln2": nn.LayerNorm(dim)}))
        self.head = nn.Linear(dim, n_out)

    def forward(self, ids):
        x = self.ln0(self.tok(ids) + self.pos)
        n, t, d = x.shape
        h = self.heads
        for b in self.blocks:
            q, k, v = b["qkv"](x).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5
            att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
            x = b["ln1"](x + b["proj"](att))
            x = b["ln2"](x + b["fc2"](nn.functional.gelu(b["fc1"](x))))
        return self.head(x[:, 0])


class TinyGpt(TinyBert):
    """A GPT-style decoder: the same blocks with a causal mask (masked_fill with -inf) and pre-LN."""

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        n, t, d = x.shape
        h = self.heads
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        for b in self.blocks:
            y = b["ln1"](x)
            q, k, v = b["qkv"](y).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-1, -2) / (d // h) ** 0.5).masked_fill(mask, float("-inf"))
            x = x + b["proj"]((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d))
            x = self.feed_forward(b, x)
        return self.head(self.ln0(x))

    def feed_forward(self, b, x):
        return x + b["fc2"](nn.functional.gelu(b["fc1"](b["ln2"](x))))


class RmsNorm(nn.Module):
    """LLaMA's RMSNorm as its code spells it: x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TinyOldOpset(nn.Module):
    """A pre-norm decoder for an opset-11 export, where every normalization and GELU is spelled
    out op by op: RMSNorm before a causal attention (Pow-ReduceMean-Add-Sqrt-Reciprocal-Mul),
    LayerNorm before a GELU MLP (ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div, x * 0.5 * (1 +
    Erf(x / sqrt 2))), a final RMSNorm, 32 wide (a quotient taken as two independent factors is
    off by D / (D - 2) there)."""

    def __init__(self, vocab=1000, seq=16, dim=32, heads=4, layers=2, ffn=96, n_out=10):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": RmsNorm(dim), "qkv": nn.Linear(dim, 3 * dim, bias=False), "proj": nn.Linear(dim, dim, bias=False),
            "norm2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, ffn), "fc2": nn.Linear(ffn, dim)}) for _ in range(layers))
        self.norm = RmsNorm(dim)
        self.head = nn.Linear(dim, n_out)
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))   # Trilu needs opset 14

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        n, t, d = x.shape
        h = self.heads
        mask = self.mask
        for b in self.blocks:
            q, k, v = b["qkv"](b["norm1"](x)).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-1, -2) / (d // h) ** 0.5).masked_fill(mask, float("-inf"))
            x = x + b["proj"]((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d))
            x = x + b["fc2"](nn.functional.gelu(b["fc1"](b["norm2"](x))))
        return self.head(self.norm(x))


class TinyRoberta(TinyBert):
    """A RoBERTa-style encoder as transformers writes it: position ids computed from the token
    ids (cumsum of ids != padding, offset past it), token type ids gathered from a zero buffer at
    those positions, and the softmax's fully masked rows filled with 0 by a Where on the
    (all-ones) attention mask."""

    padding = 1

    def __init__(self, vocab=1000, seq=16, dim=64, heads=4, layers=2, ffn=128, n_out=10):
        super().__init__(vocab, seq, dim, heads, layers, ffn, n_out)
        del self.pos
        self.positions = nn.Embedding(seq + self.padding + 1, dim, padding_idx=self.padding)
        self.types = nn.Embedding(2, dim)
        self.register_buffer("type_buffer", torch.zeros(1, seq + self.padding + 1, dtype=torch.long))

    def forward(self, ids):
        keep = ids.ne(self.padding).int()
        positions = (torch.cumsum(keep, dim=1) * keep).long() + self.padding
        types = torch.gather(self.type_buffer.expand(ids.shape[0], -1), 1, positions)
        x = self.ln0(self.tok(ids) + self.positions(positions) + self.types(types))
        n, t, d = x.shape
        h = self.heads
        masked = torch.ones(n, t, dtype=torch.bool, device=ids.device).logical_not()[:, None, None, :]
        for b in self.blocks:
            q, k, v = b["qkv"](x).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5
            probabilities = torch.where(masked, torch.zeros_like(scores), scores.softmax(-1))
            att = (probabilities @ v).transpose(1, 2).reshape(n, t, d)
            x = b["ln1"](x + b["proj"](att))
            x = b["ln2"](x + b["fc2"](nn.functional.gelu(b["fc1"](x))))
        return self.head(x[:, 0])


class TinyDeberta(TinyBert):
    """Heads merged into the batch as transformers' DeBERTa-v2 writes its attention: q, k, v as
    (N·H, T, d) for batched products, the scores viewed as (N, H, T, T) for the softmax and
    back to (N·H, T, T) before the values."""

    def forward(self, ids):
        x = self.ln0(self.tok(ids) + self.pos)
        n, t, d = x.shape
        h = self.heads
        for b in self.blocks:
            q, k, v = (part.permute(0, 2, 1, 3).reshape(n * h, t, d // h)
                       for part in b["qkv"](x).reshape(n, t, 3, h, d // h).unbind(2))
            scores = torch.bmm(q, k.transpose(1, 2)) / (d // h) ** 0.5
            probabilities = scores.view(n, h, t, t).softmax(-1).view(n * h, t, t)
            att = torch.bmm(probabilities, v).view(n, h, t, d // h).permute(0, 2, 1, 3).reshape(n, t, d)
            x = b["ln1"](x + b["proj"](att))
            x = b["ln2"](x + b["fc2"](nn.functional.gelu(b["fc1"](x))))
        return self.head(x[:, 0])


class TinyOpt(TinyGpt):
    """An OPT-style decoder as transformers writes it: pre-LN causal attention, and the
    feed-forward block run on the tokens flattened to (N·T, D) rows, its residual sum taken on
    the rows, reshaped back to (N, T, D) before the next attention."""

    def feed_forward(self, b, x):
        rows = x.reshape(-1, x.shape[-1])
        return (rows + b["fc2"](torch.relu(b["fc1"](b["ln2"](rows))))).view(x.shape)


class TinyVit(nn.Module):
    """A ViT: 4x4 patches of a 3x16x16 image, a class token, learned positions, blocks built
    on nn.MultiheadAttention (torchvision's layout: seq-first inside, q/k/v packed)."""

    def __init__(self, dim=48, heads=4, layers=3, n_out=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(dim), "attn": nn.MultiheadAttention(dim, heads, batch_first=True),
                "ln2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)}))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for b in self.blocks:
            y = b["ln1"](x)
            x = x + b["attn"](y, y, y, need_weights=False)[0]
            x = x + b["fc2"](nn.functional.gelu(b["fc1"](b["ln2"](x))))
        return self.head(self.ln(x)[:, 0])


class ConvNeXtBlock(nn.Module):
    """ConvNeXt-style: depthwise 7x7, LayerNorm over channels, 4x MLP with GELU, layer scale, residual."""

    def __init__(self, dim=32):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(nn.functional.gelu(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    def __init__(self, dim=32, blocks=3, n_out=10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(blocks)])
        self.head = nn.Linear(dim, n_out)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class MBConv(nn.Module):
    """MobileNet/EfficientNet-style: expand 1x1, depthwise 3x3, squeeze-excite (Sigmoid gate), project."""

    def __init__(self, dim=24, expand=4, act=nn.SiLU):
        super().__init__()
        hidden = dim * expand
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1), act())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), act())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, hidden // 4, 1), nn.SiLU(),
                                nn.Conv2d(hidden // 4, hidden, 1), nn.Sigmoid())
        self.project = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        h = self.dw(self.expand(x))
        return x + self.project(h * self.se(h))


def mbconv_net():
    return nn.Sequential(nn.Conv2d(3, 24, 3, stride=2, padding=1), nn.Hardswish(), MBConv(act=nn.SiLU),
                         MBConv(act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)), (3, 32, 32)


class DenseBlock(nn.Module):
    def __init__(self, dim=16, growth=8, layers=4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Conv2d(dim + i * growth, growth, 3, padding=1))
                                    for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


def channel_shuffle(x, groups=2):
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: at stride 1 half the channels (chunk) go through 1x1 - depthwise 3x3 - 1x1
    and rejoin the other half; at stride 2 both branches read the whole input. Then the
    channels are shuffled (view, transpose, reshape, with targets computed from x.size())."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, half = stride, cout // 2
        if stride == 2:
            self.left = nn.Sequential(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                      nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        width = cin if stride == 2 else half
        self.right = nn.Sequential(nn.Conv2d(width, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                                   nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
                                   nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            kept, moved = x.chunk(2, dim=1)
            return channel_shuffle(torch.cat([kept, self.right(moved)], 1))
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


def shuffle_net():
    return nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                         ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 96, 2),
                         ShuffleUnit(96, 96, 1), nn.Conv2d(96, 128, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, 10)), (3, 32, 32)


class RecurrentStack(nn.Module):
    """A sequence model: a Linear + ReLU on each step, a 2-layer LSTM (exported as two LSTM nodes),
    a bidirectional GRU, and a Linear head on the last step."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.gru = nn.GRU(64, 48, batch_first=True, bidirectional=True)
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        y, _ = self.lstm(torch.relu(self.embed(x)))
        y, _ = self.gru(y)
        return self.head(y[:, -1])


def with_weight_norm(model, legacy=False):
    """Every Conv2d and Linear reparametrized as w = g * v / ||v|| (PyTorch's weight_norm, dim=0);
    exported in training mode, the reparametrization stays in the graph."""
    wrap = nn.utils.weight_norm if legacy else nn.utils.parametrizations.weight_norm
    for module in list(model.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the legacy function is deprecated
                wrap(module)
    return model


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al. 2016b): BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, plus the shortcut;
    the projection shortcut reads the pre-activated input."""

    def __init__(self, c_in, width, stride, expansion=4):
        super().__init__()
        c_out = width * expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, c_out, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + shortcut


class PreActBottleneckResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2), widths=(16, 32, 64), n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        layers, c_in = [], widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            for i in range(count):
                layers.append(PreActBottleneck(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width * 4
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def zero_init_last_resnet():
    """ResNet-20 with BatchNorm whose last BN scale in each block starts at 0 (timm's zero_init_last,
    torchvision's zero_init_residual), exported for inference: the BNs fold into the convs, each
    block's second conv weight is then all zeros, and torch.onnx keeps one tensor per shape, read
    by the blocks of a stage through Identity nodes."""
    model = CifarResNet(norm=True)
    for block in model.blocks:
        nn.init.zeros_(block.bn2.weight)
    return model, (3, 32, 32)


class ScaledStdConv2d(nn.Conv2d):
    """timm's ScaledStdConv2d (NFNets): each output unit's weights are standardized in the forward
    pass (F.batch_norm over the weight), then scaled by a learned gain and fan_in^-1/2."""

    def __init__(self, c_in, c_out, k, stride=1, eps=1e-6):
        super().__init__(c_in, c_out, k, stride, padding=k // 2)
        self.gain = nn.Parameter(torch.ones(c_out, 1, 1, 1))
        self.scale = self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x):
        w = nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                                     weight=(self.gain * self.scale).reshape(-1), training=True, momentum=0.0,
                                     eps=self.eps).reshape_as(self.weight)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class Eca(nn.Module):
    """Efficient channel attention (timm's EcaModule): a conv along the channels of the pooled map."""

    def __init__(self, k=3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class NfBlock(nn.Module):
    def __init__(self, dim, alpha=0.2):
        super().__init__()
        self.conv1 = ScaledStdConv2d(dim, dim // 2, 1)
        self.conv2 = ScaledStdConv2d(dim // 2, dim // 2, 3)
        self.eca = Eca()
        self.conv3 = ScaledStdConv2d(dim // 2, dim, 1)
        self.alpha = alpha

    def forward(self, x):
        y = self.conv2(nn.functional.gelu(self.conv1(nn.functional.gelu(x))))
        return x + self.alpha * self.conv3(self.eca(nn.functional.gelu(y)))


def nf_eca_net():
    """A small NFNet (no normalization layer): standardized-weight convs, GELU, ECA gates."""
    return nn.Sequential(ScaledStdConv2d(3, 32, 3, stride=2), NfBlock(32), NfBlock(32), NfBlock(32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)), (3, 32, 32)


class LinearNorm(nn.Module):
    """LeViT's Linear + BatchNorm1d over the tokens flattened into rows; the BN scale of a
    residual branch's last one starts at 0."""

    def __init__(self, c_in, c_out, bn_weight_init=1.0):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        return self.bn(self.linear(x).flatten(0, 1)).reshape_as(x) if x.shape[-1] == self.linear.out_features \
            else self.bn(self.linear(x).flatten(0, 1)).reshape(x.shape[0], x.shape[1], -1)


class LevitBlock(nn.Module):
    def __init__(self, dim=32, heads=2, key_dim=8):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.qkv = LinearNorm(dim, heads * key_dim * 3)
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(heads * key_dim, dim, bn_weight_init=0.0))
        self.mlp = nn.Sequential(LinearNorm(dim, 2 * dim), nn.Hardswish(), LinearNorm(2 * dim, dim, bn_weight_init=0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([self.key_dim] * 3, dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = (q @ k.transpose(-2, -1) * self.key_dim ** -0.5).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))
        return x + self.mlp(x)


class TinyLevit(nn.Module):
    """A LeViT-style block: conv stem, tokens, attention and MLP of LinearNorm layers."""

    def __init__(self, dim=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.Hardswish())
        self.blocks = nn.Sequential(LevitBlock(dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


class SplitAttention(nn.Module):
    """ResNeSt's split attention (timm's SplitAttn, radix 2): a grouped conv makes two splits,
    a gate from their pooled sum weighs them (softmax over the splits)."""

    def __init__(self, dim=32, radix=2):
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(dim, dim * radix, 3, padding=1, groups=radix)
        self.fc1 = nn.Conv2d(dim, dim // 2, 1)
        self.fc2 = nn.Conv2d(dim // 2, dim * radix, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        b, rc, h, w = x.shape
        splits = x.reshape(b, self.radix, rc // self.radix, h, w)
        gap = splits.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(torch.relu(self.fc1(gap))).view(b, 1, self.radix, -1).transpose(1, 2)
        attn = torch.softmax(attn, dim=1).reshape(b, -1, 1, 1).view(b, self.radix, rc // self.radix, 1, 1)
        return (splits * attn).sum(dim=1)


def split_attention_net():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), SplitAttention(), nn.Conv2d(32, 32, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)), (3, 16, 16)


def densenet_block():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), DenseBlock(), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(48, 10)), (3, 32, 32)


SAMPLES = {
    # name: (builder, export in training mode?)
    "mlp_relu_deep": (deep_relu_mlp, False),
    "mlp_selu_dropout": (selu_mlp, True),
    "cnn_plain": (plain_cnn, False),
    "cnn_swish": (swish_cnn, True),
    "resnet20_nobn": (lambda: (CifarResNet(norm=False), (3, 32, 32)), False),
    "resnet20_bn_train": (lambda: (CifarResNet(norm=True), (3, 32, 32)), True),
    "resnet20_zero_init": (zero_init_last_resnet, False),
    # weight standardization in the graph: Reshape -> BatchNormalization(training_mode=1) -> Reshape
    "nfnet_eca": (nf_eca_net, False),
    # BatchNorm1d over tokens flattened into rows (not folded), zero-init BN scales merged by torch.onnx
    "levit_block": (lambda: (TinyLevit(), (3, 16, 16)), False),
    # ResNeSt: a (N, 2, C, 1, 1) gate times (N, 2, C, H, W) splits, summed over the splits
    "split_attention": (split_attention_net, False),
    "bert_tiny": (lambda: (TinyBert(), (16,), 1000), False),
    "gpt_tiny": (lambda: (TinyGpt(), (16,), 1000), False),
    "roberta_tiny": (lambda: (TinyRoberta(), (16,), 1000), False),
    "opt_tiny": (lambda: (TinyOpt(), (16,), 1000), False),
    "deberta_tiny": (lambda: (TinyDeberta(), (16,), 1000), False),
    # exported at opset 11 (OPSETS): RMSNorm, LayerNorm and GELU spelled out op by op
    "decoder_opset11": (lambda: (TinyOldOpset(), (16,), 1000), False),
    # 4 blocks, training mode without constant folding: Linear weights reach MatMul through Transpose
    "bert_train": (lambda: (TinyBert(layers=4), (16,), 1000), True),
    # nn.MultiheadAttention in training mode: q/k/v stacked on axis 0 and indexed with Gather
    "vit_mha": (lambda: (TinyVit(), (3, 16, 16)), True),
    "convnext_tiny": (lambda: (ConvNeXtTiny(), (3, 32, 32)), False),
    "mbconv_se": (mbconv_net, False),
    "densenet_block": (densenet_block, False),
    # channel split and shuffle with reshape targets computed from the batch (ShuffleNetV2, inference)
    "shufflenet_units": (shuffle_net, False),
    "rnn_stack": (lambda: (RecurrentStack(), (12, 16)), False),
    # weight norm (Arpit et al.): exported in training mode so w = g * v / ||v|| stays in the graph
    "resnet20_wn": (lambda: (with_weight_norm(CifarResNet(n=3)), (3, 32, 32)), True),
    "resnet56_wn": (lambda: (with_weight_norm(CifarResNet(n=9)), (3, 32, 32)), True),
    "resnet56_nobn": (lambda: (CifarResNet(n=9), (3, 32, 32)), False),
    "resnet_bottleneck": (lambda: (PreActBottleneckResNet(), (3, 32, 32)), True),
    "mlp_wn": (lambda: (with_weight_norm(deep_relu_mlp(depth=8)[0], legacy=True), (64,)), True),
}


def export(name, outdir):
    builder, training = SAMPLES[name]
    torch.manual_seed(0)
    model, in_shape, *vocab = builder()
    model.train(training)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    path = Path(outdir) / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.randint(0, vocab[0], (2, *in_shape)) if vocab else torch.randn(2, *in_shape), str(path),
            dynamo=False,
            training=mode, do_constant_folding=not training, opset_version=OPSETS.get(name, OPSET),
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def main(outdir=None, *names):
    outdir = Path(outdir or Path(__file__).parent)
    outdir.mkdir(parents=True, exist_ok=True)
    for name in names or SAMPLES:
        path = export(name, outdir)
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:])
