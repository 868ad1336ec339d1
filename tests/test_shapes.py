"""Tests for the procedural shapes dataset (pnc_lib.data.shapes)."""
import numpy as np
import pytest
import torch

from pnc_lib.data.shapes import (
    COLOUR_NAMES, SHAPE_NAMES, TEXTURE_NAMES, caption, class_attributes, class_name, make_shapes, render,
)


@pytest.fixture(scope="module")
def small():
    return make_shapes(num_classes=7, train_per_class=6, test_per_class=4, seed=3)


def test_shapes_dtypes_and_range(small):
    assert small["train_x"].shape == (42, 3, 32, 32) and small["test_x"].shape == (28, 3, 32, 32)
    for split in ("train", "test"):
        x, y = small[f"{split}_x"], small[f"{split}_y"]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert x.std() > 0.05  # not a blank image
        assert len(small[f"{split}_captions"]) == len(y)
    assert len(small["class_names"]) == len(small["attributes"]) == 7


def test_labels_in_range_and_balanced(small):
    for split, per_class in (("train", 6), ("test", 4)):
        counts = torch.bincount(small[f"{split}_y"], minlength=7)
        assert counts.tolist() == [per_class] * 7
        assert small[f"{split}_y"].min() == 0 and small[f"{split}_y"].max() == 6


def test_deterministic_and_seed_dependent(small):
    again = make_shapes(num_classes=7, train_per_class=6, test_per_class=4, seed=3)
    assert torch.equal(small["train_x"], again["train_x"]) and torch.equal(small["test_x"], again["test_x"])
    assert small["train_captions"] == again["train_captions"]
    other = make_shapes(num_classes=7, train_per_class=6, test_per_class=4, seed=4)
    assert not torch.equal(small["train_x"], other["train_x"])


def test_train_and_test_are_independent():
    d = make_shapes(num_classes=1, train_per_class=5, test_per_class=5)
    assert (d["train_x"] - d["test_x"]).abs().mean() > 0.02


def test_class_images_do_not_depend_on_num_classes():
    a, b = make_shapes(5, 3, 2, seed=1), make_shapes(20, 3, 2, seed=1)
    assert b["class_names"][:5] == a["class_names"]
    assert torch.equal(a["train_x"], b["train_x"][:15])


def test_class_attributes_cover_and_spread():
    full = class_attributes(100)
    combos = {(a["shape"], a["colour"], a["texture"]) for a in full}
    assert len(combos) == 100 and sorted(a["index"] for a in full) == list(range(100))
    first20 = class_attributes(20, seed=0)
    assert first20 == full[:20]
    assert {a["shape"] for a in first20} == set(SHAPE_NAMES)
    assert {a["colour"] for a in first20} == set(COLOUR_NAMES)
    assert {a["texture"] for a in first20} == set(TEXTURE_NAMES)
    assert class_attributes(20, seed=1) != first20


def test_captions_contain_class_words(small):
    per = {"train": 6, "test": 4}
    for split in ("train", "test"):
        for i, cap in enumerate(small[f"{split}_captions"]):
            words = cap.rstrip(".").replace(",", "").split()
            attrs = small["attributes"][small[f"{split}_y"][i]]
            assert {attrs["shape"], attrs["colour"], attrs["texture"]} <= set(words), cap
            assert ("small" in words) != ("large" in words)
        assert len(small[f"{split}_captions"]) == 7 * per[split]
    attrs = dict(shape="triangle", colour="red", texture="striped")
    assert class_name(attrs) == "red striped triangle"
    assert caption(attrs) == "a photo of a red striped triangle."
    assert caption(attrs, {"size": "small", "background": "dark"}) == "a photo of a small red striped triangle."


def test_pretrain_captions_vary_and_contain_class_words():
    d = make_shapes(num_classes=4, train_per_class=30, test_per_class=1, domain="pretrain")
    assert len({c.split()[1] for c in d["train_captions"]}) >= 3  # several templates in use
    for cap, y in zip(d["train_captions"], d["train_y"]):
        a = d["attributes"][y]
        assert all(w in cap for w in (a["shape"], a["colour"], a["texture"]))


def test_render_batch_and_nuisance():
    attrs = class_attributes(3)
    x, nuisance = render(attrs, np.random.default_rng(0), image_size=24)
    assert x.shape == (3, 3, 24, 24) and x.dtype == np.float32
    assert len(nuisance) == 3 and all(n["size"] in ("small", "large") for n in nuisance)


def test_classes_distinguishable_but_not_trivial():
    from sklearn.linear_model import LogisticRegression

    d = make_shapes(num_classes=20, train_per_class=60, test_per_class=30, seed=0)
    pool = lambda x: torch.nn.functional.avg_pool2d(x, 4).flatten(1).numpy()  # noqa: E731  8x8 pixels
    clf = LogisticRegression(max_iter=2000).fit(pool(d["train_x"]), d["train_y"].numpy())
    acc = (clf.predict(pool(d["test_x"])) == d["test_y"].numpy()).mean()
    assert 3 * (1 / 20) < acc < 0.99, acc


def test_pretrain_domain_differs_from_cil():
    cil = make_shapes(num_classes=10, train_per_class=20, test_per_class=1, domain="cil")["train_x"]
    pre = make_shapes(num_classes=10, train_per_class=20, test_per_class=1, domain="pretrain")["train_x"]
    # Background seen in the image corners: pretraining backgrounds are more colourful and varied.
    corners = lambda x: torch.cat([x[..., :4, :4], x[..., -4:, -4:]], -1).mean((-2, -1))  # noqa: E731  (N, 3)
    spread = lambda c: (c.max(1).values - c.min(1).values).mean()  # noqa: E731  channel spread = saturation
    assert spread(corners(pre)) > 1.5 * spread(corners(cil))
    assert corners(pre).mean(1).std() > 1.5 * corners(cil).mean(1).std()


def test_full_size_generation_runs():
    d = make_shapes(num_classes=100, train_per_class=50, test_per_class=1)
    assert d["train_x"].shape == (5000, 3, 32, 32) and len(set(d["class_names"])) == 100


@pytest.mark.parametrize("kwargs", [
    dict(num_classes=0), dict(num_classes=101), dict(train_per_class=0), dict(test_per_class=-1),
    dict(domain="web"), dict(num_classes=2.5),
])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        make_shapes(**kwargs)
