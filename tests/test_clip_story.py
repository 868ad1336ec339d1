"""The papers' story on `shapes` with the tiny CLIP pretrained here (smoke size): fine-tuning
the adapter without fusion forgets, and both fusions forget less. (That the adapter beats
zero-shot on the first task does not hold at smoke size: 2 epochs of adapter training.)"""
import pytest

import pnc_lib


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("story")
    cfg = {"dataset": "shapes", "base": 0, "increment": 5, "preset": "smoke", "seed": 0, "progress": False}
    return {m: pnc_lib.run(dict(cfg, method=m, out_dir=str(out / m)))
            for m in ("clip_zeroshot", "clip_adapter", "clip_rapf", "clip_awpf")}


def test_weights_are_the_pretrained_tiny_clip(results):
    for r in results.values():
        assert r.info["random_weights"] is False and "pnc-shapes" in r.info["clip_weights"]


def test_adapter_forgets_and_fusions_forget_less(results):
    f = {m: r.forgetting for m, r in results.items()}
    print(f)
    assert f["clip_adapter"] > 0
    assert f["clip_rapf"] < f["clip_adapter"] and f["clip_awpf"] < f["clip_adapter"]
