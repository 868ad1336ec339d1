"""The book's configuration: every notebook and chapter is in the table of contents, and the
equations render without a network (MathJax bundled into the HTML, not loaded from a CDN)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_notebooks import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]


def _toc_files(node) -> list:
    if isinstance(node, dict):
        found = [node["file"]] if "file" in node else []
        if "root" in node:
            found.append(node["root"])
        for value in node.values():
            found += _toc_files(value)
        return found
    if isinstance(node, list):
        return [f for item in node for f in _toc_files(item)]
    return []


def test_toc_lists_every_notebook_and_chapter():
    listed = set(_toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())))
    on_disk = {f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    on_disk |= {f"book/{p.stem}" for p in (ROOT / "book").glob("*.md")}
    assert on_disk - listed == set(), "pages missing from _toc.yml"
    for entry in listed:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), entry


def test_equations_use_the_bundled_mathjax(tmp_path):
    """Build a one-page book with the repository's _config.yml: the page loads MathJax from
    ``_static`` and the script is there, so formulas render offline."""
    jb = Path(sys.executable).parent / "jupyter-book"
    if not jb.exists():
        pytest.skip("jupyter-book not installed (pip install -e '.[book]')")
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (tmp_path / "index.md").write_text("# ETF\n\n$$\\cos(m_i, m_j) = -\\frac{1}{K-1}$$\n")
    done = subprocess.run([str(jb), "build", str(tmp_path), "--warningiserror"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = (tmp_path / "_build" / "html" / "index.html").read_text()
    assert 'src="_static/mathjax/tex-chtml.js"' in html
    assert "cdn.jsdelivr.net/npm/mathjax" not in html
    assert (tmp_path / "_build" / "html" / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000



@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    """Valid nbformat (every cell has an id), no outputs, one `parameters` cell with PRESET."""
    import json

    import nbformat

    raw = json.loads(path.read_text())          # as committed (nbformat.read would add missing ids)
    assert all("id" in cell for cell in raw["cells"]), "cells without an id (nbformat >= 4.5 needs them)"
    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "PRESET" in params[0].source
