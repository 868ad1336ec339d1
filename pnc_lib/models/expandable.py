"""The expandable backbone of SCL-PNC: a shared *base* and one *expansion module* per task.

Task 0 trains the base and module 0. From task 1 on the base is frozen and each task appends
a module initialised as a copy of the previous one; all earlier modules are frozen. Frozen
parts are also kept in eval mode, so their BatchNorm running statistics never move.

Every module reads the base feature map ``z = base(x)``. With modules ``f_0 .. f_t``:

- ``parallel`` (the paper's choice): ``h = 1/(t+1) sum_k f_k(z)``, size ``d`` whatever ``t``;
- ``serial`` (MEMO/DER-style ablation): ``h = [f_0(z), ..., f_t(z)]``, size ``(t+1) d``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .backbones import BackboneParts

EXPANSIONS = ("parallel", "serial")


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class ExpandableBackbone(nn.Module):
    """Shared base + a growing ``nn.ModuleList`` of expansion modules.

    Args:
        parts: base network and module factory (:func:`build_backbone_parts`).
        expansion: ``"parallel"`` (mean of module outputs) or ``"serial"`` (concatenation).

    ``forward(x)``: (B, C, H, W) -> (B, out_dim). Call :meth:`add_module_for_task` once per
    task (task 0 included) before training it.
    """

    def __init__(self, parts: BackboneParts, expansion: str = "parallel"):
        super().__init__()
        if expansion not in EXPANSIONS:
            raise ValueError(f"expansion={expansion!r} is not one of {', '.join(EXPANSIONS)}")
        self.parts = parts            # the factory (not a submodule: parts.base is registered below)
        self.expansion = expansion
        self.module_dim = int(parts.out_dim)
        self.base = parts.base
        self.expansions = nn.ModuleList()
        self.base_frozen = False

    # ------------------------------------------------------------------ structure
    @property
    def num_modules(self) -> int:
        return len(self.expansions)

    @property
    def out_dim(self) -> int:
        """Feature size: ``d`` (parallel) or ``num_modules * d`` (serial; ``d`` before any module)."""
        if self.expansion == "parallel":
            return self.module_dim
        return self.module_dim * max(self.num_modules, 1)

    def freeze_base(self) -> None:
        """``requires_grad=False`` on the base and eval mode for its BatchNorm."""
        _freeze(self.base)
        self.base_frozen = True

    def add_module_for_task(self) -> nn.Module:
        """Append a module: fresh for the first, else an exact copy of the last one.

        From the second module on, the base and every earlier module are frozen.
        Returns the new (trainable) module.
        """
        if self.num_modules == 0:
            new = self.parts.make_module()
        else:
            new = copy.deepcopy(self.expansions[-1])
            self.freeze_base()
            for m in self.expansions:
                _freeze(m)
        for p in new.parameters():
            p.requires_grad_(True)
        new.train(self.training)
        device = next(self.base.parameters()).device
        self.expansions.append(new.to(device))
        return new

    def train(self, mode: bool = True):
        """Set the mode, then put the frozen parts (base after task 0, old modules) back in eval."""
        super().train(mode)
        if self.base_frozen:
            self.base.eval()
        for m in list(self.expansions)[:-1]:
            m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def module_outputs(self, x: torch.Tensor) -> list:
        """One base forward, then every module: list of ``num_modules`` tensors (B, d)."""
        if self.num_modules == 0:
            raise RuntimeError("no expansion module yet: call add_module_for_task() (begin_task(0)) first")
        z = self.base(x)
        return [m(z) for m in self.expansions]

    def combine(self, outputs: list) -> torch.Tensor:
        """Mean (parallel) or concatenation (serial) of module outputs."""
        if self.expansion == "parallel":
            return torch.stack(outputs, 0).mean(0)
        return torch.cat(outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.module_outputs(x))

    def parameter_counts(self) -> dict:
        """``total``, ``trainable`` (requires_grad), ``base``, ``per_module`` (one module's size)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        per_module = sum(p.numel() for p in self.expansions[-1].parameters()) if self.num_modules else 0
        return {"total": total, "trainable": trainable,
                "base": sum(p.numel() for p in self.base.parameters()), "per_module": per_module}

    def extra_repr(self) -> str:
        return f"expansion={self.expansion!r}, module_dim={self.module_dim}"
