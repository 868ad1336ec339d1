"""Atomic checkpoint files: write to a temporary file in the same folder, then rename.

A checkpoint records the config fingerprint it was made with; loading it into a run with a
different config is refused with the list of keys that differ. A truncated or corrupt file is
detected (torch cannot unpickle it, or its payload lacks the completion marker).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, truncated, or from another config)."""


def atomic_replace(path: Path, write) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_replace(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = dict(payload, _complete=True)
    atomic_replace(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, fingerprint: dict = None) -> dict:
    """Load and check a checkpoint; ``fingerprint`` is the current config's (see Config.fingerprint)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                              f"delete it to start the run again") from exc
    if not isinstance(payload, dict) or not payload.get("_complete"):
        raise CheckpointError(f"checkpoint {path} is incomplete; delete it to start the run again")
    if fingerprint is not None:
        saved = payload.get("fingerprint", {})
        diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        if diff:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {fingerprint.get(k)!r}" for k in diff)
            raise CheckpointError(f"checkpoint {path} was made with another config ({details}); "
                                  f"use another out_dir or the matching config")
    return payload
