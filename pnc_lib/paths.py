"""Where pnc_lib keeps files it can rebuild: the feature cache and pretrained checkpoints.

``cache_dir()`` is ``$PNC_CACHE`` if set, else ``~/.cache/pnc_lib``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def cache_dir(override: Optional[str] = None) -> Path:
    path = Path(override or os.environ.get("PNC_CACHE") or Path.home() / ".cache" / "pnc_lib").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
