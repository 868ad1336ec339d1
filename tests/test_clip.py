"""Tests for the CLIP parameter-fusion pipeline: pnc_lib.clip (model, cache, adapter) and
pnc_lib.methods.clip_fusion (clip_zeroshot / clip_adapter / clip_rapf / clip_awpf).

Everything runs on the tiny randomly initialised CLIP (``pnc-tiny-clip``); shapes runs pass
``clip_pretrained="random-init"`` so they do not need the pretrained shapes checkpoint.
"""
import math
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pnc_lib
from pnc_lib import make_config, metrics
from pnc_lib.clip import cache
from pnc_lib.clip.adapter import (class_gaussians, clip_logits, hard_pair_loss, hard_pairs, make_adapter,
                                  sample_pseudo_features)
from pnc_lib.clip.model import ClipWeightsUnavailable, encode_images, load_clip, text_features, zero_shot_logits
from pnc_lib.data.datasets import DataSplit

METHODS = ("clip_zeroshot", "clip_adapter", "clip_rapf", "clip_awpf")
COMMON_KEYS = {"random_weights", "weight_change", "update_norm", "hard_pairs", "fusion_rank"}
AWPF_KEYS = {"alpha", "alpha_score", "alpha_mmd", "alpha_lda", "alpha_grid", "alpha_grid_scores",
             "alpha_grid_mmd", "alpha_grid_lda"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is much faster than two on a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bundle():
    return load_clip("pnc-tiny-clip", None)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pnc_cache"))


def _run(cache_dir, out_dir, **cfg):
    base = dict(preset="smoke", device="cpu", progress=False, cache_dir=cache_dir, out_dir=str(out_dir))
    base.update(cfg)
    return pnc_lib.run(base)


# ------------------------------------------------------------------ model


def test_encode_images_and_text_features(bundle):
    assert bundle.weights == "random-init" and bundle.is_random and bundle.image_size == (32, 32)
    assert not any(p.requires_grad for p in bundle.model.parameters()) and not bundle.model.training
    for x in (torch.rand(5, 1, 8, 8), torch.rand(3, 3, 32, 32), torch.rand(2, 3, 20, 40)):
        f = encode_images(bundle, x)
        assert f.shape == (x.shape[0], 64) and f.dtype == torch.float32
        assert torch.allclose(f.norm(dim=1), torch.ones(len(f)), atol=1e-5)
    gray = torch.rand(4, 1, 8, 8)  # a 1-channel image is the same image as its 3-channel copy
    assert torch.allclose(encode_images(bundle, gray), encode_images(bundle, gray.repeat(1, 3, 1, 1)), atol=1e-5)

    names, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a drawing of a {}."]
    T = text_features(bundle, names, templates)
    assert T.shape == (3, 64) and torch.allclose(T.norm(dim=1), torch.ones(3), atol=1e-5)
    singles = [text_features(bundle, names, [t]) for t in templates]  # ensemble = renormalised mean
    assert torch.allclose(T, F.normalize(singles[0] + singles[1], dim=-1), atol=1e-5)
    assert not torch.allclose(T, singles[0], atol=1e-3)
    logits = zero_shot_logits(encode_images(bundle, torch.rand(2, 3, 32, 32)), T, math.log(100.0))
    assert logits.shape == (2, 3) and logits.abs().max() <= 100.0 + 1e-3


def test_checkpoint_file_loads_same_weights_with_other_identity(bundle, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(bundle.model.state_dict(), path)
    other = load_clip("pnc-tiny-clip", checkpoint=str(path))
    assert other.weights == "checkpoint:tiny.pt" and not other.is_random
    assert other.identity != bundle.identity and "sha256:" in other.identity
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(encode_images(other, x), encode_images(bundle, x), atol=1e-6)
    with pytest.raises(ClipWeightsUnavailable, match="does not exist"):
        load_clip("pnc-tiny-clip", checkpoint=str(tmp_path / "missing.pt"))


def test_openai_weights_offline_raise_clear_error(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying
    try:
        bundle = load_clip("ViT-B-16", "openai")
    except ClipWeightsUnavailable as exc:
        msg = str(exc)
        assert "network" in msg and "clip_checkpoint" in msg and "pnc-tiny-clip" in msg
    else:  # the weights were in a local cache after all
        assert bundle.weights == "openai" and not bundle.is_random
        pytest.skip("ViT-B-16/openai weights are cached on this machine")


# ------------------------------------------------------------------ feature cache


class _CountingEncoder:
    def __init__(self):
        self.images = 0

    def __call__(self, x):
        self.images += x.shape[0]
        return F.normalize(x.flatten(1)[:, :6] + 0.1, dim=-1)


def _fake_bundle(identity="model-a"):
    return types.SimpleNamespace(identity=identity, image_size=(8, 8), mean=(0.5,) * 3, std=(0.25,) * 3)


def test_cache_reuses_and_rebuilds_on_key_change(tmp_path):
    split = DataSplit(y=torch.arange(10) % 3, x=torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    enc, b = _CountingEncoder(), _fake_bundle()
    parts = {"dataset": "toy", "dataset_kwargs": {}, "split": "train"}
    kw = dict(batch_size=4, progress=False, cache_dir=str(tmp_path), encoder=enc)
    f1 = cache.cached_features(b, split, parts, **kw)
    assert enc.images == 10 and f1.shape == (10, 6)
    f2 = cache.cached_features(b, split, parts, **kw)
    assert enc.images == 10 and torch.equal(f1, f2)            # reused, no encoder call
    cache.cached_features(_fake_bundle("model-b"), split, parts, **kw)
    assert enc.images == 20                                     # other model identity
    cache.cached_features(b, split, dict(parts, split="test"), **kw)
    assert enc.images == 30                                     # other split
    cache.cached_features(b, split, dict(parts, dataset_kwargs={"seed": 1}), **kw)
    assert enc.images == 40                                     # other dataset kwargs
    changed = DataSplit(y=split.y, x=split.x.clone())
    changed.x[3, 0, 0, 0] += 0.5
    cache.cached_features(b, changed, parts, **kw)
    assert enc.images == 50                                     # other image content
    cache.cached_features(b, split, parts, **kw)
    assert enc.images == 50 and len(list((tmp_path / "features").glob("*.pt"))) == 5


def _corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_checksum(path):
    payload = torch.load(path, weights_only=True)
    payload["features"] = payload["features"] + 1e-3
    torch.save(payload, path)


def _corrupt_rows(path):
    payload = torch.load(path, weights_only=True)
    payload["features"] = payload["features"][:-1].clone()
    payload["shape"] = list(payload["features"].shape)
    payload["checksum"] = cache.tensor_checksum(payload["features"])
    torch.save(payload, path)


@pytest.mark.parametrize("corrupt, reason", [(_corrupt_truncate, "unreadable"), (_corrupt_checksum, "checksum"),
                                             (_corrupt_rows, "shape")])
def test_corrupt_cache_file_is_detected_and_rebuilt(tmp_path, corrupt, reason):
    split = DataSplit(y=torch.zeros(7, dtype=torch.long), x=torch.rand(7, 3, 8, 8))
    enc, b = _CountingEncoder(), _fake_bundle()
    kw = dict(batch_size=3, progress=False, cache_dir=str(tmp_path), encoder=enc)
    good = cache.cached_features(b, split, {"split": "train"}, **kw)
    (path,) = list((tmp_path / "features").glob("*.pt"))
    corrupt(path)
    with pytest.warns(RuntimeWarning, match=reason):
        again = cache.cached_features(b, split, {"split": "train"}, **kw)
    assert enc.images == 14 and torch.equal(again, good)       # recomputed, same values
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # the rebuilt file is valid again
        assert torch.equal(cache.cached_features(b, split, {"split": "train"}, **kw), good)
    assert enc.images == 14


def test_folder_data_is_cached_by_file_list(bundle, tmp_path):
    from PIL import Image
    from torchvision.datasets import ImageFolder

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = ImageFolder(str(tmp_path / "imgs"))
    split = DataSplit(y=torch.tensor(ds.targets), dataset=ds)
    kw = dict(batch_size=3, progress=False, cache_dir=str(tmp_path / "c"))
    before = cache.STATS["images_encoded"]
    f = cache.cached_features(bundle, split, {"split": "val"}, **kw)
    assert f.shape == (4, 64) and torch.allclose(f.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(cache.cached_features(bundle, split, {"split": "val"}, **kw), f)
    assert cache.STATS["images_encoded"] - before == 4
    ds.samples = ds.samples[:3]                                 # another file list, another key
    assert cache.cached_features(bundle, DataSplit(y=split.y[:3], dataset=ds), {"split": "val"}, **kw).shape == (3, 64)
    assert cache.STATS["images_encoded"] - before == 7


@pytest.fixture(scope="module")
def digits_runs(feature_cache, tmp_path_factory):
    """Two full clip_adapter runs on digits (5 tasks x 2 epochs) on an empty cache."""
    out = tmp_path_factory.mktemp("digits_runs")
    before = dict(cache.STATS)
    first = _run(feature_cache, out / "a", method="clip_adapter", dataset="digits")
    after_first = dict(cache.STATS)
    second = _run(feature_cache, out / "b", method="clip_adapter", dataset="digits")
    return before, after_first, dict(cache.STATS), first, second


def test_each_image_encoded_once_across_epochs_tasks_and_runs(digits_runs):
    before, mid, after, first, second = digits_runs
    s = pnc_lib.make_scenario("digits", 2, 2)
    assert first.num_tasks == 5 and first.config["epochs"] == 2
    assert mid["images_encoded"] - before["images_encoded"] == len(s.train) + len(s.test)
    assert mid["builds"] - before["builds"] == 2
    assert after["images_encoded"] == mid["images_encoded"]    # second run: all from the cache
    assert after["hits"] - mid["hits"] == 2
    np.testing.assert_array_equal(first.acc_matrix, second.acc_matrix)


# ------------------------------------------------------------------ adapter pieces


def test_adapter_starts_as_identity():
    A = make_adapter(16)
    x = torch.randn(5, 16)
    assert A.bias is None and torch.equal(A(x), x)


def test_gaussian_pseudo_features_reproduce_mean_and_cov():
    g = torch.Generator().manual_seed(0)
    d = 6
    L = torch.randn(d, d, generator=g) * 0.3
    cov = L @ L.T + 0.05 * torch.eye(d)
    mus = {0: torch.randn(d, generator=g), 1: torch.randn(d, generator=g) + 3.0}
    X = torch.cat([mus[c] + torch.randn(4000, d, generator=g) @ torch.linalg.cholesky(cov).T for c in (0, 1)])
    y = torch.repeat_interleave(torch.tensor([0, 1]), 4000)
    stats = class_gaussians(X, y, [0, 1])
    for c in (0, 1):
        assert torch.allclose(stats[c][0], mus[c], atol=0.05)
        assert torch.allclose(stats[c][1], cov, atol=0.05)
    chol = {}
    Xs, ys = sample_pseudo_features(stats, [1, 0], 20000, torch.Generator().manual_seed(1), chol)
    assert Xs.shape == (40000, d) and ys[:20000].eq(1).all() and ys[20000:].eq(0).all() and set(chol) == {0, 1}
    for c in (0, 1):
        Z = Xs[ys == c].double()
        assert torch.allclose(Z.mean(0).float(), mus[c], atol=0.05)
        assert torch.allclose(torch.cov(Z.T).float(), cov + 1e-4 * torch.eye(d), atol=0.05)
    again, _ = sample_pseudo_features(stats, [1, 0], 20000, torch.Generator().manual_seed(1))
    assert torch.equal(again, Xs)


def test_hard_pairs_on_hand_made_text_features():
    T = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.2, 0.0], [0.0, 1.0, 0.5]]), dim=-1)
    # distances: |t0 - t2| = 0.196, |t1 - t3| = 0.459, old-new cross pairs ~1.3
    assert hard_pairs(T, [0, 1], [2, 3], 0.3) == [(0, 2)]
    assert hard_pairs(T, [0, 1], [2, 3], 0.55) == [(0, 2), (1, 3)]
    assert hard_pairs(T, [0, 1], [2, 3], 0.1) == []
    assert hard_pairs(T, [], [2, 3], 2.0) == []


def test_hard_pair_loss_zero_when_margin_met_positive_otherwise():
    T = torch.eye(4)
    pairs = [(0, 2), (1, 3)]
    near_old = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], requires_grad=True)
    loss = hard_pair_loss(near_old, torch.tensor([0, 1]), T, pairs, margin=0.1)
    assert loss.item() == 0.0
    near_new = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.6, 0.0, 0.8, 0.0]], requires_grad=True)
    loss = hard_pair_loss(near_new, torch.tensor([0, 0]), T, pairs, margin=0.1)
    # (1 - 0 + 0.1) and (0.8 - 0.6 + 0.1), averaged
    assert loss.item() == pytest.approx((1.1 + 0.3) / 2, abs=1e-6)
    loss.backward()
    assert near_new.grad.abs().sum() > 0
    assert hard_pair_loss(near_new, torch.tensor([3, 3]), T, pairs).item() == 0.0  # label in no pair
    logits = clip_logits(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), T, math.log(10.0))
    assert torch.allclose(logits, torch.tensor([[10.0, 0.0, 0.0, 0.0]]), atol=1e-5)


# ------------------------------------------------------------------ a problem where forgetting is known to happen


def _forgetting_problem(path, seed, d=32, tasks=4, per_task=5, n_train=60, n_test=30):
    """Synthetic CLIP-like features: class c of task k has raw features
    ``normalize(P_k t_c + 2 u + 0.3 eps)``: text prototype ``t_c``, a distortion ``P_k = I + 2 G_k / sqrt(d)``
    of its own per task (the adapter must learn it anew at each task, which overwrites the
    previous one) and a shared component ``u`` that every class has (as CLIP's features do),
    through which learning a new task moves the old classes too."""
    g = torch.Generator().manual_seed(seed)
    K = tasks * per_task
    T = F.normalize(torch.randn(K, d, generator=g), dim=-1)
    u = F.normalize(torch.randn(d, generator=g), dim=0)
    P = [torch.eye(d) + 2.0 * torch.randn(d, d, generator=g) / math.sqrt(d) for _ in range(tasks)]

    def draw(n):
        xs = [F.normalize(P[c // per_task] @ T[c] + 2.0 * u + 0.3 * torch.randn(n, d, generator=g), dim=-1)
              for c in range(K)]
        return torch.cat(xs), torch.arange(K).repeat_interleave(n)

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    torch.save({"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte,
                "class_names": [f"class {c}" for c in range(K)], "text_features": T,
                "logit_scale": math.log(100.0), "clip_weights": "synthetic features", "random_weights": False}, path)


def test_fusion_forgets_less_than_plain_fine_tuning(tmp_path):
    forgetting = {m: [] for m in METHODS}
    for seed in (0, 1, 2):
        path = tmp_path / f"feats{seed}.pt"
        _forgetting_problem(path, seed)
        for m in METHODS:
            r = _run(str(tmp_path), tmp_path / f"{m}{seed}", method=m, dataset="features",
                     dataset_kwargs={"path": str(path)}, base=5, increment=5, class_order=list(range(20)),
                     epochs=10, lr=1e-2, batch_size=64, pseudo_per_class=1)
            assert r.info["clip_weights"] == "synthetic features" and r.info["random_weights"] is False
            assert metrics.forgetting(r.acc_matrix) == pytest.approx(r.forgetting)
            forgetting[m].append(r.forgetting)
            if m == "clip_adapter":
                assert r.step_accuracy[0] > 90.0          # the adapter does learn each task
    mean = {m: float(np.mean(v)) for m, v in forgetting.items()}
    print("forgetting (mean over 3 seeds):", {m: round(v, 1) for m, v in mean.items()}, forgetting)
    assert mean["clip_adapter"] > 8.0                          # fine-tuning the adapter forgets
    assert mean["clip_rapf"] < mean["clip_adapter"] - 3.0      # both fusions forget measurably less
    assert mean["clip_awpf"] < mean["clip_adapter"] - 3.0
    assert all(r < a for r, a in zip(forgetting["clip_rapf"], forgetting["clip_adapter"]))


# ------------------------------------------------------------------ the engine, end to end


def _check_result(r, T):
    R = r.acc_matrix
    assert R.shape == (T, T)
    assert np.isfinite(R[np.tril_indices(T)]).all() and np.isnan(R[np.triu_indices(T, 1)]).all()
    assert ((R[np.tril_indices(T)] >= 0) & (R[np.tril_indices(T)] <= 100)).all()
    assert r.info["random_weights"] is True and r.info["clip_weights"] == "random-init"
    assert r.info["note"] == "numbers from randomly initialised CLIP weights"
    assert r.info["clip_model"] == "pnc-tiny-clip"
    assert len(r.task_info) == T
    method = r.config["method"]
    for t, info in enumerate(r.task_info):
        assert info["random_weights"] is True
        assert COMMON_KEYS <= set(info)
        if method == "clip_awpf":
            assert AWPF_KEYS <= set(info)
        if method == "clip_zeroshot":
            assert info["weight_change"] == 0.0
        else:
            assert info["weight_change"] > 0.0 and info["hard_pairs"] is not None
    if method == "clip_awpf":
        last = r.task_info[-1]
        assert 0.0 <= last["alpha"] <= 1.0 and len(last["alpha_grid"]) == r.config["alpha_grid"]
        i = last["alpha_grid"].index(last["alpha"])
        assert last["alpha_score"] == pytest.approx(last["alpha_lda"] - r.config["fusion_lambda"] * last["alpha_mmd"])
        assert last["alpha_score"] == max(last["alpha_grid_scores"]) == last["alpha_grid_scores"][i]
        assert 1 <= last["fusion_rank"] <= 64
    if method == "clip_rapf":
        assert r.task_info[-1]["fusion_rank"] == 64
        assert r.task_info[-1]["weight_change"] <= r.task_info[-1]["update_norm"] + 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_digits_end_to_end(method, feature_cache, tmp_path, digits_runs):
    r = _run(feature_cache, tmp_path / "run", method=method, dataset="digits")
    _check_result(r, 5)


@pytest.mark.parametrize("method", METHODS)
def test_shapes_end_to_end(method, feature_cache, tmp_path):
    r = _run(feature_cache, tmp_path / "run", method=method, dataset="shapes", clip_pretrained="random-init")
    _check_result(r, 2)
    assert r.config["dataset_kwargs"]["num_classes"] == 20


def test_same_config_gives_same_numbers(feature_cache, tmp_path, digits_runs):
    a = _run(feature_cache, tmp_path / "a", method="clip_awpf", dataset="digits")
    b = _run(feature_cache, tmp_path / "b", method="clip_awpf", dataset="digits")
    np.testing.assert_array_equal(a.acc_matrix, b.acc_matrix)
    assert [i["alpha"] for i in a.task_info] == [i["alpha"] for i in b.task_info]


def test_resume_inside_a_task_gives_the_same_numbers(feature_cache, tmp_path, monkeypatch, digits_runs):
    from pnc_lib.methods import clip_fusion

    cfg = dict(method="clip_rapf", dataset="digits", checkpoint_every=1)
    ref = _run(feature_cache, tmp_path / "ref", **cfg)
    real, calls = clip_fusion.sample_pseudo_features, []

    def interrupted(*args, **kwargs):  # one call per epoch: stop at task 2, epoch 1
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(clip_fusion, "sample_pseudo_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(feature_cache, tmp_path / "cut", **cfg)
    monkeypatch.setattr(clip_fusion, "sample_pseudo_features", real)
    resumed = _run(feature_cache, tmp_path / "cut", resume=True, **cfg)
    np.testing.assert_array_equal(resumed.acc_matrix, ref.acc_matrix)
    assert [i["weight_change"] for i in resumed.task_info] == [i["weight_change"] for i in ref.task_info]


# ------------------------------------------------------------------ presets


def test_clip_presets_resolve():
    cfg = make_config(method="clip_awpf", dataset="cifar100", preset="paper")
    assert (cfg.clip_model, cfg.clip_pretrained) == ("ViT-B-16", "openai")
    assert (cfg.lr, cfg.epochs, cfg.lr_milestones, cfg.batch_size) == (1e-3, 15, [4, 10], 100)
    assert cfg.hard_pair_threshold == 0.55 and cfg.templates == ["a good photo of a {}."]
    assert (cfg.base, cfg.increment, cfg.memory_budget) == (50, 10, 0)
    assert make_config(method="clip_rapf", dataset="imagenet100", preset="paper").hard_pair_threshold == 0.65
    for preset in ("smoke", "quick"):
        shapes = make_config(method="clip_adapter", dataset="shapes", preset=preset)
        assert (shapes.clip_model, shapes.clip_pretrained) == ("pnc-tiny-clip", "pnc-shapes")
        digits = make_config(method="clip_adapter", dataset="digits", preset=preset)
        assert (digits.clip_model, digits.clip_pretrained) == ("pnc-tiny-clip", "random-init")
    explicit = make_config(method="clip_adapter", dataset="shapes", preset="smoke", clip_pretrained="random-init")
    assert explicit.clip_pretrained == "random-init"
