"""Linear probes: how much of a label a frozen feature map still makes linearly readable.

A probe fits a multinomial logistic regression (scikit-learn, on standardised features) on
training features and reports its test accuracy. Used to ask what SCL-PNC's base, frozen
after task 0, can still tell apart for classes it never trained on, compared with the base
of a network that kept training (replay, joint).

``attribute_labels`` maps class labels to one attribute of the procedural ``shapes`` set
(shape, colour or texture), so a probe can be asked about each attribute separately.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .metrics import _np

ATTRIBUTES = ("shape", "colour", "texture")


def linear_probe_accuracy(train_x, train_y, test_x, test_y, C: float = 1.0, max_iter: int = 2000) -> float:
    """Test accuracy (%) of a logistic-regression probe fitted on ``(train_x (n, d), train_y (n,))``.

    Features are standardised with the training statistics; the labels may be any hashable
    values (class ids or attribute names). Deterministic (lbfgs).
    """
    train_x, test_x = _np(train_x, np.float64), _np(test_x, np.float64)
    train_y, test_y = _np(train_y), _np(test_y)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (n, d) and (m, d), got {train_x.shape} and {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("one label per feature row is needed")
    if len(np.unique(train_y)) < 2:
        raise ValueError("a probe needs at least 2 distinct training labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(train_x, train_y)
    return float(100.0 * (probe.predict(test_x) == test_y).mean())


def attribute_labels(scenario, labels, attribute: str) -> np.ndarray:
    """The ``attribute`` (shape | colour | texture) of each (scenario) class label, for ``shapes``."""
    attrs: Optional[list] = scenario.info.get("attributes")
    if not attrs:
        raise ValueError(f"{scenario.dataset} has no class attributes (only the procedural shapes set has)")
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    return np.array([attrs[scenario.class_order[int(c)]][attribute] for c in _np(labels).reshape(-1)])


def probe_base(method, scenario, classes: Optional[int] = None) -> dict:
    """Probe accuracies (%) of a network method's pooled base features (``method.base_features``)
    on the first ``classes`` classes (default: all): the class itself and, on ``shapes``, each
    attribute. Returns ``{"class": acc, "shape": acc, ...}``."""
    k = scenario.num_classes if classes is None else int(classes)
    labels = {s: _np(scenario.split(s).y) for s in ("train", "test")}
    idx = {s: np.flatnonzero(y < k) for s, y in labels.items()}
    x = {s: method.base_features(s, idx[s]) for s in idx}
    y = {s: labels[s][idx[s]] for s in idx}
    out = {"class": linear_probe_accuracy(x["train"], y["train"], x["test"], y["test"])}
    if scenario.info.get("attributes"):
        for a in ATTRIBUTES:
            out[a] = linear_probe_accuracy(x["train"], attribute_labels(scenario, y["train"], a),
                                           x["test"], attribute_labels(scenario, y["test"], a))
    return out
