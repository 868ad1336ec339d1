"""Compare finetune, replay and SCL-PNC on the quick preset (CPU, minutes).

Usage: python benchmarks/compare_scl_pnc.py [--datasets digits shapes] [--methods ...]
       [--seeds 0 1 2] [--set key=value ...] [--no-nc]
A method may carry its own overrides: ``scl_pnc:loss='ce',lr=0.05`` (python literals).
Prints avg incremental accuracy / last / forgetting / wall time per method, dataset and seed,
the mean over the seeds, then the neural-collapse diagnostics of SCL-PNC's task-0 model after
1 epoch vs all epochs (first seed).
"""
from __future__ import annotations

import argparse
import ast
import tempfile
import time

import torch

import pnc_lib
from pnc_lib.config import make_config
from pnc_lib.engine import Run
from pnc_lib.metrics import nc_metrics

SPLITS = {"digits": (2, 2), "shapes": (10, 5)}


def parse_method(spec):
    """``"scl_pnc:loss='ce',lr=0.05"`` -> ("scl_pnc", {"loss": "ce", "lr": 0.05})."""
    name, _, rest = spec.partition(":")
    return name, {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv)}


def compare(dataset, spec, seed, extra):
    base, inc = SPLITS[dataset]
    method, own = parse_method(spec)
    t0 = time.perf_counter()
    r = pnc_lib.run({"method": method, "dataset": dataset, "base": base, "increment": inc, "seed": seed,
                     "preset": "quick", "progress": False, "out_dir": tempfile.mkdtemp(), **extra, **own})
    return (r.avg_incremental_accuracy, r.last_accuracy, r.forgetting, time.perf_counter() - t0,
            [round(a, 1) for a in r.step_accuracy])


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
    ap.add_argument("--methods", nargs="+", default=["finetune", "replay", "scl_pnc"],
                    help="method names, each optionally with overrides: scl_pnc:loss='ce',lr=0.05")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides for every run")
    ap.add_argument("--no-nc", action="store_true")
    args = ap.parse_args()
    extra = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    print(f"{'dataset':8} {'method':28} {'seed':>4} {'avg inc':>8} {'last':>7} {'forget':>7} {'wall s':>7}  "
          "step accuracies")
    means = []
    for d in args.datasets:
        for spec in args.methods:
            rows = []
            for seed in args.seeds:
                row = compare(d, spec, seed, extra)
                rows.append(row)
                print(f"{d:8} {spec:28} {seed:4d} {row[0]:8.2f} {row[1]:7.2f} {row[2]:7.2f} {row[3]:7.1f}  {row[4]}",
                      flush=True)
            means.append((d, spec, *(sum(r[i] for r in rows) / len(rows) for i in range(3))))
    print(f"\nmean over seeds {args.seeds}:")
    for d, spec, avg, last, forget in means:
        print(f"{d:8} {spec:28} {avg:8.2f} {last:7.2f} {forget:7.2f}")
    if not args.no_nc:
        print("\nSCL-PNC task 0, train features of the base classes (h = normalize(BN(e)); nc3 vs ETF):")
        print(f"{'dataset':8} {'nc1 1ep':>9} {'nc1 full':>9} {'nc3 1ep':>8} {'nc3 full':>8}")
        for d in args.datasets:
            nc = nc_early_late(d, args.seeds[0], extra)
            print(f"{d:8} {nc['early'][0]:9.3f} {nc['late'][0]:9.3f} {nc['early'][1]:8.3f} {nc['late'][1]:8.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
