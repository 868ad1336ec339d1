"""The result of one run: accuracy matrix, step accuracies and the metrics derived from them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import metrics


@dataclass
class Result:
    """R = ``acc_matrix`` (T x T, percent, NaN above the diagonal); A_t = ``step_accuracy``."""

    config: dict
    acc_matrix: np.ndarray
    step_accuracy: list
    old_accuracy: list = field(default_factory=list)
    new_accuracy: list = field(default_factory=list)
    timings: list = field(default_factory=list)      # per task: train_s, eval_s, memory_s
    task_info: list = field(default_factory=list)    # per task: what the method reports
    info: dict = field(default_factory=dict)         # run-level notes (e.g. which CLIP weights)

    @property
    def num_tasks(self) -> int:
        return len(self.step_accuracy)

    @property
    def avg_incremental_accuracy(self) -> float:
        return metrics.average_incremental_accuracy(np.asarray(self.step_accuracy))

    @property
    def last_accuracy(self) -> float:
        return metrics.last_accuracy(np.asarray(self.step_accuracy))

    @property
    def forgetting(self) -> float:
        return metrics.forgetting(self.acc_matrix)

    @property
    def bwt(self) -> float:
        return metrics.bwt(self.acc_matrix)

    def summary(self) -> dict:
        return {"method": self.config.get("method"), "dataset": self.config.get("dataset"),
                "avg_incremental_accuracy": self.avg_incremental_accuracy,
                "last_accuracy": self.last_accuracy, "forgetting": self.forgetting, "bwt": self.bwt,
                "train_seconds": float(sum(t.get("train_s", 0.0) for t in self.timings))}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        R = np.asarray(self.acc_matrix, dtype=float)
        return {"config": self.config,
                "acc_matrix": [[None if np.isnan(v) else float(v) for v in row] for row in R],
                "step_accuracy": [float(a) for a in self.step_accuracy],
                "old_accuracy": [None if a is None or np.isnan(a) else float(a) for a in self.old_accuracy],
                "new_accuracy": [float(a) for a in self.new_accuracy],
                "timings": self.timings, "task_info": self.task_info, "info": self.info,
                "metrics": self.summary()}

    def to_json(self, path: Optional[str] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            from .checkpoint import atomic_write_text
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        R = np.array([[np.nan if v is None else v for v in row] for row in d["acc_matrix"]], dtype=float)
        return cls(config=d["config"], acc_matrix=R, step_accuracy=list(d["step_accuracy"]),
                   old_accuracy=[np.nan if a is None else a for a in d.get("old_accuracy", [])],
                   new_accuracy=list(d.get("new_accuracy", [])), timings=list(d.get("timings", [])),
                   task_info=list(d.get("task_info", [])), info=dict(d.get("info", {})))

    @classmethod
    def from_json(cls, text_or_path) -> "Result":
        p = Path(str(text_or_path))
        text = p.read_text() if len(str(text_or_path)) < 4096 and p.is_file() else str(text_or_path)
        return cls.from_dict(json.loads(text))

    def __repr__(self):
        s = self.summary()
        return (f"Result({s['method']} on {s['dataset']}, {self.num_tasks} tasks: avg inc acc "
                f"{s['avg_incremental_accuracy']:.2f}, last {s['last_accuracy']:.2f}, "
                f"forgetting {s['forgetting']:.2f}, bwt {s['bwt']:.2f})")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
