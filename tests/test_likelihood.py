"""The Poisson kernels of gradfit.likelihood against scipy.stats and finite differences."""

import numpy as np
import pytest
import torch

from gradfit.likelihood import (aic_bic, batch_poisson_deviance, deviance_residuals, fisher_weights,
                                poisson_deviance, poisson_deviance_terms, poisson_log_likelihood)

stats = pytest.importorskip("scipy.stats")

RNG = np.random.default_rng(3)
Y = np.concatenate([[0, 0, 1, 2], RNG.poisson(7.0, 20), [150, 1000]]).astype(float)
MU = np.concatenate([[0.3, 2.0, 1.0, 1.5], RNG.uniform(3.0, 12.0, 20), [140.0, 1000.0 + 1e-9]])


def test_deviance_is_twice_the_log_likelihood_gap_to_the_saturated_model():
    saturated = np.where(Y > 0, stats.poisson.logpmf(Y, np.where(Y > 0, Y, 1.0)), 0.0)
    expected = 2.0 * (saturated - stats.poisson.logpmf(Y, MU))
    np.testing.assert_allclose(poisson_deviance_terms(Y, MU), expected, rtol=1e-9, atol=1e-12)
    assert poisson_deviance(Y, MU) == pytest.approx(expected.sum(), rel=1e-12)


def test_the_deviance_keeps_its_digits_where_the_mean_is_the_count():
    # 2 y (t - log1p t) ~ y t^2 for t = (mu - y)/y small: no cancellation to zero
    y, mu = np.array([1e6]), np.array([1e6 * (1 + 1e-7)])
    assert poisson_deviance_terms(y, mu)[0] == pytest.approx(1e6 * 1e-14, rel=1e-6)


def test_non_positive_means_have_no_likelihood():
    terms = poisson_deviance_terms(np.array([0.0, 3.0, 3.0]), np.array([-1.0, 0.0, np.nan]))
    assert np.isinf(terms).all()
    assert poisson_log_likelihood(np.array([1.0, 2.0]), np.array([1.0, -0.5])) == -np.inf
    # ... except at points that carry no weight
    assert np.isfinite(poisson_deviance(np.array([1.0, 2.0]), np.array([1.0, -0.5]), np.array([1.0, 0.0])))


def test_deviance_residuals_square_to_the_deviance_and_have_the_exact_derivative():
    w = RNG.uniform(0.5, 2.0, Y.size)
    d, factor = deviance_residuals(Y, MU, w)
    assert (d**2).sum() == pytest.approx(poisson_deviance(Y, MU, w), rel=1e-12)
    h = 1e-6 * MU
    numeric = (deviance_residuals(Y, MU + h, w)[0] - deviance_residuals(Y, MU - h, w)[0]) / (2 * h)
    np.testing.assert_allclose(factor, numeric, rtol=1e-5)
    # d d/d mu at mu = y is its limit sqrt(w/mu)
    d0, f0 = deviance_residuals(np.array([4.0]), np.array([4.0]), np.array([2.0]))
    assert d0[0] == 0.0 and f0[0] == pytest.approx(np.sqrt(2.0 / 4.0), rel=1e-15)


def test_log_likelihood_aic_bic_and_fisher_weights():
    w = np.ones_like(Y)
    w[3] = 0.0
    ll = poisson_log_likelihood(Y, MU, w)
    assert ll == pytest.approx((stats.poisson.logpmf(Y, MU) * w).sum(), rel=1e-12)
    aic, bic = aic_bic(ll, 3, Y.size - 1)
    assert aic == pytest.approx(6 - 2 * ll) and bic == pytest.approx(3 * np.log(Y.size - 1) - 2 * ll)
    np.testing.assert_allclose(fisher_weights(MU, w), w / MU)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_batch_kernel_matches_the_numpy_one(dtype):
    y = np.stack([Y, Y[::-1]])
    mu = np.stack([MU, MU[::-1]])
    w = np.ones_like(y)
    w[1, 0] = 0.0
    mu[1, 0] = -3.0  # masked: ignored
    dev, fw = batch_poisson_deviance(torch.as_tensor(y, dtype=dtype), torch.as_tensor(mu, dtype=dtype),
                                     torch.as_tensor(w, dtype=dtype))
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(dev.double().numpy(), [poisson_deviance(y[i], mu[i], w[i]) for i in range(2)],
                               rtol=rtol)
    assert fw[1, 0] == 0 and torch.all(fw[0] > 0)
    mu[0, 5] = 0.0  # a used point with a zero mean: no likelihood for that fit only
    dev, _ = batch_poisson_deviance(torch.as_tensor(y), torch.as_tensor(mu), torch.as_tensor(w))
    assert torch.isinf(dev[0]) and torch.isfinite(dev[1])
