"""The pieces of the CLIP adapter pipeline that do not depend on the engine.

* :func:`make_adapter` - ``A = Linear(d, d, bias=False)`` with ``W = I``: before any
  training ``A f = f``, so the model starts as zero-shot CLIP (the adapter only ever moves
  away from zero-shot as far as training pushes it, and fusion at task 1 mixes with I).
* :func:`class_gaussians` / :func:`sample_pseudo_features` - replay without images: per class
  the mean and covariance of the *raw* (pre-adapter) features, sampled from
  ``N(mu_c, Sigma_c + 1e-4 I)``.
* :func:`hard_pairs` / :func:`hard_pair_loss` - RAPF's hard-pair adjustment.
* :func:`clip_logits` - ``exp(log s) * cos(A f, t_c)``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

JITTER = 1e-4


def make_adapter(dim: int) -> nn.Linear:
    """``Linear(d, d, bias=False)`` initialised to the identity (= zero-shot CLIP)."""
    layer = nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
    return layer


def class_gaussians(features: torch.Tensor, labels: torch.Tensor, classes: Iterable[int]) -> Dict[int, tuple]:
    """``{c: (mu_c (d,), Sigma_c (d, d))}`` of the raw features of each class in ``classes``.

    ``mu_c = mean_i x_i``, ``Sigma_c = 1/(n_c - 1) sum_i (x_i - mu_c)(x_i - mu_c)^T`` (zeros if n_c = 1),
    computed in float64 and stored in float32 on the CPU.
    """
    X = features.detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).reshape(-1).cpu()
    out = {}
    for c in classes:
        Xc = X[y == int(c)]
        if Xc.shape[0] == 0:
            raise ValueError(f"class {c} has no features")
        mu = Xc.mean(0)
        D = Xc - mu
        cov = D.T @ D / (Xc.shape[0] - 1) if Xc.shape[0] > 1 else torch.zeros(X.shape[1], X.shape[1], dtype=X.dtype)
        out[int(c)] = (mu.float(), cov.float())
    return out


def gaussian_cholesky(cov: torch.Tensor, jitter: float = JITTER) -> torch.Tensor:
    """Lower Cholesky factor L of ``cov + jitter I`` (float64); the jitter grows x10 if needed."""
    C = cov.to(torch.float64)
    eye = torch.eye(C.shape[0], dtype=C.dtype)
    C = 0.5 * (C + C.T)
    eps = jitter
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(C + eps * eye)
        if int(info) == 0:
            return L
        eps *= 10.0
    raise ValueError("covariance is not positive semi-definite, even with added jitter")


def sample_pseudo_features(stats: Dict[int, tuple], classes: Iterable[int], n_per_class: int,
                           generator: Optional[torch.Generator] = None,
                           chol_cache: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_per_class`` pseudo-features per class: ``x = mu_c + L_c z``, ``z ~ N(0, I)``,
    ``L_c L_c^T = Sigma_c + 1e-4 I``.

    ``chol_cache`` (a dict) keeps each class's ``L_c`` so it is factorised once.
    Returns ``X (n * |classes|, d)`` float32 and ``y`` int64 labels, on the CPU.
    """
    classes = [int(c) for c in classes]
    if not classes or n_per_class <= 0:
        d = next(iter(stats.values()))[0].shape[0] if stats else 0
        return torch.zeros(0, d), torch.zeros(0, dtype=torch.long)
    cache = chol_cache if chol_cache is not None else {}
    xs, ys = [], []
    for c in classes:
        mu, cov = stats[c]
        if c not in cache:
            cache[c] = gaussian_cholesky(cov)
        L = cache[c]
        z = torch.randn(n_per_class, mu.shape[0], generator=generator, dtype=torch.float64)
        xs.append((mu.to(torch.float64) + z @ L.T).float())
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def hard_pairs(text_feats: torch.Tensor, old_classes: Iterable[int], new_classes: Iterable[int],
               threshold: float) -> List[Tuple[int, int]]:
    """Old/new class pairs whose unit-norm text features are closer than ``threshold`` in L2
    distance, ``||t_old - t_new||_2 < threshold`` (= ``cos > 1 - threshold^2 / 2``)."""
    old, new = [int(c) for c in old_classes], [int(c) for c in new_classes]
    if not old or not new:
        return []
    T = F.normalize(text_feats.detach().float(), dim=-1)
    D = torch.cdist(T[old], T[new])
    return [(old[i], new[j]) for i, j in torch.nonzero(D < threshold).tolist()]


def hard_pair_loss(adapted_old_feats: torch.Tensor, old_labels: torch.Tensor, text_feats: torch.Tensor,
                   pairs: List[Tuple[int, int]], margin: float = 0.1) -> torch.Tensor:
    """Hinge on old-class features of hard pairs:
    ``mean_{(e, o, n)} relu(cos(A e, t_n) - cos(A e, t_o) + margin)``
    over every feature ``A e`` (B, d) of label ``o`` and every pair ``(o, n)``. 0 without any.
    """
    zero = adapted_old_feats.sum() * 0.0
    if not pairs or adapted_old_feats.shape[0] == 0:
        return zero
    z = F.normalize(adapted_old_feats, dim=-1)
    T = F.normalize(text_feats.to(z), dim=-1)
    cos = z @ T.T                                                 # (B, K)
    pair_old = torch.tensor([p[0] for p in pairs], device=z.device)
    pair_new = torch.tensor([p[1] for p in pairs], device=z.device)
    labels = torch.as_tensor(old_labels, device=z.device).reshape(-1)
    match = labels[:, None] == pair_old[None, :]                  # (B, P)
    if not bool(match.any()):
        return zero
    rows, cols = torch.nonzero(match, as_tuple=True)
    hinge = F.relu(cos[rows, pair_new[cols]] - cos[rows, pair_old[cols]] + margin)
    return hinge.mean()


def clip_logits(adapted_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``exp(logit_scale) * cos(A f, t_c)``: (B, d), (K, d) -> (B, K)."""
    scale = float(torch.exp(torch.tensor(float(logit_scale))))
    return scale * F.normalize(adapted_feats, dim=-1) @ F.normalize(text_feats.to(adapted_feats), dim=-1).T
