"""Tests for pnc_lib.metrics, each against a small example worked out by hand."""
import math

import numpy as np
import pytest

from pnc_lib.metrics import (
    accuracy,
    average_incremental_accuracy,
    bwt,
    forgetting,
    last_accuracy,
    nc_metrics,
    old_new_accuracy,
    step_accuracies_from_matrix,
    task_accuracies,
)

NAN = np.nan

# R[t, j]: accuracy on task j after training task t. Task 0 *improves* after
# task 1 (95 > 90), so forgetting (max over earlier rows) and BWT (diagonal)
# give different answers.
R3 = np.array(
    [
        [90.0, NAN, NAN],
        [95.0, 80.0, NAN],
        [60.0, 65.0, 85.0],
    ]
)


# ---------------------------------------------------------------- accuracies

def test_accuracy_hand():
    assert accuracy([0, 1, 2, 3], [0, 1, 0, 3]) == pytest.approx(75.0)
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])


def test_task_accuracies_hand():
    # tasks: {0,1}, {2,3}, {4}; no test sample of class 4
    targets = np.array([0, 1, 1, 2, 3, 3])
    preds = np.array([0, 1, 1, 2, 2, 0])
    acc = task_accuracies(preds, targets, [0, 2, 4, 5])
    assert acc.shape == (3,)
    assert acc[0] == pytest.approx(100.0)  # 3/3
    assert acc[1] == pytest.approx(100.0 / 3)  # only the "2" is right
    assert math.isnan(acc[2])
    assert accuracy(preds, targets) == pytest.approx(400.0 / 6)  # 4 of 6


def test_old_new_accuracy_hand():
    targets = np.array([0, 1, 1, 2, 3, 3])
    preds = np.array([0, 1, 1, 2, 2, 0])
    old, new = old_new_accuracy(preds, targets, num_old_classes=2)
    assert old == pytest.approx(100.0)
    assert new == pytest.approx(100.0 / 3)
    old, new = old_new_accuracy(preds, targets, num_old_classes=3)
    assert old == pytest.approx(400.0 / 4)  # targets 0,1,1,2 all right
    assert new == pytest.approx(0.0)  # 3 -> 2, 3 -> 0
    old, new = old_new_accuracy(preds, targets, num_old_classes=10)
    assert old == pytest.approx(400.0 / 6)
    assert math.isnan(new)


# ---------------------------------------------------------- incremental metrics

def test_step_accuracies_equal_weights():
    # A_0 = 90, A_1 = (95 + 80)/2 = 87.5, A_2 = (60 + 65 + 85)/3 = 70
    np.testing.assert_allclose(step_accuracies_from_matrix(R3), [90.0, 87.5, 70.0])
    # mean = (90 + 87.5 + 70)/3 = 247.5/3 = 82.5
    assert average_incremental_accuracy(R3) == pytest.approx(82.5)
    assert last_accuracy(R3) == pytest.approx(70.0)


def test_step_accuracies_weighted():
    w = [3, 1, 1]
    # A_0 = 90, A_1 = (3*95 + 80)/4 = 365/4 = 91.25, A_2 = (3*60 + 65 + 85)/5 = 330/5 = 66
    np.testing.assert_allclose(step_accuracies_from_matrix(R3, w), [90.0, 91.25, 66.0])
    assert average_incremental_accuracy(R3, w) == pytest.approx((90 + 91.25 + 66) / 3)
    assert last_accuracy(R3, w) == pytest.approx(66.0)
    with pytest.raises(ValueError):
        step_accuracies_from_matrix(R3, [1, 1])


def test_one_d_vs_two_d_consistency():
    rng = np.random.default_rng(0)
    T = 5
    R = np.tril(rng.uniform(0, 100, size=(T, T)))
    R[np.triu_indices(T, k=1)] = NAN
    w = rng.integers(1, 10, size=T)
    A = step_accuracies_from_matrix(R, w)
    assert average_incremental_accuracy(A) == pytest.approx(average_incremental_accuracy(R, w))
    assert last_accuracy(A) == pytest.approx(last_accuracy(R, w))
    assert average_incremental_accuracy([80.0, 60.0, 40.0]) == pytest.approx(60.0)
    assert last_accuracy([80.0, 60.0, 40.0]) == pytest.approx(40.0)


def test_matrix_with_sample_counts_equals_pooled_accuracy():
    """A_t from R weighted by test-sample counts == accuracy on all seen samples."""
    rng = np.random.default_rng(1)
    bounds = [0, 2, 4, 6]
    targets = rng.integers(0, 6, size=300)
    T = len(bounds) - 1
    counts = [np.sum((targets >= bounds[j]) & (targets < bounds[j + 1])) for j in range(T)]
    R = np.full((T, T), NAN)
    pooled = []
    for t in range(T):
        preds = np.where(rng.random(300) < 0.3 + 0.2 * t, targets, (targets + 1) % 6)
        R[t, : t + 1] = task_accuracies(preds, targets, bounds)[: t + 1]
        seen = targets < bounds[t + 1]
        pooled.append(accuracy(preds[seen], targets[seen]))
    np.testing.assert_allclose(step_accuracies_from_matrix(R, counts), pooled)
    assert average_incremental_accuracy(R, counts) == pytest.approx(np.mean(pooled))


def test_forgetting_and_bwt_hand():
    # forgetting: task 0: max(90, 95) - 60 = 35 ; task 1: max(80) - 65 = 15
    #             -> (35 + 15)/2 = 25
    assert forgetting(R3) == pytest.approx(25.0)
    # bwt: (60 - 90) + (65 - 80) = -30 - 15 = -45 -> -45/2 = -22.5
    assert bwt(R3) == pytest.approx(-22.5)


def test_forgetting_excludes_last_row():
    # the max runs over rows l < T-1 only: f_0 = R[0,0] - R[1,0] = 50 - 80 = -30
    R = np.array([[50.0, NAN], [80.0, 70.0]])
    assert forgetting(R) == pytest.approx(-30.0)
    assert bwt(R) == pytest.approx(30.0)


def test_upper_triangle_is_ignored():
    # NaNs above the diagonal must not leak into any result, and whatever is
    # stored there must not matter.
    R_junk = np.nan_to_num(R3, nan=1000.0)
    for fn in (forgetting, bwt, average_incremental_accuracy, last_accuracy):
        a, b = fn(R3), fn(R_junk)
        assert np.isfinite(a)
        assert a == pytest.approx(b)


def test_single_task():
    R = np.array([[75.0]])
    assert forgetting(R) == 0.0  # nothing to forget
    assert bwt(R) == 0.0
    assert average_incremental_accuracy(R) == pytest.approx(75.0)
    assert last_accuracy(R) == pytest.approx(75.0)
    assert average_incremental_accuracy([75.0]) == pytest.approx(75.0)


def test_bad_matrix_shape():
    with pytest.raises(ValueError):
        forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        average_incremental_accuracy(np.zeros((2, 2, 2)))


def test_torch_inputs():
    torch = pytest.importorskip("torch")
    R = torch.tensor(R3)
    assert forgetting(R) == pytest.approx(25.0)
    assert average_incremental_accuracy(R) == pytest.approx(82.5)
    preds = torch.tensor([0, 1, 1, 2, 2, 0])
    targets = torch.tensor([0, 1, 1, 2, 3, 3])
    assert accuracy(preds, targets) == pytest.approx(400.0 / 6)
    np.testing.assert_allclose(task_accuracies(preds, targets, [0, 2, 4]), [100.0, 100.0 / 3])


# --------------------------------------------------------------- neural collapse

def simplex_etf(K, d, seed=0):
    """(K, d) rows forming a simplex ETF: unit norm, pairwise cosine -1/(K-1)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(d, K)))  # (d, K), orthonormal columns
    M = np.sqrt(K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)
    return M @ U.T


def test_nc_exact_simplex_etf():
    K, d, n = 4, 6, 5
    means = simplex_etf(K, d)
    labels = np.repeat(np.arange(K), n)
    feats = 3.0 * means[labels]  # zero within-class spread; the scale must not matter
    m = nc_metrics(feats, labels, classifier=means)
    assert m["num_classes"] == K
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc2_equinorm"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc2_equiangular_std"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc2_equiangular_dev"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc3"] == pytest.approx(0.0, abs=1e-12)
    assert m["nc4"] == 0.0
    assert all(type(v) in (float, int) for v in m.values())


def test_nc_noise_increases_nc1():
    K, d, n = 4, 8, 200
    means = simplex_etf(K, d, seed=1)
    labels = np.repeat(np.arange(K), n)
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(K * n, d))
    nc1 = [nc_metrics(means[labels] + s * Z, labels)["nc1"] for s in (0.05, 0.2, 0.8)]
    assert 0 < nc1[0] < nc1[1] < nc1[2]
    # With noise centred inside each class the class means do not move, so
    # S_W scales exactly with sigma^2: doubling sigma multiplies nc1 by 4.
    for k in range(K):
        Z[labels == k] -= Z[labels == k].mean(axis=0)
    a = nc_metrics(means[labels] + 0.1 * Z, labels)["nc1"]
    b = nc_metrics(means[labels] + 0.2 * Z, labels)["nc1"]
    assert a > 0
    assert b / a == pytest.approx(4.0)


def test_nc1_hand_1d():
    # class 0: {-3, -1} (mean -2), class 1: {1, 3} (mean 2); mu_G = 0
    # S_W = mean of squared deviations = (1+1+1+1)/4 = 1
    # S_B = (2^2 + (-2)^2)/2 = 4  ->  nc1 = (1 * 1/4) / 2 = 0.125
    feats = np.array([[-3.0], [-1.0], [1.0], [3.0]])
    labels = np.array([0, 0, 1, 1])
    m = nc_metrics(feats, labels)
    assert m["nc1"] == pytest.approx(0.125)
    assert m["nc2_equinorm"] == pytest.approx(0.0)  # |m_c| = 2, 2
    assert m["nc2_equiangular_dev"] == pytest.approx(0.0)  # cos = -1 = -1/(K-1)
    assert m["num_classes"] == 2


def test_nc_hand_2d_classifier():
    # class 0: (-1, 1), (-1, -1) -> mu_0 = (-1, 0); class 1: (1, 1), (1, -1) -> mu_1 = (1, 0)
    # S_W = diag(0, 1), S_B = diag(1, 0): within-class spread is orthogonal to
    # the between-class direction, so tr(S_W pinv(S_B)) = 0.
    feats = np.array([[-1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    labels = np.array([0, 0, 1, 1])
    # classifier that looks at the y coordinate instead of x
    W = np.array([[0.0, 1.0], [0.0, -1.0]])
    m = nc_metrics(feats, labels, classifier=W)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)
    # W/||W|| = [[0,1],[0,-1]]/sqrt2, Mc/||Mc|| = [[-1,0],[1,0]]/sqrt2
    # difference [[1,1],[-1,-1]]/sqrt2 has Frobenius norm sqrt(4/2) = sqrt2
    assert m["nc3"] == pytest.approx(math.sqrt(2))
    # NCM says 0,0,1,1; W says (y>0 -> 0): 0,1,0,1 -> 2 of 4 disagree
    assert m["nc4"] == pytest.approx(0.5)

    # same data with labels {1, 3} and a classifier over 5 classes: rows 1 and 3 are used
    W_big = np.full((5, 2), 100.0)
    W_big[[1, 3]] = W
    m_big = nc_metrics(feats, np.array([1, 1, 3, 3]), classifier=W_big)
    assert m_big["nc3"] == pytest.approx(math.sqrt(2))
    assert m_big["nc4"] == pytest.approx(0.5)


def test_nc2_hand_three_classes():
    # one sample per class, global mean 0: m = (2,0), (0,1), (-2,-1)
    feats = np.array([[2.0, 0.0], [0.0, 1.0], [-2.0, -1.0]])
    labels = np.array([0, 1, 2])
    m = nc_metrics(feats, labels)
    # norms 2, 1, sqrt5
    mean = (3 + math.sqrt(5)) / 3
    std = math.sqrt((4 + 1 + 5) / 3 - mean**2)
    assert m["nc2_equinorm"] == pytest.approx(std / mean)
    # cosines: (0,1)->0, (0,2)->-4/(2 sqrt5) = -2/sqrt5, (1,2)->-1/sqrt5
    # their mean is -1/sqrt5, deviations 1/sqrt5, -1/sqrt5, 0 -> var = 2/15
    assert m["nc2_equiangular_std"] == pytest.approx(math.sqrt(2 / 15))
    s5 = math.sqrt(5)
    dev = (abs(0 + 0.5) + abs(-2 / s5 + 0.5) + abs(-1 / s5 + 0.5)) / 3
    assert m["nc2_equiangular_dev"] == pytest.approx(dev)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)  # no within-class spread


def test_nc1_matches_subspace_formula_in_high_dim():
    # d >> K: S_B is rank K-1; pinv must act only on the between-class subspace.
    K, d, n = 3, 64, 50
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(K), n)
    feats = rng.normal(size=(K, d))[labels] * 2 + rng.normal(size=(K * n, d))
    m = nc_metrics(feats, labels)
    mu = np.stack([feats[labels == k].mean(0) for k in range(K)])
    Mc = mu - feats.mean(0)
    Q = np.linalg.svd(Mc, full_matrices=False)[2][: K - 1].T  # (d, K-1) basis
    Hw = feats - mu[labels]
    S_W = Hw.T @ Hw / len(labels)
    S_B = Mc.T @ Mc / K
    expected = np.trace(Q.T @ S_W @ Q @ np.linalg.inv(Q.T @ S_B @ Q)) / K
    assert m["nc1"] == pytest.approx(expected, rel=1e-8)


def test_nc_errors():
    feats = np.random.default_rng(0).normal(size=(6, 5))
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc_metrics(feats, np.zeros(6, dtype=int))
    labels = np.array([0, 0, 1, 1, 2, 2])
    etf_dK = simplex_etf(3, 5).T  # (d, K) storage: must be transposed by the caller
    with pytest.raises(ValueError, match="M.T"):
        nc_metrics(feats, labels, classifier=etf_dK)
    assert "nc3" in nc_metrics(feats, labels, classifier=etf_dK.T)


def test_nc_torch_inputs():
    torch = pytest.importorskip("torch")
    feats = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    assert nc_metrics(feats, labels)["nc1"] == pytest.approx(0.125)
