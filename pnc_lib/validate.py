"""Check a resolved config before any training: the split fits the data, the data is there,
and the model can be built. Every problem is reported in one :class:`ConfigError`."""
from __future__ import annotations

from .config import Config, ConfigError
from .data.datasets import DataNotFoundError
from .scenario import Scenario


def validate_config(cfg: Config) -> Scenario:
    """Build the scenario and the method once (no training). Returns the scenario.

    Raises :class:`ConfigError` listing the problems, or ``DataNotFoundError`` for missing data.
    """
    from .engine import resolve_device, scenario_for
    from .methods import method_class

    problems = []
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as exc:
        problems.append(str(exc))
        device = "cpu"
    try:
        scenario = scenario_for(cfg)
    except DataNotFoundError:
        raise
    except ValueError as exc:
        raise ConfigError(problems + [str(exc)]) from exc
    try:
        method_class(cfg.method)(cfg, scenario, device).dry_run()
    except DataNotFoundError:
        raise
    except Exception as exc:  # any failure to build the model is a config problem
        problems.append(f"the {cfg.method} model cannot be built: {type(exc).__name__}: {exc}")
    if problems:
        raise ConfigError(problems)
    return scenario
