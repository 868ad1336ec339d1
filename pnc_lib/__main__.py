"""Command line: ``python -m pnc_lib run|list|report``.

    python -m pnc_lib run CONFIG.yaml [--preset P] [--set key=value ...] [--out DIR] [--resume]
    python -m pnc_lib list
    python -m pnc_lib report RUN_DIR
    torchrun --nproc_per_node=N -m pnc_lib run CONFIG.yaml [...]   # N processes (GPUs), one run

Exit codes: 0 success, 2 invalid config or arguments, 3 missing data or weights,
4 unusable checkpoint, 5 training diverged (NaN/inf loss).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml

EXIT_CONFIG, EXIT_DATA, EXIT_CHECKPOINT, EXIT_DIVERGED = 2, 3, 4, 5


def parse_set(pairs):
    """``key=value`` strings -> dict, values parsed as YAML (so 0.1, true, [1, 2] work)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):   # YAML 1.1 reads "1e30" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def cmd_run(args) -> int:
    from . import distributed

    try:
        return _cmd_run(args)
    finally:
        distributed.cleanup()   # leaves torchrun's process group (nothing to do in one process)


def _cmd_run(args) -> int:
    from . import distributed
    from .checkpoint import CheckpointError
    from .config import ConfigError, load_config, resolve_config
    from .data.datasets import DataNotFoundError
    from .engine import Run
    from .methods.training import TrainingDiverged
    from .validate import validate_config

    # under torchrun every rank meets the same errors and results: rank 0 prints them
    main_rank = not distributed.launched() or os.environ.get("RANK", "0") == "0"
    say = print if main_rank else (lambda *a, **k: None)
    if not main_rank:
        logging.disable(logging.WARNING)   # library logs and warnings too: rank 0 speaks for all
        warnings.simplefilter("ignore")
    try:
        overrides = parse_set(args.set)
        if args.preset:
            overrides["preset"] = args.preset
        if args.out:
            overrides["out_dir"] = args.out
        if args.resume:
            overrides["resume"] = True
        cfg = resolve_config(load_config(args.config, **overrides))
        dctx = distributed.init(cfg.device)   # under torchrun: join the process group (nccl/gloo)
        with distributed.main_first():   # rank 0 validates first (it may download data or weights)
            scenario = validate_config(cfg)
    except (ConfigError, ValueError) as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DataNotFoundError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    try:
        run = Run(cfg, scenario=scenario)
        say(f"run folder: {run.out_dir}" + (f" ({dctx.world_size} processes, {dctx.backend})"
                                            if dctx.enabled else ""))
        result = run.execute()
    except CheckpointError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except TrainingDiverged as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except DataNotFoundError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    say(result)
    from .report import metrics_table
    say(metrics_table(result))
    return 0


def cmd_list(args) -> int:
    from .config import DATASETS, FIELD_TYPES, METHODS, PRESETS

    print("datasets:", ", ".join(DATASETS))
    print("methods: ", ", ".join(METHODS))
    print("presets: ", ", ".join(PRESETS))
    configs = sorted(Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
    if configs:
        print("configs: ", ", ".join(str(c) for c in configs))
    print("config keys:")
    for key, typ in FIELD_TYPES.items():
        print(f"  {key}: {typ}")
    return 0


def cmd_report(args) -> int:
    from .report import report_run

    try:
        text = report_run(Path(args.run_dir))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pnc_lib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run an experiment config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--preset", choices=["smoke", "quick", "paper"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", help="output folder (default runs/<name>_<digest>)")
    p.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("list", help="datasets, methods, presets and config keys")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("report", help="metrics table and plots of a finished run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
