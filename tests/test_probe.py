"""Linear probes (pnc_lib.probe) and the pooled base features of the network methods."""
import numpy as np
import pytest
import torch

import pnc_lib
from pnc_lib.engine import Run
from pnc_lib.probe import attribute_labels, linear_probe_accuracy, probe_base


def _blobs(sep, n=60, d=8, k=3, seed=0):
    g = np.random.RandomState(seed)
    centres = sep * g.randn(k, d)
    y = np.repeat(np.arange(k), n)
    return centres[y] + g.randn(len(y), d), y


def test_probe_reads_separated_classes_and_not_noise():
    xtr, ytr = _blobs(4.0, seed=0)
    xte, yte = _blobs(4.0, seed=0)
    xte = xte + np.random.RandomState(1).randn(*xte.shape) * 0.1
    assert linear_probe_accuracy(xtr, ytr, xte, yte) > 95.0
    g = np.random.RandomState(2)
    noise_tr, noise_te = g.randn(300, 8), g.randn(300, 8)
    chance = linear_probe_accuracy(noise_tr, g.randint(0, 3, 300), noise_te, g.randint(0, 3, 300))
    assert chance < 50.0                       # 3 classes: about 33% from labels unrelated to x


def test_probe_rejects_bad_input():
    x, y = _blobs(1.0)
    with pytest.raises(ValueError, match="2 distinct"):
        linear_probe_accuracy(x, np.zeros(len(x)), x, y)
    with pytest.raises(ValueError, match="one label"):
        linear_probe_accuracy(x, y[:-1], x, y)


def test_attribute_labels_follow_the_class_names():
    s = pnc_lib.make_scenario("shapes", 4, 4, seed=3, num_classes=8, train_per_class=4, test_per_class=2)
    labels = np.arange(s.num_classes)
    for attr in ("shape", "colour", "texture"):
        values = attribute_labels(s, labels, attr)
        for name, v in zip(s.class_names, values):
            assert v in name.split()
    digits = pnc_lib.make_scenario("digits", 2, 2)
    with pytest.raises(ValueError, match="no class attributes"):
        attribute_labels(digits, [0], "shape")


def _smoke(method, tmp_path, **kw):
    cfg = pnc_lib.make_config(dict(method=method, dataset="shapes", base=10, increment=5, preset="smoke",
                                   progress=False, out_dir=str(tmp_path / method), **kw))
    return Run(cfg)


def test_scl_pnc_base_is_frozen_after_task_0_and_replay_keeps_training(tmp_path):
    """The pooled base features of SCL-PNC are the same after task 0 and after the last task;
    those of replay change (its base keeps training)."""
    idx = np.arange(40)
    feats = {}
    for method in ("scl_pnc", "replay"):
        run = _smoke(method, tmp_path)
        run.execute(stop_after=1)
        first = run.method.base_features("test", idx)
        run.execute()
        feats[method] = (first, run.method.base_features("test", idx))
    a, b = feats["scl_pnc"]
    assert run.method.cfg.backbone == "cnn" and a.shape == (40, 2 * run.method.cfg.width)  # cnn base: 2w channels
    assert torch.equal(a, b)
    a, b = feats["replay"]
    assert (a - b).abs().max() > 1e-3


def test_probe_base_reports_class_and_attributes(tmp_path):
    run = _smoke("scl_pnc", tmp_path)
    run.execute(stop_after=1)
    res = probe_base(run.method, run.scenario)
    assert set(res) == {"class", "shape", "colour", "texture"}
    k = run.scenario.num_classes
    assert res["class"] > 100.0 / k + 10           # the base features carry class information
    assert all(0.0 <= v <= 100.0 for v in res.values())
