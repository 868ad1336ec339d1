"""Fusion of an adapter's old and new weights, and the criteria used to tune it.

The adapter is ``A = Linear(d, d, bias=False)`` with weight ``W`` of shape
``(d_out, d_in)``; an adapted feature is ``x @ W.T``.  After each task the
adapter trained on the new task (``W_new``) is merged with the one from before
it (``W_old``):

* :func:`rapf_fuse` - RAPF's fusion (Huang et al., ECCV 2024): project both
  matrices on the left singular basis of ``W_old`` and mix them entry by entry,
  favouring ``W_new`` where it moved most.
* :func:`stacked_fuse` - a "stacked low-rank fusion" in the spirit of Adaptive
  Weighted Parameter Fusion (Guo et al., arXiv 2503.19503).  The paper's exact
  equations are not public; the formulation here is ours.
* :func:`balance_factor_search` - picks the balance factor ``alpha`` of
  :func:`stacked_fuse` by trading class separability (:func:`lda_score`)
  against the drift of old-class features (:func:`mmd2`).

All linear algebra runs in float64; results come back in the input dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "rapf_fuse",
    "stacked_fuse",
    "mmd2",
    "lda_score",
    "adapted",
    "balance_factor_search",
]


def _check_pair(W_old: Tensor, W_new: Tensor) -> None:
    if W_old.dim() != 2 or W_new.dim() != 2:
        raise ValueError(
            f"weights must be 2-D, got {tuple(W_old.shape)} and {tuple(W_new.shape)}"
        )
    if W_old.shape != W_new.shape:
        raise ValueError(
            f"weights must have the same shape, got {tuple(W_old.shape)} "
            f"and {tuple(W_new.shape)}"
        )


def _mix_mask(P_new: Tensor, P_old: Tensor, offset: float) -> Tensor:
    """mask = clamp(D / max(D) + offset, 0, 1) with D = |P_new - P_old|; 0 if max(D) == 0."""
    D = (P_new - P_old).abs()
    m = D.max()
    if m == 0:
        return torch.zeros_like(D)
    return (D / m + offset).clamp(min=0.0, max=1.0)


def rapf_fuse(W_old: Tensor, W_new: Tensor, bias: float) -> Tensor:
    """RAPF's SVD-based fusion of two adapter weights.

    ``U S V^T = svd(W_old)`` (full, ``U`` is ``(d_out, d_out)``);
    ``P_new = U^T W_new``, ``R_old = S V^T = U^T W_old``;
    ``D = |P_new - R_old|``, ``mask = clamp(D / max(D) + bias, 0, 1)``;

        W = U (mask * P_new + (1 - mask) * R_old)

    ``mask = 1`` gives ``W_new``, ``mask = 0`` gives ``W_old``.  (The lower
    clamp at 0 only matters for ``bias < 0``; it keeps the result a convex mix.)

    Args:
        W_old, W_new: ``(d_out, d_in)`` weights.
        bias: offset added to the normalised difference (larger = more of ``W_new``).
    Returns:
        ``(d_out, d_in)`` fused weight, dtype of ``W_old``.  If ``W_new == W_old``
        (``max(D) == 0``) a copy of ``W_old``.
    """
    _check_pair(W_old, W_new)
    A = W_old.detach().to(torch.float64)
    B = W_new.detach().to(device=A.device, dtype=torch.float64)
    U, _, _ = torch.linalg.svd(A, full_matrices=True)
    P_new = U.T @ B
    R_old = U.T @ A
    if (P_new - R_old).abs().max() == 0:
        return W_old.detach().clone()
    mask = _mix_mask(P_new, R_old, float(bias))
    W = U @ (mask * P_new + (1.0 - mask) * R_old)
    return W.to(W_old.dtype)


def stacked_fuse(
    W_old: Tensor,
    W_new: Tensor,
    alpha: float,
    energy: float = 0.999,
    return_info: bool = False,
):
    """Stacked low-rank fusion (our formulation; the paper's equations are not public).

    ``S = [W_old | W_new]`` (``(d_out, 2 d_in)``); ``U_r`` = its top-``r`` left
    singular vectors, ``r`` the smallest rank with
    ``cumsum(s^2) / sum(s^2) >= energy``.  In that shared subspace:
    ``P_old = U_r^T W_old``, ``P_new = U_r^T W_new``, ``D = |P_new - P_old|``,
    ``mask = clamp(D / max(D) + alpha, 0, 1)`` (0 if ``max(D) == 0``),

        W = U_r (mask * P_new + (1 - mask) * P_old) + (I - U_r U_r^T) W_old

    The second term keeps ``W_old``'s component outside the shared subspace, so
    nothing of ``W_old`` is lost.  ``alpha >= 1`` gives ``U_r U_r^T W_new +
    (I - U_r U_r^T) W_old`` (= ``W_new`` when ``energy = 1``).

    Args:
        W_old, W_new: ``(d_out, d_in)`` weights.
        alpha: balance factor added to the normalised difference.
        energy: fraction of squared singular-value energy kept, in ``(0, 1]``.
        return_info: also return ``{"rank": r, "energy_kept": float,
            "basis": U_r (d_out, r), float64}``.
    Returns:
        ``(d_out, d_in)`` fused weight (dtype of ``W_old``), and the info dict if asked.
    """
    _check_pair(W_old, W_new)
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    A = W_old.detach().to(torch.float64)
    B = W_new.detach().to(device=A.device, dtype=torch.float64)
    U, s, _ = torch.linalg.svd(torch.cat([A, B], dim=1), full_matrices=False)
    s2 = s.square()
    total = s2.sum()
    if total == 0:  # both matrices are zero
        W = W_old.detach().clone()
        info = {"rank": 0, "energy_kept": 1.0, "basis": U[:, :0]}
        return (W, info) if return_info else W
    ratio = torch.cumsum(s2, dim=0) / total
    # smallest r with ratio[r-1] >= energy; clamp guards against round-off at energy=1
    r = int(torch.searchsorted(ratio, torch.tensor([energy], dtype=ratio.dtype,
                                                   device=ratio.device)).item()) + 1
    r = min(r, s.numel())
    U_r = U[:, :r]
    info = {"rank": r, "energy_kept": float(ratio[r - 1]), "basis": U_r}
    P_old = U_r.T @ A
    P_new = U_r.T @ B
    if (P_new - P_old).abs().max() == 0:
        W = W_old.detach().clone()
        return (W, info) if return_info else W
    mask = _mix_mask(P_new, P_old, float(alpha))
    fused = mask * P_new + (1.0 - mask) * P_old
    W = U_r @ fused + (A - U_r @ P_old)  # (I - U_r U_r^T) W_old = A - U_r P_old
    W = W.to(W_old.dtype)
    return (W, info) if return_info else W


def mmd2(X: Tensor, Y: Tensor, bandwidth: Optional[float] = None) -> float:
    """Unbiased estimate of squared MMD with an RBF kernel.

    ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``;

        MMD^2_u = mean_{i!=j} K_XX + mean_{i!=j} K_YY - 2 mean K_XY

    ``sigma = bandwidth``, or (median heuristic) the median pairwise Euclidean
    distance over the pooled sample ``[X; Y]``, diagonal excluded (1.0 if that
    median is 0).  Being unbiased, the estimate can be slightly negative when
    the two distributions agree; it is returned as is.

    Args:
        X: ``(n, d)``, Y: ``(m, d)``, with ``n, m >= 2``.
        bandwidth: kernel width ``sigma`` (> 0) or None.
    Returns:
        the estimate as a Python float.
    """
    if X.dim() != 2 or Y.dim() != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must be (n, d) and (m, d), got {tuple(X.shape)}, {tuple(Y.shape)}")
    n, m = X.shape[0], Y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2 needs at least 2 samples in each set, got {n} and {m}")
    X = X.detach().to(torch.float64)
    Y = Y.detach().to(device=X.device, dtype=torch.float64)
    Z = torch.cat([X, Y], dim=0)
    D2 = torch.cdist(Z, Z).square()
    if bandwidth is None:
        iu = torch.triu_indices(n + m, n + m, offset=1, device=Z.device)
        med = D2[iu[0], iu[1]].sqrt().median()
        sigma = float(med) if med > 0 else 1.0
    else:
        sigma = float(bandwidth)
        if not sigma > 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    K = torch.exp(-D2 / (2.0 * sigma * sigma))
    Kxx, Kyy, Kxy = K[:n, :n], K[n:, n:], K[:n, n:]
    term_x = (Kxx.sum() - Kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (Kyy.sum() - Kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * Kxy.mean())


def lda_score(features: Tensor, labels: Tensor, shrinkage: float = 1e-2) -> float:
    """Fisher criterion ``tr(S_w^{-1} S_b)`` (higher = classes better separated).

    ``S_w = 1/N sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T``,
    ``S_b = sum_c (n_c / N)(mu_c - mu)(mu_c - mu)^T``, with shrinkage
    ``S_w <- (1 - s) S_w + s (tr(S_w) / d) I``.  Computed in float64.

    Args:
        features: ``(N, d)``; labels: ``(N,)`` integer class ids (>= 2 distinct).
        shrinkage: ``s`` in ``[0, 1]``.
    Returns:
        the score as a Python float.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, d), got {tuple(features.shape)}")
    labels = torch.as_tensor(labels).reshape(-1).to(features.device)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {features.shape[0]} features")
    classes, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if classes.numel() < 2:
        raise ValueError("lda_score needs at least 2 classes")
    X = features.detach().to(torch.float64)
    N, d = X.shape
    sums = torch.zeros(classes.numel(), d, dtype=X.dtype, device=X.device).index_add_(0, inv, X)
    means = sums / counts.unsqueeze(1).to(X.dtype)  # (C, d)
    Xc = X - means[inv]
    S_w = Xc.T @ Xc / N
    weights = counts.to(X.dtype) / N
    M = means - X.mean(dim=0)
    S_b = (M * weights.unsqueeze(1)).T @ M
    s = float(shrinkage)
    S_w = (1.0 - s) * S_w + s * (torch.trace(S_w) / d) * torch.eye(d, dtype=X.dtype, device=X.device)
    return float(torch.trace(torch.linalg.solve(S_w, S_b)))


def adapted(features: Tensor, W: Tensor, normalize: bool = True) -> Tensor:
    """Adapter output ``x @ W.T`` (``(N, d_in) -> (N, d_out)``), rows L2-normalised if ``normalize``."""
    out = features @ W.to(device=features.device, dtype=features.dtype).T
    return F.normalize(out, dim=-1) if normalize else out


def _subsample(x: Tensor, y: Tensor, k: int, generator: Optional[torch.Generator]):
    if x.shape[0] <= k:
        return x, y
    idx = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
    return x[idx], y[idx.to(y.device)]


def balance_factor_search(
    W_old: Tensor,
    W_new: Tensor,
    old_features: Tensor,
    old_labels: Tensor,
    new_features: Tensor,
    new_labels: Tensor,
    lam: float = 1.0,
    grid: Optional[Union[Sequence[float], Tensor]] = None,
    energy: float = 0.999,
    max_samples: int = 2000,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Grid search for the balance factor ``alpha`` of :func:`stacked_fuse`.

    For each ``alpha``: ``W = stacked_fuse(W_old, W_new, alpha, energy)`` and

        score(alpha) = lda_score(A_W([X_old; X_new]), [y_old; y_new])
                       - lam * mmd2(A_W(X_old), A_{W_old}(X_old))

    with ``A_W(x)`` = :func:`adapted` (normalised).  ``X_old`` are pseudo-features
    sampled for old classes, ``X_new`` the current task's raw features; each set
    is subsampled to ``max_samples`` rows with ``generator``.  The MMD term
    compares two transformations of the *same* samples; they are paired, but by
    design it is computed as a plain two-sample MMD.

    Returns:
        ``{"alpha": best alpha (argmax score, ties -> smallest alpha), "grid",
        "scores", "lda", "mmd": lists over the grid, "W": fused weight at best alpha}``.
    """
    _check_pair(W_old, W_new)
    if grid is None:
        grid = torch.linspace(0.0, 1.0, 11)
    grid_list = sorted(float(a) for a in (grid.tolist() if isinstance(grid, Tensor) else grid))
    if not grid_list:
        raise ValueError("grid must not be empty")
    old_labels = torch.as_tensor(old_labels).reshape(-1)
    new_labels = torch.as_tensor(new_labels).reshape(-1)
    Xo, yo = _subsample(old_features, old_labels, max_samples, generator)
    Xn, yn = _subsample(new_features, new_labels, max_samples, generator)
    X_all = torch.cat([Xo, Xn.to(Xo.device, Xo.dtype)], dim=0)
    y_all = torch.cat([yo.to(Xo.device), yn.to(Xo.device)], dim=0)
    ref_old = adapted(Xo, W_old)

    scores, ldas, mmds = [], [], []
    best, best_W = 0, None
    for i, alpha in enumerate(grid_list):
        W = stacked_fuse(W_old, W_new, alpha, energy=energy)
        lda = lda_score(adapted(X_all, W), y_all)
        mmd = mmd2(adapted(Xo, W), ref_old)
        score = lda - lam * mmd
        ldas.append(lda)
        mmds.append(mmd)
        scores.append(score)
        if best_W is None or score > scores[best]:
            best, best_W = i, W
    return {
        "alpha": grid_list[best],
        "grid": grid_list,
        "scores": scores,
        "lda": ldas,
        "mmd": mmds,
        "W": best_W,
    }
