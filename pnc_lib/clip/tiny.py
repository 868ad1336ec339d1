"""A tiny open_clip configuration (``pnc-tiny-clip``: ViT 32x32 input, patch 4, 3 layers,
width 128; text transformer 3 layers, width 128; 64-d joint space) that runs the whole CLIP
pipeline on a CPU. Randomly initialised unless a checkpoint is loaded (see ``pretrain.py``).
"""
from __future__ import annotations

from pathlib import Path

import open_clip

TINY_CLIP = "pnc-tiny-clip"
CONFIG_DIR = Path(__file__).parent / "model_configs"


def register_tiny_clip() -> str:
    """Make ``pnc-tiny-clip`` known to open_clip (idempotent). Returns the name."""
    if open_clip.get_model_config(TINY_CLIP) is None:
        open_clip.add_model_config(CONFIG_DIR / f"{TINY_CLIP}.json")
    return TINY_CLIP
