"""rd3fast.data.zca against a numpy reference of kornia's ZCAWhitening (mean, unbiased covariance, eigh,
U diag((S + eps)^-1/2) U^T). CPU only, small shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rd3fast.data.zca import MAX_FEATURES, ZCA
from rd3fast.errors import RD3Error


def images(n: int = 300, shape=(3, 4, 5), seed: int = 0) -> torch.Tensor:
    """Correlated data with a spread of eigenvalues (some well below eps, some well above)."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(-2, 0.5, d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.T + torch.randn(d, generator=g, dtype=torch.float64)
    return x.float().reshape(n, *shape)


def reference(x: torch.Tensor, eps: float):
    """numpy: mean, T = U diag(1/sqrt(S+eps)) U^T, T_inv, and (S, U) of np.cov(ddof=1)."""
    flat = x.reshape(len(x), -1).double().numpy()
    mean = flat.mean(axis=0)
    cov = np.cov(flat, rowvar=False, ddof=1)
    s, u = np.linalg.eigh(cov)
    s = np.clip(s, 0, None)
    t = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
    t_inv = u @ np.diag(np.sqrt(s + eps)) @ u.T
    return mean, t, t_inv, s, u


@pytest.mark.parametrize("eps", [0.1, 1e-3])
def test_fit_matches_numpy_eigh(eps):
    x = images()
    z = ZCA.fit(x, eps=eps)
    mean, t, t_inv, _, _ = reference(x, eps)
    assert z.mean.dtype == z.matrix.dtype == z.inverse_matrix.dtype == torch.float32
    assert z.image_shape == (3, 4, 5) and z.eps == eps
    # float32 storage of float64 results: relative 1e-6 of the largest entry.
    np.testing.assert_allclose(z.mean.numpy(), mean, rtol=0, atol=1e-6 * np.abs(mean).max())
    np.testing.assert_allclose(z.matrix.numpy(), t, rtol=0, atol=1e-5 * np.abs(t).max())
    np.testing.assert_allclose(z.inverse_matrix.numpy(), t_inv, rtol=0, atol=1e-5 * np.abs(t_inv).max())


def test_transform_and_inverse_match_numpy():
    x = images()
    z = ZCA.fit(x, eps=0.1)
    mean, t, t_inv, _, _ = reference(x, 0.1)
    flat = x.reshape(len(x), -1).double().numpy()
    white = (flat - mean) @ t
    out = z(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    # float32 matmul over D = 60 terms: 1e-4 of the output's scale.
    np.testing.assert_allclose(out.reshape(len(x), -1).numpy(), white, rtol=0, atol=1e-4 * np.abs(white).max())
    back = white @ t_inv + mean
    np.testing.assert_allclose(z.inverse(out).reshape(len(x), -1).numpy(), back, rtol=0,
                               atol=1e-4 * np.abs(back).max())


def test_whitened_covariance_is_s_over_s_plus_eps_per_eigendirection():
    x = images(n=2000)
    eps = 0.1
    z = ZCA.fit(x, eps=eps)
    _, _, _, s, u = reference(x, eps)
    w = z(x).reshape(len(x), -1).double().numpy()
    cov_w = np.cov(w, rowvar=False, ddof=1)
    # T Sigma T = U diag(S / (S + eps)) U^T exactly: in U's basis the covariance is diagonal.
    in_basis = u.T @ cov_w @ u
    np.testing.assert_allclose(np.diag(in_basis), s / (s + eps), rtol=0, atol=1e-4)
    np.testing.assert_allclose(in_basis - np.diag(np.diag(in_basis)), 0, atol=1e-4)
    big = s > 100 * eps  # large eigenvalues: whitened to ~1
    assert big.sum() >= 10
    assert np.all(np.abs(np.diag(in_basis)[big] - 1) < 0.011)
    assert np.abs(w.mean(axis=0)).max() < 1e-4


def test_chunked_fit_equals_one_chunk():
    x = images(n=257)
    one = ZCA.fit(x, chunk=10_000)
    for chunk in (1, 16, 100):
        part = ZCA.fit(x, chunk=chunk)
        # float64 accumulation in another order: equal to float32 storage precision.
        torch.testing.assert_close(part.mean, one.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(part.matrix, one.matrix, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(part.inverse_matrix, one.inverse_matrix, rtol=1e-5, atol=1e-6)


def test_inverse_of_whiten_is_identity():
    x = images()
    z = ZCA.fit(x, eps=0.1)
    torch.testing.assert_close(z.inverse(z(x)), x, rtol=0, atol=1e-4 * float(x.abs().max()))
    y = images(n=7, seed=3)  # other images of the same shape (the test split)
    torch.testing.assert_close(z.inverse(z(y)), y, rtol=0, atol=1e-4 * float(y.abs().max()))


def test_call_is_chunk_independent_and_per_sample():
    x = images(n=50)
    z = ZCA.fit(x)
    full = z(x)
    # BLAS may block a 7-row product differently from a 50-row one: float32 rounding only.
    tol = 1e-5 * float(full.abs().max())
    torch.testing.assert_close(z(x, chunk=7), full, rtol=0, atol=tol)
    torch.testing.assert_close(z(x[3:4]), full[3:4], rtol=0, atol=tol)


def test_to_moves_everything():
    z = ZCA.fit(images(n=20)).to("cpu")
    assert {t.device.type for t in (z.mean, z.matrix, z.inverse_matrix)} == {"cpu"}
    assert z.image_shape == (3, 4, 5)


def test_size_guard_and_shape_errors():
    assert MAX_FEATURES == 3 * 64 * 64
    ZCA.fit(torch.zeros(2, 1, 2, 2) + torch.arange(2.0).view(2, 1, 1, 1))  # tiny is fine
    with pytest.raises(RD3Error, match="64 px"):
        ZCA.fit(torch.zeros(2, 3, 64, 65))  # before anything is allocated
    with pytest.raises(RD3Error, match="at least 2"):
        ZCA.fit(torch.zeros(1, 1, 2, 2))
    with pytest.raises(RD3Error, match="float"):
        ZCA.fit(torch.zeros(4, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(RD3Error, match="eps"):
        ZCA.fit(torch.rand(4, 1, 2, 2), eps=0.0)
    z = ZCA.fit(images(n=20))
    with pytest.raises(RD3Error, match=r"3 x 4 x 5.*2 x 3 x 5 x 4"):
        z(torch.zeros(2, 3, 5, 4))
    with pytest.raises(RD3Error, match="3 x 4 x 5"):
        z.inverse(torch.zeros(60))


def test_constant_images_do_not_blow_up():
    # Zero covariance: every eigenvalue is 0 (clamped, never negative), whitening is x - mean scaled by eps^-1/2.
    x = torch.full((5, 1, 2, 3), 0.25)
    z = ZCA.fit(x, eps=0.1)
    assert torch.isfinite(z.matrix).all()
    torch.testing.assert_close(z.matrix, torch.eye(6) / 0.1 ** 0.5, rtol=1e-6, atol=1e-6)
    assert torch.equal(z(x), torch.zeros_like(x))


def test_fit_pixels_is_cached_by_content(tmp_path, monkeypatch):
    """The second fit of the same pixels comes from the cache (equal, no refit); other pixels or another eps
    are another entry; a damaged entry is refitted, not trusted."""
    from rd3fast.data import zca as zca_mod

    monkeypatch.setenv("RD3FAST_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 4, 4), generator=g, dtype=torch.uint8)
    first = zca_mod.fit_pixels(images, eps=0.1)
    direct = ZCA.fit(images.float() / 255, eps=0.1)
    assert torch.allclose(first.matrix, direct.matrix) and first.image_shape == (1, 4, 4)
    [entry] = list((tmp_path / "zca").glob("*.pt"))

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted although cached")

    monkeypatch.setattr(zca_mod.ZCA, "fit", no_fit)
    again = zca_mod.fit_pixels(images, eps=0.1)
    assert torch.equal(again.matrix, first.matrix) and torch.equal(again.mean, first.mean)
    monkeypatch.undo()
    monkeypatch.setenv("RD3FAST_CACHE", str(tmp_path))
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    zca_mod.fit_pixels(other, eps=0.1)
    zca_mod.fit_pixels(images, eps=0.2)
    assert len(list((tmp_path / "zca").glob("*.pt"))) == 3
    entry.write_bytes(b"not a checkpoint")
    refit = zca_mod.fit_pixels(images, eps=0.1)
    assert torch.allclose(refit.matrix, first.matrix)
