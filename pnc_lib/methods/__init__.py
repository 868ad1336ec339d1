"""Methods the engine can run, by config name."""
from __future__ import annotations

from .base import Method, NetworkMethod, TaskContext  # noqa: F401


def method_class(name: str):
    """The class that implements config method ``name``."""
    from .baselines import Finetune, Joint, Replay

    registry = {"finetune": Finetune, "replay": Replay, "joint": Joint}
    if name == "scl_pnc":
        from .scl_pnc import SCLPNC
        return SCLPNC
    if name.startswith("clip_"):
        from .clip_fusion import CLIP_METHODS
        registry.update(CLIP_METHODS)
    if name not in registry:
        from ..config import METHODS
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return registry[name]
