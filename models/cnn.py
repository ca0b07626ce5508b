"""Small torch reference CNNs covering the coupling patterns real vision models use (needs graphprune[torch]).

Each builder returns (module in eval mode with non-trivial BN statistics, example input).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, 3, stride), conv_bn(c_out, c_out, 3, act=None))
        self.short = nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride, act=None)

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class ResNet(nn.Module):
    """Residual adds and BN; a projection shortcut; GAP → flatten → Linear."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block (ReLU6); with `se`, the MobileNetV3 form (SE + HardSwish)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4, se: bool = False):
        super().__init__()
        hidden, act = c_in * expand, (nn.Hardswish if se else nn.ReLU6)
        layers = [conv_bn(c_in, hidden, 1, act=act), conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act)]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(conv_bn(hidden, c_out, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(nn.Module):
    def __init__(self, v3: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, stride=2, act=nn.Hardswish if v3 else nn.ReLU6),
            InvertedResidual(16, 16, 1, se=v3), InvertedResidual(16, 24, 2, se=v3), InvertedResidual(24, 24, 1, se=v3),
            conv_bn(24, 64, 1),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class DenseNet(nn.Module):
    """Dense block: every layer reads the concat of all previous outputs; then a transition."""

    def __init__(self, growth: int = 8, layers: int = 3):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layers = nn.ModuleList(conv_bn(16 + i * growth, growth) for i in range(layers))
        self.transition = conv_bn(16 + layers * growth, 24, 1)
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        y = F.avg_pool2d(self.transition(torch.cat(feats, 1)), 8)
        return self.fc(torch.flatten(y, 1))


class Inception(nn.Module):
    """Four branches concatenated, then a 1x1 conv reading every branch at its concat offset."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.b1 = conv_bn(16, 8, 1)
        self.b3 = nn.Sequential(conv_bn(16, 8, 1), conv_bn(8, 12, 3))
        self.b5 = nn.Sequential(conv_bn(16, 4, 1), conv_bn(4, 6, 3), conv_bn(6, 6, 3))
        self.bp = conv_bn(16, 6, 1)
        self.head = conv_bn(32, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(F.max_pool2d(x, 3, 1, 1))], 1)
        return self.fc(F.adaptive_avg_pool2d(self.head(y), 1).flatten(1))


class ResNeXt(nn.Module):
    """Bottleneck with a grouped 3x3 conv (cardinality 4) and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.block = nn.Sequential(conv_bn(32, 32, 1), conv_bn(32, 32, 3, groups=4), conv_bn(32, 32, 1, act=None))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(F.adaptive_avg_pool2d(F.relu(x + self.block(x)), 1).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    """ShuffleNetV2 unit: channel split, one branch convolved, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.branch = nn.Sequential(conv_bn(8, 8, 1), conv_bn(8, 8, 3, groups=8, act=None), conv_bn(8, 8, 1))
        self.head = conv_bn(16, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        left, right = self.stem(x).chunk(2, dim=1)
        y = channel_shuffle(torch.cat([left, self.branch(right)], 1), 2)
        return self.fc(F.adaptive_avg_pool2d(self.head(y), 1).flatten(1))


class ConvNeXt(nn.Module):
    """ConvNeXt block: depthwise 7x7, permute to channels-last, LayerNorm, Linear MLP, LayerScale, residual."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = (self.gamma * self.fc2(F.gelu(self.fc1(y)))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = 4 * width
        self.body = nn.Sequential(conv_bn(c_in, width, 1), conv_bn(width, width, 3, stride),
                                  conv_bn(width, c_out, 1, act=None))
        self.short = nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride, act=None)

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class ResNet50(nn.Module):
    """The standard ResNet-50 layout (3-4-6-3 bottlenecks, 25.6 M parameters) for compiler-time benchmarks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        layers, c_in = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
                c_in = 4 * width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class RSELayer(nn.Module):
    """PP-OCR's residual squeeze-excite conv: x + SE(x) after a bias-free conv."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.conv, self.se = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), SqueezeExcite(c_out)
        nn.init.uniform_(self.se.reduce.bias, 0.5, 1.0)  # no SE unit dead on every input

    def forward(self, x):
        x = self.conv(x)
        return x + self.se(x)


class TextDetector(nn.Module):
    """A PP-OCR-style text detector: a stride-2 backbone, the RSEFPN neck (each level plus the 2x-upsampled
    coarser one, then upsample each to the finest level and concat) and a DB-style head; exported with dynamic
    height and width, so shapes along the FPN are symbolic arithmetic."""

    def __init__(self, widths: tuple[int, ...] = (16, 24, 48), neck: int = 32):
        super().__init__()
        chans = (3, *widths)
        self.down = nn.ModuleList(conv_bn(chans[i], chans[i + 1], 3, 2) for i in range(len(widths)))
        self.lateral = nn.ModuleList(RSELayer(c, neck, 1) for c in widths[1:])
        self.smooth = nn.ModuleList(RSELayer(neck, neck // 4, 3) for _ in widths[1:])
        fused = neck // 4 * len(self.smooth)
        self.head = nn.Sequential(conv_bn(fused, neck // 4, act=nn.Hardswish), nn.Conv2d(neck // 4, 1, 1))

    def forward(self, x):
        levels = []
        for index, conv in enumerate(self.down):
            x = conv(x)
            if index:
                levels.append(x)
        up = lambda t, f=2: F.interpolate(t, scale_factor=f, mode="nearest")  # noqa: E731
        laterals = [conv(level) for conv, level in zip(self.lateral, levels, strict=True)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + up(merged[0]))
        smoothed = [up(conv(level), 2**i) if i else conv(level)
                    for i, (conv, level) in enumerate(zip(self.smooth, merged, strict=True))]
        return up(self.head(torch.cat(smoothed[::-1], 1)), 2 ** len(levels))  # logits: a sigmoid would saturate


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet": ResNet,
    "mobilenet_v2": lambda: MobileNet(v3=False),
    "mobilenet_v3": lambda: MobileNet(v3=True),
    "densenet": DenseNet,
    "inception": Inception,
    "resnext": ResNeXt,
    "shufflenet": ShuffleNet,
    "convnext": ConvNeXt,
    "resnet50": ResNet50,
    "text_detector": TextDetector,
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A reference model with randomised BN statistics (so folding and slicing are exercised) and an input."""
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    size = {"resnet50": 224}.get(name, 32)
    return model.eval(), torch.randn(2, 3, size, size)
