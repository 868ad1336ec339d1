"""Tests for pnc_lib.losses: dot regression and module distillation."""

import math

import torch

from pnc_lib.etf import simplex_etf
from pnc_lib.losses import class_balance_weights, dot_regression_loss, module_distillation_loss


def test_dot_regression_zero_on_prototypes():
    etf = simplex_etf(16, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 4, 2, 0])
    feats = etf[:, targets].T.clone()
    assert dot_regression_loss(feats, targets, etf).item() < 1e-6
    assert dot_regression_loss(feats * 7.5, targets, etf).item() < 1e-6
    assert dot_regression_loss(feats * 0.01, targets, etf, rebalance=True).item() < 1e-6
    # Wrong labels -> positive loss.
    wrong = (targets + 1) % 5
    assert dot_regression_loss(feats, wrong, etf).item() > 0.1
    # Negative scaling flips the direction: (−1 − 1)^2 / 2 = 2.
    assert math.isclose(dot_regression_loss(-feats, targets, etf).item(), 2.0, rel_tol=1e-5)


def test_dot_regression_hand_value():
    etf = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # 2-D, 2 classes: e1 and -e1
    feats = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1])
    # sample 0: dot 0 -> (0-1)^2 = 1; sample 1: dot -1/sqrt2 -> (1 + 1/sqrt2)^2 = 1.5 + sqrt2
    expected = 0.5 * (1.0 + 1.5 + math.sqrt(2.0)) / 2
    got = dot_regression_loss(feats, targets, etf).item()
    assert math.isclose(got, expected, rel_tol=1e-6)


def test_rebalance_hand_value():
    etf = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    feats = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [1.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 1])
    # squared errors: class 0 -> 1, 1, 1; class 1 -> (-1 - 1)^2 = 4
    plain = dot_regression_loss(feats, targets, etf).item()
    assert math.isclose(plain, 0.5 * (1 + 1 + 1 + 4) / 4, rel_tol=1e-6)
    # B=4, two classes present: w0^2 = (4/2)/3 = 2/3, w1^2 = (4/2)/1 = 2
    w2 = class_balance_weights(targets)
    torch.testing.assert_close(w2, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    reb = dot_regression_loss(feats, targets, etf, rebalance=True).item()
    assert math.isclose(reb, 0.5 * (3 * (2 / 3) * 1 + 2 * 4) / 4, rel_tol=1e-6)  # = 1.25


def test_rebalance_balanced_batch_is_plain():
    torch.manual_seed(0)
    etf = simplex_etf(8, 4)
    feats = torch.randn(12, 8)
    targets = torch.arange(4).repeat(3)
    a = dot_regression_loss(feats, targets, etf)
    b = dot_regression_loss(feats, targets, etf, rebalance=True)
    torch.testing.assert_close(a, b)


def test_dot_regression_gradient_flows_to_features_only():
    torch.manual_seed(0)
    etf = simplex_etf(8, 4).requires_grad_(True)
    feats = torch.randn(6, 8, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = dot_regression_loss(feats, targets, etf)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 1e-4
    assert etf.grad is None


def test_module_distillation_values():
    torch.manual_seed(0)
    t = torch.randn(5, 16)
    assert module_distillation_loss(t.clone(), t).item() < 1e-6
    assert module_distillation_loss(3.0 * t, t).item() < 1e-6
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 1.0], [5.0, 0.0]])
    assert math.isclose(module_distillation_loss(s, teacher).item(), 0.5, rel_tol=1e-6)
    assert math.isclose(module_distillation_loss(-t, t).item(), 2.0, rel_tol=1e-5)


def test_module_distillation_teacher_untouched():
    torch.manual_seed(0)
    student = torch.randn(4, 8, requires_grad=True)
    teacher = torch.randn(4, 8, requires_grad=True)
    before = teacher.detach().clone()
    loss = module_distillation_loss(student, teacher)
    loss.backward()
    assert loss.item() > 0
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.equal(teacher.detach(), before)
