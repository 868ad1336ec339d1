"""Papermill regression: every notebook runs with PRESET="smoke" and the key numbers it
records (pnc_lib.book.record) must match tests/notebook_reference.json within the stated
tolerance. A change that silently moves a result fails here.

To accept new values after an intended change: `python tests/update_notebook_reference.py`.
"""
import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REFERENCE = Path(__file__).with_name("notebook_reference.json")
# accuracies are in percent; smoke runs are deterministic on one machine, but BLAS and torch
# builds differ slightly between machines, so a small absolute + relative tolerance is allowed
ABS_TOL, REL_TOL = 1.5, 0.05


def run_notebook(path: Path, out_dir: Path) -> dict:
    import papermill as pm

    record = out_dir / f"{path.stem}.json"
    start = time.perf_counter()
    pm.execute_notebook(str(path), str(out_dir / path.name), parameters={"PRESET": "smoke", "RECORD": str(record)},
                        cwd=str(path.parent), kernel_name="python3", progress_bar=False)
    values = json.loads(record.read_text())["values"]
    values["_seconds"] = time.perf_counter() - start
    return values


def test_every_notebook_has_a_reference_entry():
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    missing = [p.stem for p in NOTEBOOKS if p.stem not in reference]
    assert not missing, f"no reference values for {missing}: run tests/update_notebook_reference.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke_matches_reference(path, tmp_path):
    reference = json.loads(REFERENCE.read_text()).get(path.stem)
    values = run_notebook(path, tmp_path)
    print(f"{path.stem}: {values['_seconds']:.1f} s")
    assert reference, f"no reference for {path.stem}"
    for key, ref in reference.items():
        assert key in values, f"{path.stem} no longer records {key!r}"
        assert values[key] == pytest.approx(ref, abs=ABS_TOL, rel=REL_TOL), (
            f"{path.stem}: {key} = {values[key]:.4f}, reference {ref:.4f}")
