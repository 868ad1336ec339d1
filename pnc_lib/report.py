"""Text tables and plots of finished runs (``python -m pnc_lib report RUN_DIR``)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from .result import Result

COLUMNS = ("avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt")


def metrics_table(results, digits: int = 2) -> str:
    """A plain-text table of the headline metrics; ``results`` is one Result or {name: Result}."""
    if isinstance(results, Result):
        results = {results.config.get("method", "run"): results}
    head = ["method", "avg inc acc", "last acc", "forgetting", "BWT", "train s"]
    rows = [[name] + [f"{getattr(r, c):.{digits}f}" for c in COLUMNS]
            + [f"{sum(t.get('train_s', 0) for t in r.timings):.1f}"] for name, r in results.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def matrix_text(result: Result) -> str:
    R = np.asarray(result.acc_matrix)
    lines = ["R[t, j] (rows: after task t; columns: task j)"]
    for t, row in enumerate(R):
        lines.append(f"t={t}: " + " ".join("   -  " if np.isnan(v) else f"{v:6.1f}" for v in row))
    return "\n".join(lines)


def report_run(run_dir: Path) -> str:
    """Read ``run_dir/result.json``, write plots to ``run_dir/plots/``, return the text report."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} the folder of a finished run?")
    result = Result.from_json(path)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_accuracy_curves, plot_accuracy_matrix

    out = Path(run_dir) / "plots"
    out.mkdir(exist_ok=True)
    ax = plot_accuracy_matrix(result)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "accuracy_matrix.png", dpi=120)
    plt.close(ax.figure)
    ax = plot_accuracy_curves({result.config.get("method", "run"): result})
    ax.figure.tight_layout()
    ax.figure.savefig(out / "accuracy_curve.png", dpi=120)
    plt.close(ax.figure)
    return "\n\n".join([metrics_table(result), matrix_text(result), f"plots written to {out}"])
