"""Tests for SCL-PNC: expandable backbone, adapt-layer, the method, resume and ablations."""
import math

import numpy as np
import pytest
import torch

import pnc_lib
from pnc_lib.config import make_config
from pnc_lib.engine import Run, scenario_for
from pnc_lib.etf import ETFHead
from pnc_lib.methods import TaskContext
from pnc_lib.methods.scl_pnc import SCLPNC
from pnc_lib.metrics import nc_metrics
from pnc_lib.models import build_backbone_parts
from pnc_lib.models.adapt_layer import AdaptLayer
from pnc_lib.models.expandable import ExpandableBackbone

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, OpenMP threads of parallel workers fight."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMOKE = {"method": "scl_pnc", "dataset": "digits", "base": 2, "increment": 2, "preset": "smoke",
         "progress": False, "device": "cpu"}


def make_method(**overrides):
    cfg = make_config(dict(SMOKE, **overrides))
    torch.manual_seed(cfg.seed)
    return SCLPNC(cfg, scenario_for(cfg), torch.device("cpu"))


def train(method, task, epochs=None):
    s = method.scenario
    if epochs is not None:
        method.cfg.epochs = epochs
    idx = s.indices("train", task=task)
    if task > 0:  # a few old samples, as the memory would give
        idx = np.concatenate([idx, s.indices("train", upto=task - 1)[::10]])
    return method.train_task(TaskContext(task=task, indices=idx, new_classes=s.task_classes(task),
                                         seen_classes=s.seen_classes(task), progress=False))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- backbone
def tiny_parts():
    torch.manual_seed(0)
    return build_backbone_parts("cnn", 1, width=4, module_width=8)


def test_parallel_output_size_fixed_serial_grows():
    x = torch.randn(5, 1, 8, 8)
    par, ser = ExpandableBackbone(tiny_parts(), "parallel"), ExpandableBackbone(tiny_parts(), "serial")
    for k in range(1, 4):
        par.add_module_for_task()
        ser.add_module_for_task()
        assert par(x).shape == (5, 8) and par.out_dim == 8
        assert ser(x).shape == (5, 8 * k) and ser.out_dim == 8 * k
        assert len(par.module_outputs(x)) == k


def test_parallel_is_mean_and_serial_is_concat():
    bb = ExpandableBackbone(tiny_parts(), "parallel")
    bb.add_module_for_task()
    bb.add_module_for_task()
    with torch.no_grad():
        for p in bb.expansions[1].parameters():
            p.add_(0.1)
    bb.eval()
    x = torch.randn(4, 1, 8, 8)
    outs = bb.module_outputs(x)
    assert not torch.allclose(outs[0], outs[1])
    assert torch.allclose(bb(x), (outs[0] + outs[1]) / 2)
    bb.expansion = "serial"
    assert torch.allclose(bb(x), torch.cat(outs, 1))


def test_new_module_is_exact_copy_and_old_parts_frozen():
    bb = ExpandableBackbone(tiny_parts())
    bb.add_module_for_task()
    assert all(p.requires_grad for p in bb.parameters())
    with torch.no_grad():  # make module 0 differ from a fresh init, BN buffers included
        for p in bb.expansions[0].parameters():
            p.mul_(1.5)
    bb.train()
    bb(torch.randn(6, 1, 8, 8))  # moves the BN running stats
    bb.add_module_for_task()
    assert same(snapshot(bb.expansions[0]), snapshot(bb.expansions[1]))
    assert all(not p.requires_grad for p in bb.base.parameters())
    assert all(not p.requires_grad for p in bb.expansions[0].parameters())
    assert all(p.requires_grad for p in bb.expansions[1].parameters())
    bb.train()
    assert not bb.base.training and not bb.expansions[0].training and bb.expansions[1].training
    counts = bb.parameter_counts()
    assert counts["trainable"] == counts["per_module"] == sum(p.numel() for p in bb.expansions[1].parameters())
    assert counts["total"] == counts["base"] + 2 * counts["per_module"]


# ---------------------------------------------------------------------- adapt-layer
def test_adapt_layer_shapes_and_residual_form():
    torch.manual_seed(0)
    layer = AdaptLayer(12, 40, 20)
    x = torch.randn(7, 12)
    y = layer(x)
    assert y.shape == (7, 20)
    assert torch.allclose(y, layer.shortcut(x) + layer.mlp(x))
    kinds = [type(m).__name__ for m in layer.mlp]
    assert kinds == ["Linear", "LayerNorm", "LeakyReLU"] * 2 + ["Linear"]
    assert layer.mlp[2].negative_slope == 0.1
    with torch.no_grad():
        layer.mlp[-1].weight.zero_()
        layer.mlp[-1].bias.zero_()
    assert torch.allclose(layer(x), layer.shortcut(x))  # the residual path alone


def test_adapt_layer_grow_input_keeps_function():
    torch.manual_seed(0)
    layer = AdaptLayer(6, 16, 10)
    x = torch.randn(5, 6)
    before = layer(x)
    layer.grow_input(9)
    assert layer.in_dim == 9 and layer.shortcut.in_features == 9 and layer.mlp[0].in_features == 9
    wide = torch.cat([x, torch.randn(5, 3)], 1)
    assert torch.allclose(layer(wide), before, atol=1e-6)  # new inputs start with zero weights
    with pytest.raises(ValueError):
        layer.grow_input(4)


# ---------------------------------------------------------------------- method
def test_etf_dim_smaller_than_classes_raises():
    cfg = make_config(dict(SMOKE, dataset="shapes", base=10, increment=5, adapt_out=8,
                           dataset_kwargs={"num_classes": 20, "train_per_class": 2, "test_per_class": 1}))
    with pytest.raises(ValueError, match="adapt_out"):
        SCLPNC(cfg, scenario_for(cfg), torch.device("cpu"))
    cfg = make_config(dict(SMOKE, dataset="shapes", base=10, increment=5, adapt_layer=False,
                           dataset_kwargs={"num_classes": 20, "train_per_class": 2, "test_per_class": 1}))
    with pytest.raises(ValueError, match="module_width"):  # smoke module_width 16 < 20 classes
        SCLPNC(cfg, scenario_for(cfg), torch.device("cpu"))


def test_frozen_parts_do_not_change_in_later_task():
    m = make_method(epochs=2)
    m.begin_task(0)
    train(m, 0)
    m.begin_task(1)
    bb = m.backbone
    base0, mod0, mod1 = snapshot(bb.base), snapshot(bb.expansions[0]), snapshot(bb.expansions[1])
    assert same(mod0, mod1)  # the new module starts as a copy of the previous one
    head = m.model["head"]
    assert isinstance(head, ETFHead) and head.num_classes == 4
    train(m, 1)
    assert same(snapshot(bb.base), base0)  # parameters and BN running statistics
    assert same(snapshot(bb.expansions[0]), mod0)
    assert not same(snapshot(bb.expansions[1]), mod1)  # the new module did train
    assert any("running_mean" in k for k in base0)
    info = m.end_task(1)
    assert info["num_modules"] == 2 and info["module_parameters"] > 0
    assert info["trainable_parameters"] < info["parameters"]
    assert info["etf_shift"] > 0  # procrustes growth 2 -> 4 classes moves the old prototypes a little
    assert m.end_task(1)["trainable_parameters"] == sum(p.numel() for p in m.trainable_parameters())


def test_kd_teacher_is_previous_module_and_untouched():
    m = make_method(kd_weight=1.0)
    m.begin_task(0)
    m.begin_task(1)
    with torch.no_grad():  # make the new module differ so the KD term is non-zero
        for p in m.backbone.expansions[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher = snapshot(m.backbone.expansions[0])
    x = m.scenario.train.x[:16]
    y = m.scenario.train.y[:16].clamp(max=3)
    m.model.train()
    loss, stats = m.loss(x, y, epoch=0)
    assert stats["kd"] > 0 and math.isfinite(float(loss.detach()))
    loss.backward()
    assert all(p.grad is None for p in m.backbone.expansions[0].parameters())
    assert same(snapshot(m.backbone.expansions[0]), teacher)
    m.cfg.kd_epochs = 1
    assert "kd" not in m.loss(x, y, epoch=1)[1]


@pytest.mark.parametrize("expansion", ["parallel", "serial"])
def test_resume_state_dict_gives_identical_predictions(expansion):
    m = make_method(expansion=expansion, epochs=1)
    for t in range(2):
        m.begin_task(t)
        train(m, t)
    state = m.state_dict()
    idx = m.scenario.indices("test", upto=1)
    expected = m.predict("test", idx)
    fresh = make_method(expansion=expansion, epochs=1, seed=0)
    torch.manual_seed(123)  # a different init: everything must come from the state_dict
    fresh.begin_task(0)
    fresh.begin_task(1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.predict("test", idx), expected)
    with torch.no_grad():
        x = m.scenario.test.x[idx[:32]]
        m.model.eval(), fresh.model.eval()
        assert torch.equal(fresh.logits(x), m.logits(x))


def run_smoke(tmp_path, name="run", **overrides):
    return pnc_lib.run(dict(SMOKE, out_dir=str(tmp_path / name), **overrides))


def test_smoke_run_shape_and_determinism(tmp_path):
    r1 = run_smoke(tmp_path, "a")
    r2 = run_smoke(tmp_path, "b")
    assert r1.acc_matrix.shape == (5, 5)
    assert np.all(np.isnan(r1.acc_matrix[np.triu_indices(5, 1)]))
    assert not np.any(np.isnan(r1.acc_matrix[np.tril_indices(5)]))
    np.testing.assert_array_equal(r1.acc_matrix, r2.acc_matrix)
    assert r1.step_accuracy == r2.step_accuracy
    assert [i["num_modules"] for i in r1.task_info] == [1, 2, 3, 4, 5]
    assert all(i["memory_size"] > 0 for i in r1.task_info)


@pytest.mark.parametrize("ablation", [
    {"head": "linear"}, {"adapt_layer": False}, {"kd_weight": 0.0}, {"expansion": "serial"},
    {"etf_mode": "redraw"}, {"etf_mode": "fixed"}, {"loss": "ce"}, {"rebalance": True},
    {"head": "linear", "adapt_layer": False}, {"kd_epochs": 1},
])
def test_ablation_smoke_runs(tmp_path, ablation):
    r = run_smoke(tmp_path, **ablation)
    assert r.acc_matrix.shape == (5, 5)
    assert all(0.0 <= a <= 100.0 for a in r.step_accuracy)
    assert r.step_accuracy[0] > 50.0  # two classes: better than chance
    if ablation.get("expansion") == "serial":
        assert [i["feature_dim"] for i in r.task_info] == [16, 32, 48, 64, 80]
    if ablation.get("etf_mode") == "fixed":
        assert all(i["etf_shift"] == 0.0 for i in r.task_info)


def test_serial_without_adapt_layer_is_refused():
    with pytest.raises(ValueError, match="adapt"):
        make_method(expansion="serial", adapt_layer=False)


def test_paper_preset_first_steps_on_cifar_sized_shapes():
    cfg = make_config({"method": "scl_pnc", "dataset": "shapes", "preset": "paper", "device": "cpu",
                       "progress": False, "base": 50, "increment": 10,
                       "dataset_kwargs": {"num_classes": 100, "train_per_class": 1, "test_per_class": 1}})
    assert (cfg.backbone, cfg.width, cfg.blocks, cfg.module_width) == ("resnet32", 16, 5, 128)
    assert (cfg.adapt_hidden, cfg.adapt_out, cfg.epochs, cfg.batch_size) == (512, 256, 200, 128)
    torch.manual_seed(0)
    m = SCLPNC(cfg, scenario_for(cfg), torch.device("cpu"))
    x = torch.rand(8, 3, 32, 32)
    y = torch.arange(8) % 50
    for task in (0, 1):
        m.begin_task(task)
        m.trainer = m.make_trainer(task)
        m.model.train()
        outs, e = m._forward(x)
        assert [o.shape for o in outs] == [(8, 128)] * (task + 1)
        assert e.shape == (8, 256) and m.normalized_features(x).shape == (8, 256)
        loss, stats = m.loss(x, y, epoch=0)
        assert math.isfinite(m.trainer.step(loss))
        assert ("kd" in stats) == (task == 1)
        m.trainer = None
    assert m.logits(x).shape == (8, 60)


# ---------------------------------------------------------------------- quick preset (minutes)
def task0_nc(epochs, tmp_path):
    cfg = make_config(dict(SMOKE, preset="quick", epochs=epochs, out_dir=str(tmp_path)))
    torch.manual_seed(cfg.seed)
    m = SCLPNC(cfg, scenario_for(cfg), torch.device("cpu"))
    m.begin_task(0)
    train(m, 0)
    idx = m.scenario.indices("train", task=0)
    return nc_metrics(train_features(m, idx), m.scenario.train.y[idx], classifier=m.etf.T)


@torch.no_grad()
def train_features(method, idx):
    """``h = normalize(BN(e))`` of training samples ``idx``, model in eval mode."""
    method.model.eval()
    return torch.cat([method.normalized_features(x) for x, _, _ in method._batches("train", idx, False)])


def quick_mean_aia(base, tmp_path, on_run=None):
    """Avg inc acc on the quick preset: finetune on seed 0, replay and SCL-PNC averaged over seeds 0-2.
    ``on_run(method, seed, run)`` is called before each run is executed."""
    aia = {}
    for meth, seeds in (("finetune", (0,)), ("replay", (0, 1, 2)), ("scl_pnc", (0, 1, 2))):
        vals = []
        for seed in seeds:
            run = Run(make_config(dict(base, method=meth, preset="quick", seed=seed,
                                       out_dir=str(tmp_path / f"{meth}{seed}"))))
            if on_run is not None:
                on_run(meth, seed, run)
            vals.append(run.execute().avg_incremental_accuracy)
        aia[meth] = float(np.mean(vals))
    return aia


@pytest.mark.slow
def test_quick_digits_beats_finetune_and_is_level_with_replay(tmp_path):
    """digits B2 Inc2, quick preset, mean over seeds 0-2 (finetune: seed 0)."""
    aia = quick_mean_aia(SMOKE, tmp_path)
    assert aia["scl_pnc"] > aia["finetune"] + 20, aia
    assert aia["scl_pnc"] >= aia["replay"], aia
    early, late = task0_nc(1, tmp_path / "nc1"), task0_nc(None, tmp_path / "nc2")
    assert late["nc1"] < early["nc1"]
    assert late["nc3"] < early["nc3"]


# ---------------------------------------------------------------------- base/module split
def test_resnet32_reference_split_shapes():
    """Reference split: the 2w->4w block keeps the resolution (64 x 16 x 16 on 32x32 images, as in
    the reference code); a module halves it again (128 x 8 x 8) before pooling."""
    torch.manual_seed(0)
    parts = build_backbone_parts("resnet32", 3, width=16, blocks=1, module_width=128)
    z = parts.base(torch.rand(2, 3, 32, 32))
    assert z.shape == (2, 64, 16, 16)
    module = parts.make_module()
    assert module.body(z).shape == (2, 128, 8, 8) and module(z).shape == (2, 128)


@pytest.mark.parametrize("kind,n_stages", [("cnn", 2), ("resnet32", 3)])
def test_base_stages_moves_layers_without_changing_the_plain_network(kind, n_stages):
    in_ch, size = (1, 8) if kind == "cnn" else (3, 32)
    x = torch.rand(3, in_ch, size, size)
    outs, base_sizes, module_sizes = [], [], []
    for k in range(1, n_stages + 1):
        torch.manual_seed(0)
        parts = build_backbone_parts(kind, in_ch, width=4, blocks=1, module_width=8, base_stages=k)
        net = parts.plain_network().eval()
        with torch.no_grad():
            outs.append(net(x))
        base_sizes.append(sum(p.numel() for p in parts.base.parameters()))
        module_sizes.append(sum(p.numel() for p in net[1].parameters()))
    # the same layers with the same initial weights, only cut at another place
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert base_sizes == sorted(base_sizes) and len(set(base_sizes)) == n_stages
    assert module_sizes == sorted(module_sizes, reverse=True)
    assert len({b + m for b, m in zip(base_sizes, module_sizes)}) == 1
    with pytest.raises(ValueError, match=f"choose 1..{n_stages}"):
        build_backbone_parts(kind, in_ch, base_stages=n_stages + 1)


def test_shallow_base_freezes_only_its_stages():
    """base_stages=1 on the digits CNN: the frozen base is the first conv; every module holds the
    second conv and starts as a copy of the previous module."""
    m = make_method(base_stages=1)
    m.begin_task(0)
    train(m, 0, epochs=1)
    base_before = snapshot(m.backbone.base)
    m.begin_task(1)
    bb = m.backbone
    assert len(bb.base) == 1 and not any(p.requires_grad for p in bb.base.parameters())
    assert same(snapshot(bb.expansions[1]), snapshot(bb.expansions[0]))
    assert bb.expansions[1].body[0][0].in_channels == m.cfg.width           # conv w -> 2w in the module
    assert all(p.requires_grad for p in bb.expansions[1].parameters())
    train(m, 1, epochs=1)
    assert same(snapshot(m.backbone.base), base_before)


def test_base_stages_checked_in_the_config():
    with pytest.raises(pnc_lib.config.ConfigError, match="base_stages=3 is impossible for backbone 'cnn'"):
        make_config(dict(SMOKE, base_stages=3))
    quick = make_config({"method": "scl_pnc", "dataset": "shapes", "preset": "quick"})
    assert (quick.backbone, quick.base_stages, quick.loss) == ("resnet32", 1, "ce")
    # another backbone than the preset's gets the reference split, not the preset's cut
    assert make_config({"method": "scl_pnc", "dataset": "shapes", "preset": "quick",
                        "backbone": "cnn"}).base_stages is None
    assert make_config({"method": "scl_pnc", "dataset": "cifar100", "preset": "paper"}).loss == "dr"


@pytest.mark.slow
def test_quick_shapes_beats_finetune_and_is_level_with_replay(tmp_path):
    """shapes B10 Inc5 on the quick preset (notebook 09's scenario), mean over seeds 0-2, replay at
    the same memory budget; NC1 and NC3 of the task-0 features fall from init to the end of task 0."""
    base = {"dataset": "shapes", "base": 10, "increment": 5, "progress": False, "device": "cpu"}

    def nc_over_task0(meth, seed, run):
        if meth != "scl_pnc" or seed != 0:
            return
        m, s = run.method, run.scenario
        idx = s.indices("train", task=0)
        m.begin_task(0)
        nc = [nc_metrics(train_features(m, idx), s.train.y[idx], classifier=m.etf.T)]
        run.execute(stop_after=1)                      # execute() then goes on from task 1
        nc.append(nc_metrics(train_features(m, idx), s.train.y[idx], classifier=m.etf.T))
        assert nc[1]["nc1"] < nc[0]["nc1"] and nc[1]["nc3"] < nc[0]["nc3"], nc

    aia = quick_mean_aia(base, tmp_path, on_run=nc_over_task0)
    assert aia["scl_pnc"] > aia["finetune"] + 20, aia
    assert aia["scl_pnc"] >= aia["replay"], aia

