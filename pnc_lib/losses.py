"""Losses of SCL-PNC: dot regression onto fixed ETF prototypes and module distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dot_regression_loss", "module_distillation_loss", "class_balance_weights"]


def class_balance_weights(targets: Tensor) -> Tensor:
    """Per-sample squared weights ``w_{y_i}^2 = (B / n_present) / count_{y_i}``, shape ``(B,)``.

    ``count_c`` is the number of samples of class ``c`` in the batch and
    ``n_present`` the number of distinct classes, so the weights of each
    present class sum to ``B / n_present`` (every class carries the same total).
    """
    targets = targets.long()
    batch = targets.numel()
    _, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    n_present = counts.numel()
    per_sample_count = counts[inverse].to(torch.float32)
    return (batch / n_present) / per_sample_count


def dot_regression_loss(
    features: Tensor,
    targets: Tensor,
    etf: Tensor,
    rebalance: bool = False,
) -> Tensor:
    """Dot-regression loss ``L_DR = 1/2 * mean_i w_{y_i}^2 (m_{y_i}^T h_i - 1)^2``.

    Args:
        features: ``(B, d)``; L2-normalised here (``h_i = f_i / ||f_i||``).
        targets: ``(B,)`` long class indices into the columns of ``etf``.
        etf: ``(d, K)`` fixed prototypes (detached: gradients reach ``features`` only).
        rebalance: if True, ``w_c^2 = (B / n_present) / count_c`` (see
            :func:`class_balance_weights`); otherwise ``w = 1``.

    Returns:
        scalar tensor; 0 exactly when every ``h_i`` equals its prototype ``m_{y_i}``.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (B, d), got {tuple(features.shape)}")
    if etf.dim() != 2 or etf.shape[0] != features.shape[1]:
        raise ValueError(f"etf must be (d, K) with d={features.shape[1]}, got {tuple(etf.shape)}")
    targets = targets.long()
    h = F.normalize(features, dim=1)
    protos = etf.detach().to(dtype=h.dtype, device=h.device)[:, targets].T  # (B, d)
    dots = (h * protos).sum(dim=1)  # (B,)
    sq = (dots - 1.0) ** 2
    if rebalance:
        sq = sq * class_balance_weights(targets).to(dtype=sq.dtype, device=sq.device)
    return 0.5 * sq.mean()


def module_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Module distillation ``L_KD = 1/2 * mean_i (cos(s_i, t_i) - 1)^2``.

    Args:
        student: ``(B, d)`` pooled output of the new module (receives gradients).
        teacher: ``(B, d)`` pooled output of the previous module; detached, not modified.

    Inputs with more than two dims are flattened to ``(B, -1)``.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")
    s = student.flatten(1)
    t = teacher.detach().flatten(1).to(dtype=s.dtype)
    cos = F.cosine_similarity(s, t, dim=1)
    return 0.5 * ((cos - 1.0) ** 2).mean()
