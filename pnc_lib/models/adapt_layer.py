"""The adapt-layer of SCL-PNC: a residual MLP between the backbone feature and the classifier.

``y = S x + MLP(x)``, with ``S`` a linear shortcut and
``MLP = Linear -> LayerNorm -> LeakyReLU(0.1) -> Linear -> LayerNorm -> LeakyReLU(0.1) -> Linear``.
CIFAR reference: 128 -> 512 (hidden) -> 256. It is trained at every task.
"""
from __future__ import annotations

import torch
from torch import nn


def _widen_input(linear: nn.Linear, new_in: int) -> nn.Linear:
    """A copy of ``linear`` with ``new_in`` inputs: old columns kept, new columns zero."""
    old_in = linear.in_features
    out = nn.Linear(new_in, linear.out_features, bias=linear.bias is not None)
    out = out.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, :old_in] = linear.weight
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    out.weight.requires_grad_(linear.weight.requires_grad)
    if out.bias is not None:
        out.bias.requires_grad_(linear.bias.requires_grad)
    return out


class AdaptLayer(nn.Module):
    """Residual MLP ``(B, in_dim) -> (B, out_dim)``: ``y = shortcut(x) + mlp(x)``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, negative_slope: float = 0.1):
        super().__init__()
        self.in_dim, self.hidden, self.out_dim = int(in_dim), int(hidden), int(out_dim)
        self.shortcut = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.mlp(x)

    def grow_input(self, new_in_dim: int) -> None:
        """Widen the input (serial expansion): the function of the old inputs is unchanged and
        the new inputs start with zero weights in both the shortcut and the first MLP layer."""
        new_in_dim = int(new_in_dim)
        if new_in_dim < self.in_dim:
            raise ValueError(f"the adapt-layer input cannot shrink ({self.in_dim} -> {new_in_dim})")
        if new_in_dim == self.in_dim:
            return
        self.shortcut = _widen_input(self.shortcut, new_in_dim)
        self.mlp[0] = _widen_input(self.mlp[0], new_in_dim)
        self.in_dim = new_in_dim

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.hidden} -> {self.out_dim}"
