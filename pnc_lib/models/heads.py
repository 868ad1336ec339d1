"""A linear classifier that grows with the classes: old rows are kept, new rows appended."""
from __future__ import annotations

import torch
from torch import nn


class GrowingLinearHead(nn.Module):
    """logits = x @ W.T + b over the classes seen so far; ``grow(K')`` adds K' - K fresh rows."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(0, dim))
        self.bias = nn.Parameter(torch.empty(0))
        if num_classes:
            self.grow(num_classes)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def grow(self, num_classes: int) -> None:
        extra = num_classes - self.num_classes
        if extra < 0:
            raise ValueError(f"a head cannot shrink ({self.num_classes} -> {num_classes} classes)")
        if extra == 0:
            return
        fresh = nn.Linear(self.dim, extra)
        self.weight = nn.Parameter(torch.cat([self.weight.data, fresh.weight.data]))
        self.bias = nn.Parameter(torch.cat([self.bias.data, fresh.bias.data]))

    def forward(self, x):
        return x @ self.weight.t() + self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        k = state_dict.get(prefix + "weight")
        if k is not None and k.shape[0] != self.num_classes:
            self.weight = nn.Parameter(torch.empty_like(k))
            self.bias = nn.Parameter(torch.empty(k.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
