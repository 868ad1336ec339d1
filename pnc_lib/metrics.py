"""Evaluation metrics for class-incremental learning and neural collapse.

Conventions
-----------
* All accuracies are in **percent** (0-100).
* ``R`` is the *accuracy matrix*, a ``T x T`` numpy array with
  ``R[t, j]`` = accuracy on the test samples of task ``j``'s classes after
  training on task ``t`` (0-indexed). Entries above the diagonal (``j > t``,
  tasks not seen yet) are ``NaN``.
* ``A_t`` ("step accuracy") is the accuracy on *all* test samples of the
  classes seen so far, measured after training task ``t``. It can be computed
  directly, or derived from ``R`` as a weighted mean of row ``t``
  (see :func:`step_accuracies_from_matrix`).

Incremental metrics: average incremental accuracy (Rebuffi et al., iCaRL,
2017), last accuracy, forgetting (Chaudhry et al., 2018) and backward
transfer (Lopez-Paz & Ranzato, 2017).

Neural-collapse metrics NC1-NC4 (Papyan, Han & Donoho, 2020): see
:func:`nc_metrics`.

Every function accepts numpy arrays, lists or torch tensors (tensors are
detached and moved to the CPU).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "average_incremental_accuracy",
    "bwt",
    "forgetting",
    "last_accuracy",
    "nc_metrics",
    "old_new_accuracy",
    "step_accuracies_from_matrix",
    "task_accuracies",
]


def _np(x, dtype=None) -> np.ndarray:
    """Convert a list / numpy array / torch tensor to a numpy array."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_matrix(R) -> np.ndarray:
    R = _np(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square T x T matrix, got shape {R.shape}")
    return R


# --------------------------------------------------------------------------
# Plain accuracies
# --------------------------------------------------------------------------

def accuracy(preds, targets) -> float:
    """Top-1 accuracy in percent: ``100 * mean(preds == targets)``.

    ``preds``, ``targets``: 1-D integer arrays of shape (N,). NaN if N == 0.
    """
    preds, targets = _np(preds).ravel(), _np(targets).ravel()
    if preds.shape != targets.shape:
        raise ValueError(f"preds {preds.shape} and targets {targets.shape} differ in shape")
    if preds.size == 0:
        return float("nan")
    return float(100.0 * np.mean(preds == targets))


def task_accuracies(preds, targets, task_bounds) -> np.ndarray:
    """Accuracy (percent) on each task's samples.

    ``preds``, ``targets``: (N,) int labels, remapped so that task ``j`` owns
    labels ``[task_bounds[j], task_bounds[j+1])``. ``task_bounds``: T+1 ints.
    Returns a (T,) float array, ``acc_j = 100 * mean_{i: y_i in task j} [p_i == y_i]``,
    NaN for a task without samples.
    """
    preds, targets = _np(preds).ravel(), _np(targets).ravel()
    bounds = list(task_bounds)
    out = np.full(len(bounds) - 1, np.nan)
    for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        mask = (targets >= lo) & (targets < hi)
        out[j] = accuracy(preds[mask], targets[mask])
    return out


def old_new_accuracy(preds, targets, num_old_classes: int) -> tuple[float, float]:
    """Accuracy (percent) on old classes (``y < num_old_classes``) and on new ones.

    ``preds``, ``targets``: (N,) int labels. Returns ``(acc_old, acc_new)``;
    either is NaN when it has no samples.
    """
    preds, targets = _np(preds).ravel(), _np(targets).ravel()
    old = targets < num_old_classes
    return accuracy(preds[old], targets[old]), accuracy(preds[~old], targets[~old])


# --------------------------------------------------------------------------
# Incremental metrics
# --------------------------------------------------------------------------

def step_accuracies_from_matrix(R, task_sizes=None) -> np.ndarray:
    """Step accuracies ``A_t`` from the accuracy matrix.

    ``R``: (T, T). ``task_sizes``: (T,) weights ``n_j`` (test samples or
    classes per task), default all ones. Returns (T,) with
    ``A_t = sum_{j<=t} n_j R[t, j] / sum_{j<=t} n_j``.
    """
    R = _check_matrix(R)
    T = R.shape[0]
    w = np.ones(T) if task_sizes is None else _np(task_sizes, dtype=np.float64).ravel()
    if w.shape != (T,):
        raise ValueError(f"task_sizes must have length T={T}, got {w.shape[0]}")
    return np.array([np.average(R[t, : t + 1], weights=w[: t + 1]) for t in range(T)])


def _step_accuracies(acc, task_sizes) -> np.ndarray:
    acc = _np(acc, dtype=np.float64)
    if acc.ndim == 1:
        if acc.size == 0:
            raise ValueError("need at least one step accuracy")
        return acc
    if acc.ndim == 2:
        return step_accuracies_from_matrix(acc, task_sizes)
    raise ValueError(f"acc must be 1-D (step accuracies) or 2-D (matrix R), got shape {acc.shape}")


def average_incremental_accuracy(acc, task_sizes=None) -> float:
    """Average incremental accuracy ``(1/T) sum_t A_t`` (iCaRL).

    ``acc``: (T,) step accuracies ``A_t``, or the (T, T) matrix ``R`` from which
    ``A_t`` is derived with :func:`step_accuracies_from_matrix` (``task_sizes``
    is only used in that case).
    """
    return float(np.mean(_step_accuracies(acc, task_sizes)))


def last_accuracy(acc, task_sizes=None) -> float:
    """Accuracy after the last task, ``A_T``; same input convention as
    :func:`average_incremental_accuracy`."""
    return float(_step_accuracies(acc, task_sizes)[-1])


def forgetting(R) -> float:
    """Average forgetting (Chaudhry et al., 2018).

    ``R``: (T, T). ``f_j = max_{j <= l < T-1} R[l, j] - R[T-1, j]``, averaged over
    ``j < T-1`` (the last task cannot have been forgotten yet). Returns 0.0 when
    T == 1: with a single task there is nothing to forget.
    """
    R = _check_matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    best = np.array([np.max(R[j : T - 1, j]) for j in range(T - 1)])
    return float(np.mean(best - R[T - 1, : T - 1]))


def bwt(R) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017).

    ``R``: (T, T). ``BWT = (1/(T-1)) sum_{j<T-1} (R[T-1, j] - R[j, j])``;
    negative values mean forgetting. Returns 0.0 when T == 1.
    """
    R = _check_matrix(R)
    T = R.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean(R[T - 1, : T - 1] - np.diag(R)[: T - 1]))


# --------------------------------------------------------------------------
# Neural collapse
# --------------------------------------------------------------------------

def nc_metrics(features, labels, classifier=None) -> dict:
    """Neural-collapse metrics (Papyan, Han & Donoho, 2020).

    ``features``: (N, d); ``labels``: (N,) ints. Classes are the sorted unique
    labels present (K of them, K >= 2). With global mean ``mu_G`` (mean of all
    samples), class means ``mu_c``, centred means ``m_c = mu_c - mu_G``::

        S_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T
        S_B = (1/K) sum_c m_c m_c^T
        nc1                 = tr(S_W pinv(S_B)) / K   (pinv cut-off 1e-10 relative)
        nc2_equinorm        = std_c ||m_c|| / mean_c ||m_c||
        nc2_equiangular_std = std_{c<c'} cos(m_c, m_c')
        nc2_equiangular_dev = mean_{c<c'} |cos(m_c, m_c') + 1/(K-1)|

    If ``classifier`` W is given, it must be (K, d) with row k = the vector of
    the k-th class present (an ETF stored as (d, K) must be passed as ``M.T``).
    A matrix with more rows (e.g. all classes of the benchmark) is accepted and
    indexed by the labels present. Then, with ``Mc`` the (K, d) matrix of rows
    ``m_c``::

        nc3 = || W/||W||_F - Mc/||Mc||_F ||_F
        nc4 = fraction of samples where argmax_k (h W^T)_k != argmin_c ||h - mu_c||

    Returns a dict of Python floats, plus ``num_classes`` = K.
    """
    H = _np(features, dtype=np.float64)
    y = _np(labels).ravel()
    if H.ndim != 2 or H.shape[0] != y.shape[0]:
        raise ValueError(f"features must be (N, d) and labels (N,); got {H.shape} and {y.shape}")
    classes, y_idx = np.unique(y, return_inverse=True)
    K, d = len(classes), H.shape[1]
    if K < 2:
        raise ValueError(f"nc_metrics needs at least 2 classes, got {K}")

    mu_G = H.mean(axis=0)
    mu = np.stack([H[y_idx == k].mean(axis=0) for k in range(K)])  # (K, d)
    Mc = mu - mu_G
    Hw = H - mu[y_idx]
    S_W = Hw.T @ Hw / H.shape[0]
    S_B = Mc.T @ Mc / K
    # S_B has rank <= K-1; a relative cut-off keeps round-off "eigenvalues" of
    # the null space from being inverted into huge numbers.
    S_B_pinv = np.linalg.pinv(S_B, rcond=1e-10, hermitian=True)
    out = {"num_classes": K, "nc1": float(np.trace(S_W @ S_B_pinv) / K)}

    norms = np.linalg.norm(Mc, axis=1)
    out["nc2_equinorm"] = float(norms.std() / norms.mean())
    cos = (Mc @ Mc.T) / np.outer(norms, norms)
    pairs = cos[np.triu_indices(K, k=1)]
    out["nc2_equiangular_std"] = float(pairs.std())
    out["nc2_equiangular_dev"] = float(np.mean(np.abs(pairs + 1.0 / (K - 1))))

    if classifier is not None:
        W = _np(classifier, dtype=np.float64)
        if W.ndim == 2 and W.shape == (K, d):
            pass
        elif W.ndim == 2 and W.shape[1] == d and W.shape[0] > classes.max() and classes.min() >= 0:
            W = W[classes]
        else:
            raise ValueError(
                f"classifier must have shape (K, d) = ({K}, {d}) (one row per class; "
                f"pass M.T for an ETF stored as (d, K)) or (C, {d}) with C > max label; "
                f"got {W.shape}"
            )
        out["nc3"] = float(np.linalg.norm(W / np.linalg.norm(W) - Mc / np.linalg.norm(Mc)))
        clf_pred = np.argmax(H @ W.T, axis=1)
        # ||h - mu_c||^2 = ||h||^2 - 2 h.mu_c + ||mu_c||^2; the first term is shared
        ncm_pred = np.argmin((mu**2).sum(axis=1) - 2.0 * H @ mu.T, axis=1)
        out["nc4"] = float(np.mean(clf_pred != ncm_pred))
    return out
