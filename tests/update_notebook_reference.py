"""Re-run every notebook with PRESET="smoke" and store its recorded numbers as the reference.

    .venv/bin/python tests/update_notebook_reference.py [NOTEBOOK_STEM ...]
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_notebooks import NOTEBOOKS, REFERENCE, run_notebook  # noqa: E402

if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in NOTEBOOKS:
            if wanted and path.stem not in wanted:
                continue
            values = run_notebook(path, Path(tmp))
            print(f"{path.stem}: {values.pop('_seconds'):.1f} s, {len(values)} values")
            reference[path.stem] = values
    REFERENCE.write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
