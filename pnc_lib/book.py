"""Helpers for the book's notebooks: record key numbers for the papermill regression tests,
and show them in the page (myst-nb ``glue`` when available)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional


def record(notebook: str, preset: str, values: dict, path: Optional[str] = None) -> Path:
    """Write ``values`` (name -> number) to ``path`` (default ``runs/book/<notebook>.<preset>.json``)
    and glue each number into the page. Returns the file written.

    The test suite runs every notebook with ``PRESET="smoke"`` through papermill and compares
    these numbers with ``tests/notebook_reference.json``.
    """
    clean = {}
    for k, v in values.items():
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{notebook}: recorded value {k} = {v} is not finite")
        clean[k] = v
    out = Path(path) if path else Path("runs") / "book" / f"{notebook}.{preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from .checkpoint import atomic_write_text
    atomic_write_text(out, json.dumps({"notebook": notebook, "preset": preset, "values": clean}, indent=2))
    try:
        from myst_nb import glue
        for k, v in clean.items():
            glue(f"{notebook}.{k}", round(v, 2), display=False)
    except Exception:  # outside a notebook kernel, or myst-nb missing: nothing to glue
        pass
    return out


COLAB_SETUP = '''# In Colab: install pnc_lib (keeps Colab's own torch). Elsewhere this does nothing.
import importlib.util, subprocess, sys
if "google.colab" in sys.modules and importlib.util.find_spec("pnc_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "pnc_lib[book] @ git+https://github.com/pnc-lib/pnc_lib"], check=True)'''
