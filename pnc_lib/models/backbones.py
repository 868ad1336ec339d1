"""Backbones split in two parts: a shared *base* (early layers) and a *module* (the rest, up to
global pooling) that SCL-PNC replicates per task. A plain network is base + one module.

Each backbone is a sequence of stages; ``base_stages`` of them form the base and the
remaining ones start every module (``None``: the reference split, all stages in the base):

- ``cnn`` (8x8 digits), 2 stages: conv (w), conv (2w); module tail = conv (module_width),
  max-pool, conv, global average pooling.
- ``resnet32`` (CIFAR ResNet, He et al. 2016, 6n+2 layers with n = ``blocks``), 3 stages:
  stem + stage 1 (w); stage 2 (2w, stride 2); one basic block 2w -> 4w (stride 1, as in the
  reference code); module tail = ``blocks`` basic blocks at ``module_width`` channels, stride 2,
  global pooling. With w=16, n=5, module_width=128 and the reference split this is the SCL-PNC
  CIFAR reference (base output 64 x 16 x 16, module output 128 x 8 x 8 before pooling).
- ``resnet18`` (torchvision's ResNet-18, random init), 3 stages: stem + layer1; layer2; layer3;
  module tail = layer4 + pooling.

A smaller ``base_stages`` moves early stages from the (frozen after task 0) base into every
module: fewer layers are shared and frozen, each module is deeper (MEMO, Zhou et al. 2023,
studies the same trade-off).
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


#: number of stages of each backbone (the reference split puts all of them in the base)
NUM_STAGES = {"cnn": 2, "resnet32": 3, "resnet18": 3}


def base_stages_problem(kind: str, base_stages) -> str | None:
    """Why ``base_stages`` cannot split backbone ``kind``, or None when it can (None = reference)."""
    n = NUM_STAGES.get(kind)
    if base_stages is None or n is None or 1 <= base_stages <= n:
        return None
    return (f"base_stages={base_stages} is impossible for backbone {kind!r}: it has {n} stages; "
            f"choose 1..{n}, or leave it unset for the reference split")


def _stage_factories(kind: str, in_channels: int, width: int, blocks: int, module_width: int):
    """-> (list of stage factories, factory of the module's tail, out_dim). Each factory builds
    fresh layers."""
    if kind == "cnn":
        stages = [lambda: _conv_bn_relu(in_channels, width), lambda: _conv_bn_relu(width, 2 * width)]
        tail = lambda: nn.Sequential(_conv_bn_relu(2 * width, module_width), nn.MaxPool2d(2),
                                     _conv_bn_relu(module_width, module_width))
        return stages, tail, module_width
    if kind == "resnet32":
        stages = [lambda: nn.Sequential(_conv_bn_relu(in_channels, width), _stage(width, width, blocks, 1)),
                  lambda: _stage(width, 2 * width, blocks, 2),
                  lambda: BasicBlock(2 * width, 4 * width, 1)]
        return stages, lambda: _stage(4 * width, module_width, blocks, 2), module_width
    if kind == "resnet18":
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        parts = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1), net.layer2, net.layer3]
        stages = [lambda p=p: copy.deepcopy(p) for p in parts]
        return stages, lambda: copy.deepcopy(net.layer4), 512
    raise ValueError(f"unknown backbone {kind!r}; choose cnn, resnet32 or resnet18")


def build_backbone_parts(kind: str, in_channels: int, width: int = 16, blocks: int = 5,
                         module_width: int = 128, base_stages: int | None = None) -> BackboneParts:
    """Build the base and a module factory for backbone ``kind`` (cnn | resnet32 | resnet18).

    ``base_stages``: how many of the backbone's stages (:data:`NUM_STAGES`) form the base;
    ``None`` = all of them (the reference split). The other stages are built into every module.
    """
    stages, tail, out_dim = _stage_factories(kind, in_channels, width, blocks, module_width)
    problem = base_stages_problem(kind, base_stages)
    if problem:
        raise ValueError(problem)
    n = len(stages) if base_stages is None else int(base_stages)
    base = nn.Sequential(*[f() for f in stages[:n]])
    rest = stages[n:]
    if not rest:    # the reference split: a module is the tail alone
        return BackboneParts(base, lambda: Pooled(tail()), out_dim)
    return BackboneParts(base, lambda: Pooled(nn.Sequential(*[f() for f in rest], tail())), out_dim)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
