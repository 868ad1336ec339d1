"""The benchmark (`python -m pnc_lib.bench`) in its smallest configuration: it prints one table
with every expected row, and its figures are positive finite numbers. No time is asserted:
timings depend on the machine and its load."""
import json
import math

import pytest

from pnc_lib import bench

EXPECTED = [
    "clip_cached_vs_encode[pnc-tiny-clip]", "clip_cache_build[pnc-tiny-clip]",
    f"clip_cached_vs_encode[{bench.WIDE_CLIP}]", f"clip_cache_build[{bench.WIDE_CLIP}]",
    "scl_pnc_step_vs_bare", "scl_pnc_data_share", "eval_all_seen", "herding_cifar100",
    "feature_cache[64d]", "feature_cache[512d]", "peak_rss[scl_pnc]", "peak_rss[clip]",
]


def _finite_positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow   # two child runs (smoke presets) for the peak-memory rows
def test_quick_bench_prints_one_table_of_positive_finite_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    rows = {r["key"]: r for r in res["rows"]}
    assert list(rows) == EXPECTED
    assert res["mode"] == "quick" and res["clock"] == "cpu"
    assert res["machine"]["cores"] and res["machine"]["date"] in printed

    # one table: a header, a separator and one line per row, each row's text in it
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table == res["table"].splitlines()
    assert table[0].startswith("| measure | library | baseline | ratio |") and len(table) == 2 + len(EXPECTED)
    for r in rows.values():
        assert r["what"] in printed
        assert _finite_positive(r["value"]), r
        if r["baseline"] is not None:
            assert _finite_positive(r["baseline"]), r

    for key in (k for k in EXPECTED if k.startswith("clip_cached_vs_encode")):
        r = rows[key]
        assert r["ratio_unit"] == "x faster" and _finite_positive(r["ratio"])
        assert r["ratio"] == pytest.approx(r["baseline"] / r["value"])
        assert _finite_positive(r["extra"]["gflop_per_image"]) and r["extra"]["visual_params"] > 0
    # the larger encoder is larger
    tiny, wide = rows[EXPECTED[0]]["extra"], rows[EXPECTED[2]]["extra"]
    assert wide["visual_params"] > tiny["visual_params"] and wide["gflop_per_image"] > tiny["gflop_per_image"]

    # SCL-PNC: throughputs (images/s) and an overhead in percent whose time ratio is positive
    step = rows["scl_pnc_step_vs_bare"]
    assert step["unit"] == "img/s" and step["ratio_unit"] == "% overhead" and math.isfinite(step["ratio"])
    assert _finite_positive(1.0 + step["ratio"] / 100.0)
    assert step["ratio"] == pytest.approx(100.0 * (step["baseline"] / step["value"] - 1.0))
    assert 0 < rows["scl_pnc_data_share"]["value"] < 100

    # evaluation: one pass over the test data of all seen classes, no DataLoader for tensor data
    ev = rows["eval_all_seen"]["extra"]
    assert ev["passes_per_eval"] == 1 and ev["loaders_per_eval"] == 0

    # the cache file holds float32 features: 4 * d bytes per image, plus a small header
    for d in (64, 512):
        r = rows[f"feature_cache[{d}d]"]
        assert r["value"] == pytest.approx(4 * d * 10_000 / 1e6, rel=0.05)

    for key in ("peak_rss[scl_pnc]", "peak_rss[clip]"):
        assert rows[key]["value"] >= rows[key]["extra"]["import_kib"] / 1024


def test_table_formatting_and_interleaving():
    calls = []
    med = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, inner={"b": 2})
    assert calls == ["a", "b", "b", "b", "b", "a", "a", "b", "b"]   # the order rotates every repeat
    assert len(med["_all"]["a"]) == 3 and len(med["_all"]["b"]) == 6 and med["a"] >= 0
    rows = [bench.Row("k", "a speed-up", 0.5, "s", baseline=10.0, ratio=20.0, ratio_unit="x faster",
                      target=">= 20x", met=True, note="n")]
    table = bench.format_table(rows).splitlines()
    assert table[2] == "| a speed-up | 0.5 s | 10.0 s | 20.0 x faster | >= 20x | yes | n |"
