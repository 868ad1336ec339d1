"""Reference methods: ``finetune`` (lower bound: no memory), ``replay`` (herding memory) and
``joint`` (upper bound: all data seen so far). All three train the same network, base + one
module + a linear head that grows with the classes, with cross-entropy over the seen classes.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..models import GrowingLinearHead, build_backbone_parts
from .base import NetworkMethod


def backbone_parts(cfg, scenario):
    return build_backbone_parts(cfg.backbone, scenario.input_shape[0], width=cfg.width,
                                blocks=cfg.blocks, module_width=cfg.module_width, base_stages=cfg.base_stages)


class SupervisedBaseline(NetworkMethod):
    name = "finetune"
    data_policy = "current"

    def __init__(self, cfg, scenario, device):
        super().__init__(cfg, scenario, device)
        parts = backbone_parts(cfg, scenario)
        self.model = nn.ModuleDict({"backbone": parts.plain_network(), "head": GrowingLinearHead(parts.out_dim)})
        self.model.to(self.device)

    def begin_task(self, task):
        super().begin_task(task)
        self.model["head"].grow(self.seen)
        self.model.to(self.device)

    def embed(self, x):
        return self.model["backbone"](x)

    def base_network(self):
        return self.model["backbone"][0]     # plain network = Sequential(base, one module)

    def logits(self, x):
        return self.model["head"](self.embed(x))

    def loss(self, x, y, epoch):
        logits = self.logits(x)[:, :self.seen]
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": float((logits.argmax(1) == y).float().mean())}

    def end_task(self, task):
        return {"parameters": sum(p.numel() for p in self.model.parameters())}


class Finetune(SupervisedBaseline):
    name, data_policy = "finetune", "current"


class Replay(SupervisedBaseline):
    name, data_policy = "replay", "memory"


class Joint(SupervisedBaseline):
    name, data_policy = "joint", "all_seen"
