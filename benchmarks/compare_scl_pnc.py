"""Compare finetune, replay and SCL-PNC on the quick preset (CPU, minutes).

Usage: python benchmarks/compare_scl_pnc.py [--datasets digits shapes] [--methods ...] [--seed 0]
Prints avg incremental accuracy / last / forgetting / wall time per method and dataset, then
the neural-collapse diagnostics of SCL-PNC's task-0 model after 1 epoch vs all epochs.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

import pnc_lib
from pnc_lib.config import make_config
from pnc_lib.engine import Run
from pnc_lib.metrics import nc_metrics

SPLITS = {"digits": (2, 2), "shapes": (10, 5)}


def compare(dataset, methods, seed, extra):
    base, inc = SPLITS[dataset]
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        r = pnc_lib.run({"method": m, "dataset": dataset, "base": base, "increment": inc, "seed": seed,
                         "preset": "quick", "progress": False, "out_dir": tempfile.mkdtemp(), **extra})
        rows.append((dataset, m, r.avg_incremental_accuracy, r.last_accuracy, r.forgetting,
                     time.perf_counter() - t0, [round(a, 1) for a in r.step_accuracy]))
    return rows


def nc_early_late(dataset, seed, extra, early_epochs=1):
    """NC1 and NC3 (vs the ETF) of SCL-PNC train features of the task-0 classes, after
    ``early_epochs`` epochs and after the full schedule (same seed, same task)."""
    base, inc = SPLITS[dataset]
    out = {}
    for label, epochs in (("early", early_epochs), ("late", None)):
        cfg = {"method": "scl_pnc", "dataset": dataset, "base": base, "increment": inc, "seed": seed,
               "preset": "quick", "progress": False, "out_dir": tempfile.mkdtemp(), **extra}
        if epochs is not None:
            cfg["epochs"] = epochs
        run = Run(make_config(cfg))
        s, meth = run.scenario, run.method
        meth.begin_task(0)
        idx = s.indices("train", task=0)
        meth.train_task(pnc_lib.methods.TaskContext(task=0, indices=idx, new_classes=s.task_classes(0),
                                                    seen_classes=s.seen_classes(0), progress=False))
        meth.model.eval()
        with torch.no_grad():
            feats = torch.cat([meth.normalized_features(x) for x, _, _ in meth._batches("train", idx, False)])
        nc = nc_metrics(feats, s.train.y[idx], classifier=meth.etf.T)
        out[label] = (nc["nc1"], nc["nc3"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["digits", "shapes"])
    ap.add_argument("--methods", nargs="+", default=["finetune", "replay", "scl_pnc"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides (python literals)")
    ap.add_argument("--no-nc", action="store_true")
    args = ap.parse_args()
    import ast
    extra = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    print(f"{'dataset':8} {'method':9} {'avg inc':>8} {'last':>7} {'forget':>7} {'wall s':>7}  step accuracies")
    for d in args.datasets:
        for row in compare(d, args.methods, args.seed, extra):
            print(f"{row[0]:8} {row[1]:9} {row[2]:8.2f} {row[3]:7.2f} {row[4]:7.2f} {row[5]:7.1f}  {row[6]}",
                  flush=True)
    if not args.no_nc:
        print("\nSCL-PNC task 0, train features of the base classes (h = normalize(BN(e)); nc3 vs ETF):")
        print(f"{'dataset':8} {'nc1 1ep':>9} {'nc1 full':>9} {'nc3 1ep':>8} {'nc3 full':>8}")
        for d in args.datasets:
            nc = nc_early_late(d, args.seed, extra)
            print(f"{d:8} {nc['early'][0]:9.3f} {nc['late'][0]:9.3f} {nc['early'][1]:8.3f} {nc['late'][1]:8.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
