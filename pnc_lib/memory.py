"""Exemplar memory (rehearsal) with herding selection (Rebuffi et al., iCaRL, 2017).

The memory holds *indices* into the training split, never copies of images. A fixed total
``budget`` is shared by all seen classes: after a task, each class keeps
``budget // seen_classes`` exemplars, so old classes shrink as new ones arrive. Herding
orders a class's samples so that the mean of the first m approximates the class mean;
shrinking keeps a prefix of that order.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F


def herding_order(features: torch.Tensor, m: int) -> np.ndarray:
    """Greedy herding on L2-normalised features (n, d): pick m rows so that
    ``|| mu - (1/k) sum_{i<=k} f_{p_i} ||`` is minimal at every step k. Returns positions (m,)."""
    f = F.normalize(features.double(), dim=1)
    n = f.shape[0]
    m = min(m, n)
    mu = f.mean(0)
    chosen = torch.zeros(n, dtype=torch.bool, device=f.device)
    running = torch.zeros_like(mu)
    order = []
    for k in range(1, m + 1):
        dist = ((mu[None] - (running[None] + f) / k) ** 2).sum(1)
        dist[chosen] = float("inf")
        i = int(torch.argmin(dist))
        order.append(i)
        chosen[i] = True
        running += f[i]
    return np.asarray(order, dtype=np.int64)


class ExemplarMemory:
    """Herding memory under a total budget shared by all seen classes."""

    def __init__(self, budget: int):
        if budget < 0:
            raise ValueError(f"memory budget must be >= 0, got {budget}")
        self.budget = int(budget)
        self.exemplars: Dict[int, np.ndarray] = {}   # class -> train indices, herding order

    @property
    def indices(self) -> np.ndarray:
        """All stored training indices (sorted by class)."""
        if not self.exemplars:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.exemplars[c] for c in sorted(self.exemplars)])

    def per_class(self, num_classes: int) -> int:
        return self.budget // max(num_classes, 1)

    def update(self, labels: torch.Tensor, new_classes, seen_classes: int,
               features_fn: Callable[[np.ndarray], torch.Tensor]) -> None:
        """Shrink old classes to the new per-class quota, then herd the new classes.

        labels: (N,) training labels; features_fn(indices) -> (n, d) features of those samples.
        """
        m = self.per_class(seen_classes)
        for c in list(self.exemplars):
            self.exemplars[c] = self.exemplars[c][:m]
        if m == 0:
            return
        labels = torch.as_tensor(labels)
        for c in new_classes:
            idx = torch.nonzero(labels == c).flatten().numpy()
            if len(idx) == 0:
                continue
            feats = features_fn(idx)
            self.exemplars[int(c)] = idx[herding_order(feats, m)]

    def state_dict(self) -> dict:
        return {"budget": self.budget, "exemplars": {int(c): v.tolist() for c, v in self.exemplars.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.budget = int(state["budget"])
        self.exemplars = {int(c): np.asarray(v, dtype=np.int64) for c, v in state["exemplars"].items()}
