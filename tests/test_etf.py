"""Tests for pnc_lib.etf: simplex ETF construction, growth modes and ETFHead."""

import math

import pytest
import torch

from pnc_lib.etf import ETFHead, grow_etf, prototype_shift, simplex_etf


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_exact_etf(M, atol=1e-5):
    dim, k = M.shape
    assert M.dtype == torch.float32
    norms = M.double().norm(dim=0)
    torch.testing.assert_close(norms, torch.ones(k, dtype=torch.float64), atol=atol, rtol=0)
    gram = M.double().T @ M.double()
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=atol, rtol=0)


@pytest.mark.parametrize("dim,k", [(2, 2), (3, 3), (5, 3), (10, 10), (64, 10), (512, 100), (100, 100)])
def test_simplex_etf_geometry(dim, k):
    M = simplex_etf(dim, k, generator=gen(0))
    assert M.shape == (dim, k)
    assert_exact_etf(M)
    # Columns of a simplex ETF sum to zero.
    torch.testing.assert_close(M.double().sum(dim=1), torch.zeros(dim, dtype=torch.float64), atol=1e-5, rtol=0)


def test_simplex_etf_dim_too_small():
    with pytest.raises(ValueError, match="feature dim"):
        simplex_etf(4, 5)


def test_simplex_etf_single_class():
    M = simplex_etf(7, 1, generator=gen(0))
    assert M.shape == (7, 1)
    assert abs(float(M.norm()) - 1.0) < 1e-6


def test_simplex_etf_deterministic():
    a = simplex_etf(32, 10, generator=gen(123))
    b = simplex_etf(32, 10, generator=gen(123))
    c = simplex_etf(32, 10, generator=gen(124))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["procrustes", "redraw"])
@pytest.mark.parametrize("dim,k,k_new", [(64, 10, 20), (20, 10, 20), (16, 1, 5), (128, 50, 100)])
def test_grow_etf_returns_exact_etf(mode, dim, k, k_new):
    M = simplex_etf(dim, k, generator=gen(0))
    G = grow_etf(M, k_new, mode=mode, generator=gen(1))
    assert G.shape == (dim, k_new)
    assert_exact_etf(G)


def test_grow_etf_fixed_returns_prefix():
    big = simplex_etf(64, 30, generator=gen(0))
    out = grow_etf(big, 20, mode="fixed")
    assert torch.equal(out, big[:, :20])
    assert torch.equal(grow_etf(big, 30, mode="fixed"), big)
    with pytest.raises(ValueError):
        grow_etf(big, 31, mode="fixed")


def test_grow_etf_errors():
    M = simplex_etf(16, 5, generator=gen(0))
    with pytest.raises(ValueError, match="procrustes"):
        grow_etf(M, 8, mode="rotate")
    for mode in ("procrustes", "redraw"):
        with pytest.raises(ValueError):
            grow_etf(M, 4, mode=mode)


def test_procrustes_same_size_returns_M():
    for seed in range(3):
        M = simplex_etf(32, 10, generator=gen(seed))
        G = grow_etf(M, 10, mode="procrustes", generator=gen(100 + seed))
        torch.testing.assert_close(G, M, atol=1e-5, rtol=0)
        assert prototype_shift(M, G) < 1e-5


@pytest.mark.parametrize("dim,k,k_new", [(64, 10, 20), (512, 50, 100), (100, 10, 100)])
def test_procrustes_moves_old_prototypes_less_than_redraw(dim, k, k_new):
    proc, redraw = [], []
    for seed in range(5):
        M = simplex_etf(dim, k, generator=gen(seed))
        proc.append(prototype_shift(M, grow_etf(M, k_new, "procrustes", generator=gen(1000 + seed))))
        redraw.append(prototype_shift(M, grow_etf(M, k_new, "redraw", generator=gen(1000 + seed))))
    p, r = sum(proc) / len(proc), sum(redraw) / len(redraw)
    print(f"dim={dim} K={k}->{k_new}: mean shift procrustes={p:.4f} redraw={r:.4f}")
    assert p < 0.5 * r


def test_prototype_shift_values():
    M = torch.eye(3)[:, :2]
    assert prototype_shift(M, M) == 0.0
    N = torch.cat([-M, torch.zeros(3, 1)], dim=1)
    assert math.isclose(prototype_shift(M, N), 2.0, rel_tol=1e-6)


def test_head_parameters_and_buffers():
    head = ETFHead(16, 5, generator=gen(0))
    names = {n for n, _ in head.named_parameters()}
    assert names == {"bn.weight", "bn.bias"}
    assert "M" in dict(head.named_buffers())
    assert all(p is not head.M for p in head.parameters())
    assert not head.M.requires_grad
    x = torch.randn(8, 16)
    logits = head(x)
    assert logits.shape == (8, 5)
    logits.sum().backward()
    assert head.bn.weight.grad is not None
    assert head.M.grad is None
    h = head.normalized_features(x)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(head(x), h @ head.etf, atol=1e-6, rtol=0)


def test_head_grow_keeps_state():
    torch.manual_seed(0)
    head = ETFHead(32, 10, generator=gen(0))
    head.train()
    for _ in range(3):
        head(torch.randn(16, 32) * 3 + 1)
    with torch.no_grad():
        head.bn.weight.mul_(2.0)
    bn_state = {k: v.clone() for k, v in head.bn.state_dict().items()}
    old = head.etf.clone()
    shift = head.grow(20)
    assert head.num_classes == 20
    assert head.etf.shape == (32, 20)
    assert_exact_etf(head.etf)
    assert math.isclose(shift, prototype_shift(old, head.etf), rel_tol=1e-6)
    assert shift < 0.5  # procrustes: old prototypes stay close
    for k, v in head.bn.state_dict().items():
        assert torch.equal(v, bn_state[k])
    assert head(torch.randn(4, 32)).shape == (4, 20)
    assert {n for n, _ in head.named_parameters()} == {"bn.weight", "bn.bias"}


def test_head_state_dict_roundtrip_after_growing(tmp_path):
    head = ETFHead(32, 10, generator=gen(0))
    head.train()
    head(torch.randn(16, 32) * 2 + 0.5)
    head.grow(20)
    head.grow(30)
    path = tmp_path / "head.pt"
    torch.save(head.state_dict(), path)

    fresh = ETFHead(32, 10, generator=gen(99))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.num_classes == 30
    assert torch.equal(fresh.M, head.M)
    head.eval()
    fresh.eval()
    x = torch.randn(5, 32)
    torch.testing.assert_close(fresh(x), head(x))
    # It can keep growing after loading.
    fresh.grow(32)
    assert_exact_etf(fresh.etf)


def test_head_fixed_mode():
    head = ETFHead(64, 10, mode="fixed", total_classes=50, generator=gen(5))
    big = simplex_etf(64, 50, generator=gen(5))
    assert head.M.shape == (64, 50)
    assert torch.equal(head.etf, big[:, :10])
    assert head(torch.randn(4, 64)).shape == (4, 10)
    assert head.grow(30) == 0.0
    assert torch.equal(head.etf, big[:, :30])
    with pytest.raises(ValueError):
        head.grow(51)
    with pytest.raises(ValueError, match="total_classes"):
        ETFHead(64, 10, mode="fixed")

    fresh = ETFHead(64, 10, mode="fixed", total_classes=50, generator=gen(6))
    fresh.load_state_dict(head.state_dict())
    assert fresh.num_classes == 30
    assert torch.equal(fresh.etf, big[:, :30])


def test_head_redraw_mode_and_bad_mode():
    head = ETFHead(32, 10, mode="redraw", generator=gen(0))
    shift = head.grow(20)
    assert shift > 1.0  # a fresh draw in 32-D is unrelated to the old prototypes
    assert_exact_etf(head.etf)
    with pytest.raises(ValueError):
        ETFHead(32, 10, mode="nope")
