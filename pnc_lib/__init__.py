"""pnc_lib: class-incremental learning, rebuilt step by step.

SCL-PNC (expandable backbone, adapt-layer, growing simplex-ETF classifier) and CLIP
parameter fusion (frozen CLIP, adapter, RAPF and stacked adaptive fusion), on one engine.
"""
from .config import Config, ConfigError, make_config  # noqa: F401
from .engine import run  # noqa: F401
from .result import Result  # noqa: F401
from .scenario import Scenario, ScenarioError, make_scenario  # noqa: F401
from . import book, etf, fusion, losses, metrics  # noqa: F401

__version__ = "0.1.0"
