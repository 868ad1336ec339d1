"""Plots shared by the notebooks and ``python -m pnc_lib report``: accuracy matrix heat map,
accuracy curves over tasks. Each returns the matplotlib Axes it drew on."""
from __future__ import annotations

from typing import Dict, Optional

import matplotlib.pyplot as plt
import numpy as np


def plot_accuracy_matrix(result, ax=None, title: Optional[str] = None):
    """Heat map of R[t, j] (accuracy on task j after training task t)."""
    import seaborn as sns

    R = np.asarray(result.acc_matrix, dtype=float)
    ax = ax or plt.subplots(figsize=(4.2, 3.6))[1]
    T = R.shape[0]
    sns.heatmap(R, annot=T <= 10, fmt=".0f", vmin=0, vmax=100, cmap="viridis", mask=np.isnan(R), ax=ax,
                cbar_kws={"label": "accuracy (%)"}, xticklabels=range(T), yticklabels=range(T))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task t")
    ax.set_title(title or f"{result.config.get('method')}: accuracy matrix")
    return ax


def plot_accuracy_curves(results: Dict[str, object], ax=None, title: str = "Accuracy on all seen classes"):
    """A_t against the number of seen classes, one line per method."""
    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for name, r in results.items():
        cfg = r.config
        base = cfg["base"] or cfg["increment"]   # base 0 means B0: the first task has `increment` classes
        seen = [base + t * cfg["increment"] for t in range(len(r.step_accuracy))]
        ax.plot(seen, r.step_accuracy, marker="o", label=f"{name} ({r.avg_incremental_accuracy:.1f})")
    ax.set_xlabel("number of classes seen")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(title="method (avg. inc. acc.)", fontsize=8)
    ax.grid(alpha=0.3)
    return ax
