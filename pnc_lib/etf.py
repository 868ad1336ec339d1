"""Simplex equiangular tight frames (ETF) and a fixed-ETF classifier head.

Parametric neural collapse (SCL-PNC) fixes the classifier to a simplex ETF:
``K`` unit vectors in ``R^dim`` whose pairwise cosine is ``-1/(K-1)``, the
geometry that features and classifier converge to at the end of training
("neural collapse"). When new classes arrive the ETF must grow to ``K' > K``
columns; :func:`grow_etf` offers three ways of doing so.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GROW_MODES",
    "simplex_etf",
    "grow_etf",
    "prototype_shift",
    "ETFHead",
]

#: Valid values of the ``mode`` argument of :func:`grow_etf` / :class:`ETFHead`.
GROW_MODES = ("procrustes", "redraw", "fixed")


def _random_orthonormal(dim: int, k: int, generator: Optional[torch.Generator]) -> Tensor:
    """Random ``(dim, k)`` float64 matrix with orthonormal columns.

    QR of a Gaussian matrix ``G = Q R``; columns of ``Q`` are multiplied by
    ``sign(diag(R))`` so the result is a deterministic function of ``G``
    (and hence of the generator state).
    """
    gauss = torch.randn(dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs.unsqueeze(0)


def simplex_etf(dim: int, num_classes: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random simplex ETF, shape ``(dim, K)`` float32.

    ``M = sqrt(K / (K - 1)) * P (I_K - 1/K 1 1^T)`` with ``P`` a random
    ``(dim, K)`` matrix with orthonormal columns (``P^T P = I_K``). Columns of
    ``M`` have unit norm and ``m_i^T m_j = -1/(K-1)`` for ``i != j``.

    For ``K == 1`` the simplex is degenerate; a single random unit column is
    returned. Computed in float64, cast to float32.

    Raises:
        ValueError: if ``dim < K`` (``P`` needs ``K`` orthonormal columns).
    """
    dim = int(dim)
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {k}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if dim < k:
        raise ValueError(
            f"cannot build a simplex ETF of {k} classes in dimension {dim}: this construction "
            f"needs dim >= num_classes. Use a feature dim >= number of classes ({k}), or mode "
            f"'fixed' with a larger dim (e.g. project features to >= {k} dims)."
        )
    p = _random_orthonormal(dim, k, generator)
    if k == 1:
        return p.to(torch.float32)
    centering = torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k, dtype=torch.float64)
    m = math.sqrt(k / (k - 1)) * (p @ centering)
    return m.to(torch.float32)


def grow_etf(
    M: Tensor,
    num_classes: int,
    mode: str = "procrustes",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Grow an ETF ``M`` of shape ``(dim, K)`` to ``(dim, K')``, ``K' >= K``.

    Modes:
        * ``"redraw"``: a fresh ``simplex_etf(dim, K')`` (old prototypes move
          arbitrarily; the reference implementation's behaviour).
        * ``"procrustes"``: draw ``E = simplex_etf(dim, K')`` and rotate it by
          ``Q = argmin_{Q^T Q = I} ||Q E[:, :K] - M||_F``. With the SVD
          ``M E[:, :K]^T = U S V^T``, ``Q = U V^T``. Returns ``Q E``: still an
          exact simplex ETF, with old prototypes moved as little as possible.
        * ``"fixed"``: ``M`` already holds an ETF over the whole label space
          (``>= K'`` columns); returns ``M[:, :K']`` unchanged.

    Returns a tensor with ``M``'s dtype and device.
    """
    if mode not in GROW_MODES:
        raise ValueError(f"unknown ETF grow mode {mode!r}; valid modes are {list(GROW_MODES)}")
    if M.dim() != 2:
        raise ValueError(f"M must be a (dim, K) matrix, got shape {tuple(M.shape)}")
    dim, k_old = M.shape
    k_new = int(num_classes)

    if mode == "fixed":
        if M.shape[1] < k_new:
            raise ValueError(
                f"mode 'fixed' needs an ETF with at least {k_new} columns, but M has {M.shape[1]}; "
                "build it once for the whole label space (ETFHead(..., total_classes=...))."
            )
        return M[:, :k_new]

    if k_new < k_old:
        raise ValueError(f"cannot shrink an ETF: M has {k_old} columns, asked for {k_new}")

    fresh = simplex_etf(dim, k_new, generator=generator).to(torch.float64)
    if mode == "redraw":
        return fresh.to(device=M.device, dtype=M.dtype)

    # Orthogonal Procrustes: maximise tr(Q^T M A^T) with A = fresh[:, :K].
    target = M.detach().to(device="cpu", dtype=torch.float64)
    cross = target @ fresh[:, :k_old].T  # (dim, dim)
    u, _, vh = torch.linalg.svd(cross)
    rotation = u @ vh
    return (rotation @ fresh).to(device=M.device, dtype=M.dtype)


def prototype_shift(M_old: Tensor, M_new: Tensor) -> float:
    """Mean displacement of the old prototypes: ``1/K sum_c ||M_new[:, c] - M_old[:, c]||_2``.

    ``M_old`` is ``(dim, K)``, ``M_new`` is ``(dim, K')`` with ``K' >= K``.
    """
    k = M_old.shape[1]
    if M_new.shape[0] != M_old.shape[0] or M_new.shape[1] < k:
        raise ValueError(
            f"M_new {tuple(M_new.shape)} must have the same dim as M_old {tuple(M_old.shape)} "
            "and at least as many columns"
        )
    if k == 0:
        return 0.0
    old = M_old.detach().to(torch.float64).cpu()
    new = M_new.detach()[:, :k].to(torch.float64).cpu()
    return float((new - old).norm(dim=0).mean())


class ETFHead(nn.Module):
    """Classifier with a fixed (non-trained) simplex ETF.

    ``h = normalize(BN(x))``, ``logits = h @ M[:, :K]``; ``x`` is ``(B, dim)``,
    logits are ``(B, K)`` cosines in ``[-1, 1]``. Only the BatchNorm is
    trainable; ``M`` is a buffer (saved in ``state_dict``).

    Args:
        dim: feature dimension.
        num_classes: classes ``K`` in use at the start.
        mode: how :meth:`grow` extends the ETF (see :func:`grow_etf`).
        total_classes: required for ``mode="fixed"``: ``M`` is built once as
            ``simplex_etf(dim, total_classes)`` and only its first ``K`` columns
            are used.
        generator: ``torch.Generator`` used for every ETF draw.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        mode: str = "procrustes",
        total_classes: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        if mode not in GROW_MODES:
            raise ValueError(f"unknown ETF grow mode {mode!r}; valid modes are {list(GROW_MODES)}")
        self.dim = int(dim)
        self.mode = mode
        self.generator = generator
        if mode == "fixed":
            if total_classes is None:
                raise ValueError("ETFHead(mode='fixed') needs total_classes (size of the whole label space)")
            if total_classes < num_classes:
                raise ValueError(f"total_classes ({total_classes}) < num_classes ({num_classes})")
            M = simplex_etf(self.dim, int(total_classes), generator=generator)
        else:
            M = simplex_etf(self.dim, int(num_classes), generator=generator)
        self.total_classes = None if total_classes is None else int(total_classes)
        self.bn = nn.BatchNorm1d(self.dim)
        self.register_buffer("M", M)
        # Number of columns in use; a buffer so it travels with the state_dict.
        self.register_buffer("active_classes", torch.tensor(int(num_classes), dtype=torch.long))

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` currently in use."""
        return int(self.active_classes.item())

    @property
    def etf(self) -> Tensor:
        """Columns in use, ``(dim, K)``."""
        return self.M[:, : self.num_classes]

    def normalized_features(self, x: Tensor) -> Tensor:
        """``h = BN(x) / ||BN(x)||_2``, shape ``(B, dim)``."""
        return F.normalize(self.bn(x), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``h @ M[:, :K]``, shape ``(B, K)``."""
        return self.normalized_features(x) @ self.etf

    @torch.no_grad()
    def grow(self, num_classes: int) -> float:
        """Extend to ``num_classes`` classes; returns :func:`prototype_shift` of the old ones."""
        num_classes = int(num_classes)
        old = self.etf.clone()
        if num_classes < old.shape[1]:
            raise ValueError(f"cannot shrink the head from {old.shape[1]} to {num_classes} classes")
        if self.mode == "fixed":
            new_used = grow_etf(self.M, num_classes, mode="fixed")
        else:
            new_M = grow_etf(old, num_classes, mode=self.mode, generator=self.generator)
            self.M = new_M.to(device=self.M.device, dtype=self.M.dtype)
            new_used = self.M
        self.active_classes.fill_(num_classes)
        return prototype_shift(old, new_used)

    def _load_from_state_dict(
        self,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        # Resize M to the checkpoint's shape so a head saved after task t loads
        # into a freshly built head (which has fewer columns).
        key = prefix + "M"
        if key in state_dict:
            incoming = state_dict[key]
            if incoming.dim() == 2 and incoming.shape[0] == self.dim and incoming.shape != self.M.shape:
                self.M = torch.empty_like(incoming, device=self.M.device, dtype=self.M.dtype)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, mode={self.mode!r}"
