"""fit_many with many parameters (above batch_lm.UNROLL_MAX): the batched LAPACK factorization
agrees with an independent dense solve and with scipy's least_squares."""

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit.optim import batch_lm


def _spd(rng, b, p):
    m = rng.normal(size=(b, p + 3, p))
    return np.einsum("bmi,bmj->bij", m, m)


@pytest.mark.parametrize("p", [5, 13, 30])
def test_damped_solve_matches_numpy_with_fixed_and_held(p):
    rng = np.random.default_rng(p)
    b = 6
    a, g = _spd(rng, b, p), rng.normal(size=(b, p))
    lam = rng.uniform(0.0, 0.5, b)
    free = np.ones(p)
    free[1] = 0.0
    hold = rng.uniform(size=(b, p)) < 0.2
    d, ok = batch_lm.damped_solve(torch.tensor(a), torch.tensor(g), torch.tensor(lam), tuple(free),
                                  torch.tensor(hold))
    assert ok.all()
    for i in range(b):
        act = (free > 0) & ~hold[i]
        m = a[i] + np.diag(lam[i] * np.diag(a[i]))
        want = np.zeros(p)
        want[act] = np.linalg.solve(m[np.ix_(act, act)], -g[i][act])
        np.testing.assert_allclose(d[i].numpy(), want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("p", [5, 30])
def test_inverse_diagonal_and_singular_matrix(p):
    rng = np.random.default_rng(1)
    a = _spd(rng, 3, p)
    a[2, :, 0] = a[2, 0, :] = 0.0  # a parameter the model does not depend on
    free = np.ones(p)
    free[-1] = 0.0
    diag, ok = batch_lm.inverse_diagonal(torch.tensor(a), tuple(free))
    assert ok.tolist() == [True, True, False]
    for i in range(2):
        sub = np.linalg.inv(a[i][:-1, :-1])
        np.testing.assert_allclose(diag[i, :-1].numpy(), np.diag(sub), rtol=1e-8)
        assert diag[i, -1] == 0.0
    d, ok = batch_lm.damped_solve(torch.tensor(a), torch.ones(3, p, dtype=torch.float64),
                                  torch.zeros(3, dtype=torch.float64), tuple(free))
    assert ok.tolist() == [True, True, False] and (d[2] == 0).all()


def _fourier_model(n_harmonics):
    terms = [f"b{j}*cos({j}*x) + c{j}*sin({j}*x)" for j in range(1, n_harmonics + 1)]
    return "a*exp(-k*x) + " + " + ".join(terms)


def test_thirty_parameters_match_scipy():
    scipy_opt = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    h = 14  # 2 + 2*14 = 30 parameters
    formula = _fourier_model(h)
    x = np.linspace(0.0, 2 * np.pi, 90, endpoint=False)
    names = ["a", "k"] + [f"{s}{j}" for j in range(1, h + 1) for s in "bc"]

    def f(theta, xx):
        v = dict(zip(names, theta))
        out = v["a"] * np.exp(-v["k"] * xx)
        for j in range(1, h + 1):
            out = out + v[f"b{j}"] * np.cos(j * xx) + v[f"c{j}"] * np.sin(j * xx)
        return out

    n_fits = 4
    truth = rng.normal(size=(n_fits, len(names))) * 0.3
    truth[:, 0] = rng.uniform(2, 4, n_fits)
    truth[:, 1] = rng.uniform(0.5, 1.5, n_fits)
    y = np.stack([f(t, x) for t in truth]) + rng.normal(scale=0.05, size=(n_fits, x.size))
    init = {n: np.zeros(n_fits) for n in names}
    init["a"], init["k"] = np.ones(n_fits), np.full(n_fits, 0.3)
    r = gf.fit_many(formula, x, y, init=init, dtype="float64", tol=1e-10, max_iter=100)
    assert r.converged.all(), r.status
    for i in range(n_fits):
        t0 = np.array([init[n][i] for n in names])
        ref = scipy_opt.least_squares(lambda t: f(t, x) - y[i], t0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
        got = np.array([r.params[n][i] for n in names])
        np.testing.assert_allclose(got, ref.x, rtol=1e-6, atol=1e-8)
        jac = ref.jac
        dof = x.size - len(names)
        cov = np.linalg.inv(jac.T @ jac) * (2 * ref.cost) / dof
        se = np.array([r.stderr[n][i] for n in names])
        np.testing.assert_allclose(se, np.sqrt(np.diag(cov)), rtol=1e-5)


@pytest.mark.parametrize("p", [3, 14])  # the unrolled Cholesky and batched LAPACK
def test_damped_solve_takes_several_right_hand_sides_with_one_factorization(p):
    from gradfit.optim.batch_solve import damped_solve

    rng = np.random.default_rng(p)
    jac = rng.normal(size=(5, 3 * p, p))
    a = np.einsum("bmi,bmj->bij", jac, jac)
    g = rng.normal(size=(5, p, 2))
    lam = rng.uniform(0.0, 1.0, 5)
    free = [1.0] * p
    free[1] = 0.0
    hold = np.zeros((5, p), dtype=bool)
    hold[2, 0] = True
    d, ok = damped_solve(torch.tensor(a), torch.tensor(g), torch.tensor(lam), tuple(free), torch.tensor(hold))
    assert ok.all()
    for b in range(5):
        active = [i for i in range(p) if free[i] and not hold[b, i]]
        m = a[b][np.ix_(active, active)] + np.diag(lam[b] * np.diag(a[b])[active])
        expected = np.zeros((p, 2))
        expected[active] = np.linalg.solve(m, -g[b][active])
        np.testing.assert_allclose(d[b].numpy(), expected, rtol=1e-9, atol=1e-12)
        # each column equals the one-right-side solve
        for k in range(2):
            one, _ = damped_solve(torch.tensor(a[b:b + 1]), torch.tensor(g[b:b + 1, :, k]),
                                  torch.tensor(lam[b:b + 1]), tuple(free), torch.tensor(hold[b:b + 1]))
            np.testing.assert_allclose(one[0].numpy(), d[b, :, k].numpy(), rtol=1e-12, atol=1e-14)
