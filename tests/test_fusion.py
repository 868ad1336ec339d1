import math

import pytest
import torch

from pnc_lib.fusion import (
    adapted,
    balance_factor_search,
    lda_score,
    mmd2,
    rapf_fuse,
    stacked_fuse,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair(seed, d=16, dtype=torch.float32):
    g = _gen(seed)
    W_old = torch.randn(d, d, generator=g, dtype=dtype)
    W_new = W_old + 0.5 * torch.randn(d, d, generator=g, dtype=dtype)
    return W_old, W_new


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- fusion rules


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_weights_give_w_old(seed):
    W, _ = _pair(seed)
    for b in (-0.5, 0.0, 0.3, 1.0):
        assert torch.allclose(rapf_fuse(W, W.clone(), b), W, atol=1e-5)
        assert torch.allclose(stacked_fuse(W, W.clone(), b), W, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_one_gives_w_new(seed):
    W_old, W_new = _pair(seed, dtype=torch.float64)
    for b in (1.0, 3.0):
        assert torch.allclose(rapf_fuse(W_old, W_new, b), W_new, atol=1e-10)
        assert torch.allclose(stacked_fuse(W_old, W_new, b, energy=1.0), W_new, atol=1e-10)
        W, info = stacked_fuse(W_old, W_new, b, energy=0.999, return_info=True)
        assert _rel(W, W_new) < 0.05
        assert info["energy_kept"] >= 0.999


def test_dtype_preserved_and_shape_checks():
    W_old, W_new = _pair(3)
    assert rapf_fuse(W_old, W_new, 0.2).dtype == torch.float32
    assert stacked_fuse(W_old, W_new, 0.2).dtype == torch.float32
    with pytest.raises(ValueError):
        rapf_fuse(W_old, W_new[:, :8], 0.1)
    with pytest.raises(ValueError):
        stacked_fuse(W_old.reshape(-1), W_new.reshape(-1), 0.1)


def test_rapf_very_negative_bias_gives_w_old():
    W_old, W_new = _pair(4, dtype=torch.float64)
    assert torch.allclose(rapf_fuse(W_old, W_new, -10.0), W_old, atol=1e-10)
    # an intermediate bias gives something that is neither
    W = rapf_fuse(W_old, W_new, 0.2)
    assert not torch.allclose(W, W_old, atol=1e-3)
    assert not torch.allclose(W, W_new, atol=1e-3)


def test_stacked_keeps_w_old_outside_shared_subspace():
    d, k = 16, 4
    g = _gen(5)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    # a shared rank-4 part with large singular values ...
    B1 = Q[:, :k] @ (10.0 * torch.randn(k, d, generator=g, dtype=torch.float64))
    B2 = Q[:, :k] @ (10.0 * torch.randn(k, d, generator=g, dtype=torch.float64))
    # ... plus a small full-rank part in W_old only
    E = 0.01 * torch.randn(d, d, generator=g, dtype=torch.float64)
    W_old, W_new = B1 + E, B1 + B2
    for alpha in (0.0, 0.5, 1.0):
        W, info = stacked_fuse(W_old, W_new, alpha, energy=0.999, return_info=True)
        r = info["rank"]
        assert 0 < r < d
        U_r = info["basis"]
        assert U_r.shape == (d, r)
        # recompute U_r independently
        U, s, _ = torch.linalg.svd(torch.cat([W_old, W_new], 1), full_matrices=False)
        ratio = torch.cumsum(s**2, 0) / (s**2).sum()
        assert r == int((ratio < 0.999).sum()) + 1
        P_perp = torch.eye(d, dtype=torch.float64) - U[:, :r] @ U[:, :r].T
        assert torch.allclose(P_perp @ W, P_perp @ W_old, atol=1e-10)
        assert (P_perp @ W_old).norm() > 1e-3  # the identity is not vacuous
    # with r < d, alpha = 1 still lands close to W_new (only the small tail differs)
    W1 = stacked_fuse(W_old, W_new, 1.0, energy=0.999)
    assert 0 < _rel(W1, W_new) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fused_lies_between(seed):
    W_old, W_new = _pair(10 + seed)
    dist = (W_new - W_old).norm()
    for a in (-0.3, 0.0, 0.25, 0.5, 0.9):
        assert (rapf_fuse(W_old, W_new, a) - W_old).norm() <= dist * (1 + 1e-5)
        for e in (0.9, 0.999, 1.0):
            assert (stacked_fuse(W_old, W_new, a, energy=e) - W_old).norm() <= dist * (1 + 1e-5)


def test_fusion_moves_monotonically_with_alpha():
    W_old, W_new = _pair(20, dtype=torch.float64)
    dr = [float((rapf_fuse(W_old, W_new, a) - W_old).norm()) for a in (0.0, 0.3, 0.6, 1.0)]
    ds = [float((stacked_fuse(W_old, W_new, a) - W_old).norm()) for a in (0.0, 0.3, 0.6, 1.0)]
    assert all(x < y for x, y in zip(dr, dr[1:]))
    assert all(x < y for x, y in zip(ds, ds[1:]))


# ---------------------------------------------------------------- MMD


def test_mmd_same_distribution_near_zero():
    g = _gen(30)
    X = torch.randn(300, 8, generator=g)
    Y = torch.randn(300, 8, generator=g)
    assert abs(mmd2(X, Y)) < 0.01


def test_mmd_grows_with_shift_and_is_symmetric():
    g = _gen(31)
    X = torch.randn(300, 8, generator=g)
    Y = torch.randn(300, 8, generator=g)
    vals = [mmd2(X, Y + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals
    assert mmd2(X, Y + 1.0) == pytest.approx(mmd2(Y + 1.0, X), rel=1e-10)


def test_mmd_bandwidth_respected():
    g = _gen(32)
    X = torch.randn(50, 4, generator=g)
    Y = torch.randn(60, 4, generator=g) + 1.0
    a, b = mmd2(X, Y, bandwidth=0.5), mmd2(X, Y, bandwidth=5.0)
    assert a != pytest.approx(b, rel=1e-3)
    # hand-computed reference for sigma = 0.5
    K = lambda A, B: torch.exp(-torch.cdist(A.double(), B.double()) ** 2 / (2 * 0.25))
    Kxx, Kyy = K(X, X), K(Y, Y)
    ref = ((Kxx.sum() - 50) / (50 * 49) + (Kyy.sum() - 60) / (60 * 59)
           - 2 * K(X, Y).mean())
    assert a == pytest.approx(float(ref), rel=1e-9)
    # median heuristic: passing the median explicitly gives the same value
    Z = torch.cat([X, Y]).double()
    Dz = torch.cdist(Z, Z)
    iu = torch.triu_indices(110, 110, 1)
    med = float(Dz[iu[0], iu[1]].median())
    assert mmd2(X, Y) == pytest.approx(mmd2(X, Y, bandwidth=med), rel=1e-12)


def test_mmd_needs_two_samples():
    with pytest.raises(ValueError):
        mmd2(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        mmd2(torch.randn(5, 3), torch.randn(1, 3))


# ---------------------------------------------------------------- LDA


def _classes(sep, n_classes, d=5, n=200, seed=40):
    g = _gen(seed)
    noise = torch.randn(n_classes * n, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n_classes).repeat_interleave(n)
    centers = torch.zeros(n_classes, d, dtype=torch.float64)
    for c in range(n_classes):
        centers[c, c % d] = sep  # pairwise distances sep * sqrt(2) (or sep for 2 classes)
    if n_classes == 2:
        centers[1] = 0.0
        centers[0, 0] = sep
    return noise + centers[labels], labels


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lda_grows_with_separation(n_classes):
    vals = [lda_score(*_classes(s, n_classes)) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals


def test_lda_translation_invariant():
    X, y = _classes(2.0, 3)
    shift = torch.tensor([5.0, -3.0, 100.0, 0.5, 7.0], dtype=torch.float64)
    assert lda_score(X + shift, y) == pytest.approx(lda_score(X, y), rel=1e-9)


def test_lda_hand_example_1d():
    # class 0: {0, 2}, mu_0 = 1; class 1: {4, 6}, mu_1 = 5; mu = 3.
    # S_w = (1 + 1 + 1 + 1) / 4 = 1; S_b = 0.5 * (1-3)^2 + 0.5 * (5-3)^2 = 4.
    # Shrinkage in 1-D: (1 - s) * 1 + s * (1 / 1) = 1, so the score is 4 for any s.
    X = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert lda_score(X, y, shrinkage=0.0) == pytest.approx(4.0, rel=1e-12)
    assert lda_score(X, y) == pytest.approx(4.0, rel=1e-12)
    # unequal classes: {0} and {2, 4}: mu_0 = 0, mu_1 = 3, mu = 2;
    # S_w = (0 + 1 + 1) / 3 = 2/3; S_b = 1/3 * 4 + 2/3 * 1 = 2; score = 3.
    X2 = torch.tensor([[0.0], [2.0], [4.0]])
    assert lda_score(X2, torch.tensor([0, 1, 1]), shrinkage=0.0) == pytest.approx(3.0, rel=1e-12)


def test_lda_needs_two_classes():
    with pytest.raises(ValueError):
        lda_score(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


# ---------------------------------------------------------------- adapted


def test_adapted():
    g = _gen(50)
    X, W = torch.randn(7, 6, generator=g), torch.randn(6, 6, generator=g)
    raw = adapted(X, W, normalize=False)
    assert torch.allclose(raw, X @ W.T)
    out = adapted(X, W)
    assert torch.allclose(out.norm(dim=1), torch.ones(7), atol=1e-6)
    assert torch.allclose(out, raw / raw.norm(dim=1, keepdim=True), atol=1e-6)


# ---------------------------------------------------------------- balance factor search


def _search_setup(seed=61, d=16):
    # W_old squashes the second half of the dimensions, where the new classes
    # differ; W_new keeps them.  Moving towards W_new helps separate the new
    # classes but moves the old-class features, so lda and mmd pull apart.
    g = _gen(seed)
    scale = torch.ones(d)
    scale[d // 2:] = 0.05
    W_old = torch.diag(scale) + 0.05 * torch.randn(d, d, generator=g)
    W_new = torch.eye(d) + 0.05 * torch.randn(d, d, generator=g)
    centers = torch.zeros(6, d)
    centers[:3, : d // 2] = 2.0 * torch.randn(3, d // 2, generator=g)
    centers[3:, d // 2:] = 2.0 * torch.randn(3, d // 2, generator=g)
    y_old = torch.arange(3).repeat_interleave(80)
    y_new = torch.arange(3, 6).repeat_interleave(80)
    X_old = centers[y_old] + torch.randn(240, d, generator=g)
    X_new = centers[y_new] + torch.randn(240, d, generator=g)
    return W_old, W_new, X_old, y_old, X_new, y_new


def test_balance_factor_search_consistency():
    W_old, W_new, Xo, yo, Xn, yn = _search_setup()
    res = balance_factor_search(W_old, W_new, Xo, yo, Xn, yn, lam=2.0, generator=_gen(0))
    grid = res["grid"]
    assert len(grid) == 11 and grid[0] == 0.0 and grid[-1] == pytest.approx(1.0)
    assert res["alpha"] in grid
    i = grid.index(res["alpha"])
    assert res["scores"][i] == max(res["scores"])
    assert all(res["scores"][j] < res["scores"][i] for j in range(i))  # ties -> smallest
    for s, l, m in zip(res["scores"], res["lda"], res["mmd"]):
        assert s == pytest.approx(l - 2.0 * m, abs=1e-12)
    assert torch.equal(res["W"], stacked_fuse(W_old, W_new, res["alpha"], energy=0.999))
    # the fused adapter drifts more from W_old as alpha grows
    assert res["mmd"][-1] > res["mmd"][0]


def test_balance_factor_search_lambda_monotone():
    W_old, W_new, Xo, yo, Xn, yn = _search_setup(seed=61)
    grid = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    chosen, alphas = [], []
    for lam in (0.0, 1.0, 10.0, 100.0, 300.0, 1e6):
        res = balance_factor_search(W_old, W_new, Xo, yo, Xn, yn, lam=lam, grid=grid,
                                    max_samples=150, generator=_gen(1))
        chosen.append(res["mmd"][grid.index(res["alpha"])])
        alphas.append(res["alpha"])
    assert len(set(alphas)) > 1, alphas  # the trade-off actually changes the pick
    assert all(b <= a + 1e-12 for a, b in zip(chosen, chosen[1:])), chosen
    # for a huge lam the pick has (within the guaranteed slack) the smallest MMD
    slack = (max(res["lda"]) - min(res["lda"])) / 1e6
    assert chosen[-1] <= min(res["mmd"]) + slack + 1e-12
    # lam = 0 is pure LDA: the pick maximises LDA
    res0 = balance_factor_search(W_old, W_new, Xo, yo, Xn, yn, lam=0.0, grid=grid,
                                 max_samples=150, generator=_gen(1))
    assert res0["lda"][grid.index(res0["alpha"])] == max(res0["lda"])


def test_balance_factor_search_subsampling_reproducible():
    W_old, W_new, Xo, yo, Xn, yn = _search_setup(seed=62)
    a = balance_factor_search(W_old, W_new, Xo, yo, Xn, yn, max_samples=50, generator=_gen(7))
    b = balance_factor_search(W_old, W_new, Xo, yo, Xn, yn, max_samples=50, generator=_gen(7))
    assert a["scores"] == b["scores"] and a["alpha"] == b["alpha"]
    assert all(math.isfinite(s) for s in a["scores"])
