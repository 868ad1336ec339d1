"""Backbones split in two parts: a shared *base* (early layers) and a *module* (the last
stage + global pooling) that SCL-PNC replicates per task. A plain network is base + one module.

- ``cnn``: for 8x8 digits. base = two 3x3 conv layers (w, 2w); module = conv (module_width),
  global average pooling.
- ``resnet32``: CIFAR ResNet (He et al. 2016, 6n+2 layers with n = ``blocks``). base = stem +
  stage 1 (w) + stage 2 (2w, stride 2) + one basic block 2w -> 4w (stride 2); module = ``blocks``
  basic blocks at ``module_width`` channels, stride 2, global pooling. With w=16, n=5,
  module_width=128 this is the SCL-PNC CIFAR reference.
- ``resnet18``: torchvision's ResNet-18 (random init): base = stem + layer1-3, module = layer4 + pooling.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN + shortcut (1x1 conv when shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(blocks)])


def _conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Pooled(nn.Module):
    """A module followed by global average pooling: (B, C, H, W) -> (B, C)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


@dataclass
class BackboneParts:
    base: nn.Module                       # (B, C, H, W) -> feature map
    make_module: Callable[[], nn.Module]  # a fresh module: feature map -> (B, out_dim)
    out_dim: int

    def plain_network(self) -> nn.Module:
        """base followed by one module: a standard (non-expanding) backbone."""
        return nn.Sequential(self.base, self.make_module())


def build_backbone_parts(kind: str, in_channels: int, width: int = 16, blocks: int = 5,
                         module_width: int = 128) -> BackboneParts:
    """Build the base and a module factory for backbone ``kind`` (cnn | resnet32 | resnet18)."""
    if kind == "cnn":
        base = nn.Sequential(_conv_bn_relu(in_channels, width), _conv_bn_relu(width, 2 * width))
        return BackboneParts(base, lambda: Pooled(nn.Sequential(
            _conv_bn_relu(2 * width, module_width), nn.MaxPool2d(2), _conv_bn_relu(module_width, module_width))),
            module_width)
    if kind == "resnet32":
        base = nn.Sequential(_conv_bn_relu(in_channels, width), _stage(width, width, blocks, 1),
                             _stage(width, 2 * width, blocks, 2), BasicBlock(2 * width, 4 * width, 2))
        return BackboneParts(base, lambda: Pooled(_stage(4 * width, module_width, blocks, 2)), module_width)
    if kind == "resnet18":
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        base = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        layer4 = net.layer4
        return BackboneParts(base, lambda: Pooled(copy.deepcopy(layer4)), 512)
    raise ValueError(f"unknown backbone {kind!r}; choose cnn, resnet32 or resnet18")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
