"""Tests for the offline tiny-CLIP pretraining (pnc_lib.clip.pretrain)."""
import hashlib
import json
import shutil

import numpy as np
import open_clip
import pytest
import torch

from pnc_lib.clip import pretrain
from pnc_lib.clip.tiny import TINY_CLIP, register_tiny_clip
from pnc_lib.data import shapes


def _sha(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Build the smoke checkpoint once (in a tmp cache) and keep the trained model."""
    cache = tmp_path_factory.mktemp("pnc_cache")
    trained = {}
    real_train = pretrain._train

    def capturing(*args, **kwargs):
        model, info = real_train(*args, **kwargs)
        trained["model"], trained["info"] = model, info
        return model, info

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain, "_train", capturing)
        path = pretrain.ensure_tiny_clip_checkpoint("smoke", cache_dir=str(cache), progress=False)
    return dict(path=path, cache=cache, **trained)


@pytest.fixture(scope="module")
def loaded(smoke):
    register_tiny_clip()
    return open_clip.create_model(TINY_CLIP, pretrained=str(smoke["path"])).eval()


@pytest.fixture(scope="module")
def tokenizer():
    register_tiny_clip()
    return open_clip.get_tokenizer(TINY_CLIP)


def _short_training(monkeypatch) -> list:
    """Replace the pretraining loop by a 2-step one; returns the list of seeds it was called with."""
    calls = []
    real_train = pretrain._train

    def short_train(settings, seed=0, progress=True, steps=None):
        calls.append(seed)
        return real_train(settings, seed=seed, progress=False, steps=2)

    monkeypatch.setattr(pretrain, "_train", short_train)
    return calls


def test_pretraining_distribution_covers_attributes_but_holds_out_combinations():
    attrs = pretrain.pretraining_attributes()
    combos = {(a["shape"], a["colour"], a["texture"]) for a in attrs}
    assert len(combos) == shapes.NUM_COMBINATIONS - len(pretrain.HELD_OUT) == 90
    assert not combos & set(pretrain.HELD_OUT)
    assert {c[0] for c in combos} == set(shapes.SHAPE_NAMES)
    assert {c[1] for c in combos} == set(shapes.COLOUR_NAMES)
    assert {c[2] for c in combos} == set(shapes.TEXTURE_NAMES)


def test_sample_batch_is_deterministic_and_has_partial_captions():
    x1, c1 = pretrain.sample_batch(5, 32, seed=0)
    x2, c2 = pretrain.sample_batch(5, 32, seed=0)
    x3, c3 = pretrain.sample_batch(6, 32, seed=0)
    assert x1.shape == (32, 3, 32, 32) and torch.equal(x1, x2) and c1 == c2
    assert not torch.equal(x1, x3)
    settings = dict(pretrain.SIZES["smoke"], partial_prob=1.0)
    _, caps = pretrain.sample_batch(0, 64, seed=0, settings=settings)
    words = set(shapes.SHAPE_NAMES + shapes.COLOUR_NAMES + shapes.TEXTURE_NAMES)
    named = [sum(w in words for w in c.rstrip(".").split()) for c in caps]
    assert set(named) <= {1, 2} and 1 in named and 2 in named  # never all three attributes


def test_same_seed_same_weights_other_seed_differs():
    s = pretrain.SIZES["smoke"]
    a, _ = pretrain._train(s, seed=0, progress=False, steps=3)
    b, _ = pretrain._train(s, seed=0, progress=False, steps=3)
    c, _ = pretrain._train(s, seed=1, progress=False, steps=3)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)


def test_checkpoint_loads_through_open_clip_with_same_encodings(smoke, loaded, tokenizer):
    assert smoke["path"].name == "pnc-tiny-clip-shapes-smoke.pt"
    assert smoke["path"].parent == smoke["cache"] / "clip"
    model = smoke["model"].eval()
    x = shapes.make_shapes(num_classes=3, train_per_class=1, test_per_class=4)["test_x"]
    text = tokenizer(["a photo of a red striped triangle.", "something dotted."])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(pretrain.normalize_images(loaded, x)),
                                   model.encode_image(pretrain.normalize_images(model, x)))
        torch.testing.assert_close(loaded.encode_text(text), model.encode_text(text))
        fresh = open_clip.create_model(TINY_CLIP).eval()  # random weights differ
        assert not torch.allclose(fresh.encode_text(text), loaded.encode_text(text))


def test_json_sidecar(smoke):
    meta = json.loads(smoke["path"].with_suffix(".json").read_text())
    assert meta["sha256"] == pretrain.sha256_file(smoke["path"])
    assert meta["model_config"] == open_clip.get_model_config(TINY_CLIP)
    assert meta["settings"] == json.loads(json.dumps(pretrain.SIZES["smoke"]))
    assert meta["seed"] == 0 and meta["size"] == "smoke"
    import pnc_lib
    assert meta["pnc_lib_version"] == pnc_lib.__version__
    assert meta["wall_time_s"] > 0 and np.isfinite(meta["final_loss"])
    assert meta["final_loss"] < smoke["info"]["first_loss"] - 0.5  # it learned something


def test_second_call_is_cached(smoke, monkeypatch):
    mtime = smoke["path"].stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("retrained although the checkpoint is valid")

    monkeypatch.setattr(pretrain, "_train", boom)
    assert pretrain.ensure_tiny_clip_checkpoint("smoke", cache_dir=str(smoke["cache"]), progress=False) == smoke["path"]
    assert smoke["path"].stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["corrupt_pt", "json_settings", "json_sha", "missing_json", "missing_pt"])
def test_invalid_checkpoint_is_rebuilt(smoke, tmp_path, monkeypatch, damage):
    clip_dir = tmp_path / "clip"
    shutil.copytree(smoke["path"].parent, clip_dir)
    pt, js = clip_dir / smoke["path"].name, clip_dir / smoke["path"].with_suffix(".json").name
    if damage == "corrupt_pt":
        pt.write_bytes(pt.read_bytes()[:-100] + b"x" * 100)
    elif damage in ("json_settings", "json_sha"):
        meta = json.loads(js.read_text())
        if damage == "json_settings":
            meta["settings"]["lr"] = 123.0
        else:
            meta["sha256"] = "0" * 64
        js.write_text(json.dumps(meta))
    else:
        (js if damage == "missing_json" else pt).unlink()
    calls = _short_training(monkeypatch)
    path = pretrain.ensure_tiny_clip_checkpoint("smoke", cache_dir=str(tmp_path), progress=False)
    assert calls == [0] and path == pt
    meta = json.loads(js.read_text())
    assert meta["sha256"] == pretrain.sha256_file(pt) and meta["settings"]["lr"] == pretrain.SIZES["smoke"]["lr"]
    open_clip.create_model(TINY_CLIP, pretrained=str(pt))  # loadable
    assert not list(clip_dir.glob("*.tmp"))
    # now valid: no further training
    assert pretrain.ensure_tiny_clip_checkpoint("smoke", cache_dir=str(tmp_path), progress=False) == pt
    assert calls == [0]


def test_unknown_size_rejected():
    with pytest.raises(ValueError):
        pretrain.ensure_tiny_clip_checkpoint("huge")
    with pytest.raises(ValueError):
        pretrain.pretrain_tiny_clip("huge")


def test_zero_shot_on_cil_shapes_well_above_chance(loaded, tokenizer):
    data = shapes.make_shapes(num_classes=20, train_per_class=1, test_per_class=20, domain="cil")
    acc = pretrain.zero_shot_accuracy(loaded, tokenizer, data["test_x"], data["test_y"], data["class_names"])
    print(f"smoke zero-shot accuracy on 20 CIL shapes classes: {acc:.1f}% (chance 5%)")
    assert acc > 15.0
    fresh = open_clip.create_model(TINY_CLIP).eval()
    torch.manual_seed(0)
    assert pretrain.zero_shot_accuracy(fresh, tokenizer, data["test_x"], data["test_y"], data["class_names"]) < acc


def test_text_features_share_attribute_structure(loaded, tokenizer):
    triples = [("red striped triangle", "red striped square", "blue dotted circle"),
               ("green plain circle", "green plain ring", "yellow checkered cross"),
               ("blue dotted square", "blue dotted cross", "purple striped ring"),
               ("yellow checkered ring", "yellow checkered triangle", "red plain square")]
    margins = []
    for anchor, sharing, other in triples:
        s = pretrain.text_similarity(loaded, tokenizer, [anchor, sharing, other])
        assert s.shape == (3, 3) and torch.allclose(s.diag(), torch.ones(3), atol=1e-4)
        margins.append(float(s[0, 1] - s[0, 2]))
    assert np.mean(margins) > 0.05 and sum(m > 0 for m in margins) >= 3
    # sharing one attribute (colour) is closer than sharing none
    s = pretrain.text_similarity(loaded, tokenizer, ["red striped triangle", "red dotted circle", "blue dotted circle"])
    assert s[0, 1] > s[0, 2]


def test_concurrent_builders_train_once(tmp_path, monkeypatch):
    import threading
    calls = _short_training(monkeypatch)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(
        pretrain.ensure_tiny_clip_checkpoint("smoke", cache_dir=str(tmp_path), progress=False))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(paths) == 2 and paths[0] == paths[1]
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert meta["sha256"] == pretrain.sha256_file(paths[0])
