"""gradfit.sklearn: CurveRegressor and NetRegressor as scikit-learn estimators.

scikit-learn's own estimator checks run over both (parametrize_with_checks); the other tests
compare with independent references (sklearn's LinearRegression and r2_score, scipy's
curve_fit) and with gf.fit on the same data."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import gradfit as gf  # noqa: E402
from gradfit.sklearn import CurveRegressor, NetRegressor, formula_inputs, linear_formula  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

RNG = np.random.default_rng(7)
T = np.linspace(0.0, 4.0, 40)
DECAY = 2.0 * np.exp(-1.3 * T) + 0.4 + RNG.normal(0.0, 0.02, T.size)
EXPR = "a*exp(-k*x) + c"

# NetRegressor under the checks: a small network trained briefly, in its default float64
# (check_sample_weight_equivalence_on_dense_data compares weighted with repeated samples at
# rtol=1e-7; float32 rounding (summation order differs) cannot meet that, float64 does).
_CHECKED = [CurveRegressor(), NetRegressor(hidden=(16,), lr=1e-2, epochs=100, device="cpu")]

#: the only expected failure, per estimator, and why
EXPECTED_FAILURES = {
    "CurveRegressor": {
        # The check fits 15 samples with 30 features: the default linear model then has 31
        # parameters for at most 27 (repeated) points. A least-squares fit with fewer points
        # than parameters has no unique solution and no standard errors; gradfit refuses it
        # with a DataError ("add data or fix parameters") instead of returning one of
        # infinitely many solutions (LinearRegression's minimum-norm one).
        "check_sample_weight_equivalence_on_dense_data":
            "underdetermined: 31 parameters, 15 samples; gradfit refuses fits with fewer points than parameters",
    },
    "NetRegressor": {},
}


def _expected(estimator):
    return EXPECTED_FAILURES[type(estimator).__name__]


@parametrize_with_checks(_CHECKED, expected_failed_checks=_expected, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_the_weighted_check_does_fail_for_the_reason_given():
    """The one expected failure is the refusal of an underdetermined fit (the repeated rows,
    fitted first: 27 points for 31 parameters), not anything else."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    with pytest.raises(ValueError, match=r"^27 training points cannot determine 31 parameters"):
        check_sample_weight_equivalence_on_dense_data("CurveRegressor", CurveRegressor())


# -- CurveRegressor --------------------------------------------------------------------------------
def test_curve_regressor_equals_gf_fit_and_scipy():
    from scipy.optimize import curve_fit

    est = CurveRegressor(EXPR).fit(T.reshape(-1, 1), DECAY)
    r = gf.fit(EXPR, T, DECAY)
    assert est.params_ == pytest.approx(r.params, rel=1e-12)
    assert est.stderr_ == pytest.approx(r.stderr, rel=1e-9)
    assert est.result_.status == "converged" and est.n_features_in_ == 1 and est.inputs_ == ("x",)
    popt, pcov = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, T, DECAY, p0=[1, 1, 0], xtol=1e-14,
                           ftol=1e-14)
    assert [est.params_[n] for n in "akc"] == pytest.approx(popt, rel=1e-7)
    assert [est.stderr_[n] for n in "akc"] == pytest.approx(np.sqrt(np.diag(pcov)), rel=1e-5)
    np.testing.assert_allclose(est.predict(T[:5, None]), popt[0] * np.exp(-popt[1] * T[:5]) + popt[2], rtol=1e-7)


def test_default_model_is_ordinary_least_squares_over_every_column():
    X = RNG.normal(size=(50, 3))
    y = X @ [1.5, -2.0, 0.5] + 3.0 + RNG.normal(0, 0.1, 50)
    est = CurveRegressor().fit(X, y)
    ols = LinearRegression().fit(X, y)
    assert est.result_.model.text == linear_formula(3) == "y ~ b0 + b1*x0 + b2*x1 + b3*x2"
    assert est.params_["b0"] == pytest.approx(ols.intercept_, rel=1e-10)
    assert [est.params_[f"b{i}"] for i in (1, 2, 3)] == pytest.approx(ols.coef_, rel=1e-10)
    np.testing.assert_allclose(est.predict(X), ols.predict(X), rtol=1e-10)
    assert est.result_.method == "linear" and est.n_iter_ == 1


def test_score_is_r2():
    est = CurveRegressor(EXPR).fit(T.reshape(-1, 1), DECAY)
    y = DECAY + 0.05 * np.cos(7 * T)
    assert est.score(T.reshape(-1, 1), y) == pytest.approx(r2_score(y, est.predict(T.reshape(-1, 1))), rel=1e-12)
    assert 0.9 < est.score(T.reshape(-1, 1), y) < 1.0


def test_sample_weight_is_gf_fit_weights():
    w = RNG.uniform(0.2, 3.0, T.size)
    est = CurveRegressor(EXPR).fit(T.reshape(-1, 1), DECAY, sample_weight=w)
    r = gf.fit(EXPR, T, DECAY, weights=w)
    assert est.params_ == pytest.approx(r.params, rel=1e-12) and est.stderr_ == pytest.approx(r.stderr, rel=1e-9)
    assert est.params_ != pytest.approx(CurveRegressor(EXPR).fit(T.reshape(-1, 1), DECAY).params_, rel=1e-6)
    # an integer weight is a repeated point (the same minimum; to LM's stopping tolerance)
    k = RNG.integers(1, 4, T.size)
    rep = CurveRegressor(EXPR).fit(np.repeat(T, k).reshape(-1, 1), np.repeat(DECAY, k))
    assert CurveRegressor(EXPR).fit(T.reshape(-1, 1), DECAY, sample_weight=k).params_ == pytest.approx(rep.params_,
                                                                                                        rel=1e-7)


def test_dataframe_columns_bind_the_formula_by_name():
    pd = pytest.importorskip("pandas")
    dose = RNG.uniform(0, 1, T.size)
    y = 2.0 * np.exp(-1.3 * T) + 0.7 * dose
    df = pd.DataFrame({"dose": dose, "t": T})  # not the formula's order
    est = CurveRegressor("a*exp(-k*t) + b*dose").fit(df, y)
    assert list(est.feature_names_in_) == ["dose", "t"] and est.inputs_ == ("dose", "t")
    assert est.params_ == pytest.approx({"a": 2.0, "k": 1.3, "b": 0.7}, rel=1e-8)
    np.testing.assert_allclose(est.predict(df), y, atol=1e-9)
    with pytest.raises(ValueError, match="feature names"):  # sklearn's own check of the columns
        est.predict(df[["t", "dose"]])
    # names the formula lacks: the positional names, and a message saying how to bind them
    with pytest.raises(ValueError, match=r"inputs=\(names in column order\)"):
        CurveRegressor("a*exp(-k*t) + b*dose").fit(df.rename(columns={"t": "time"}), y)


def test_several_positional_columns_and_explicit_inputs():
    X = np.c_[T, T ** 2]
    y = 1.0 + 0.5 * T - 0.25 * T ** 2
    est = CurveRegressor("c + a*x1 + b*x2", inputs=("x1", "x2")).fit(X, y)
    assert est.params_ == pytest.approx({"c": 1.0, "a": 0.5, "b": -0.25}, abs=1e-10)
    # x<number> names are positional, ordered by number whatever their order in the text
    assert formula_inputs("b*x2 + a*x1 + c", 2) == ("x1", "x2")
    assert CurveRegressor("b*x2 + a*x1 + c").fit(X, y).params_ == pytest.approx(est.params_, abs=1e-10)
    with pytest.raises(ValueError, match="must name 2 input"):
        CurveRegressor("c + a*u + b*v", inputs=("u",)).fit(X, y)


def test_builtin_curve_and_function_models():
    est = CurveRegressor("exp_decay").fit(T.reshape(-1, 1), DECAY)
    assert est.params_ == pytest.approx(gf.fit("exp_decay", T, DECAY).params, rel=1e-10)
    with pytest.raises(ValueError, match="takes one input column"):
        CurveRegressor("exp_decay").fit(np.c_[T, T], DECAY)
    with pytest.raises(ValueError, match="NetRegressor"):
        CurveRegressor("mlp").fit(T.reshape(-1, 1), DECAY)

    import torch

    def plane(x, a, b):
        return a * x[:, 0] + b * torch.sin(x[:, 1])

    X = np.c_[T, T / 2]
    y = 0.3 * T + 2.0 * np.sin(T / 2)
    assert CurveRegressor(plane).fit(X, y).params_ == pytest.approx({"a": 0.3, "b": 2.0}, abs=1e-9)


def test_errors_are_value_errors_raised_in_fit_not_init():
    est = CurveRegressor("a*exp(-k*x) +", loss="nope")  # stored, not checked
    assert est.get_params()["loss"] == "nope"
    with pytest.raises(ValueError):
        est.fit(T.reshape(-1, 1), DECAY)
    with pytest.raises(ValueError, match="loss"):
        CurveRegressor(EXPR, loss="nope").fit(T.reshape(-1, 1), DECAY)
    with pytest.raises(ValueError, match="NaN"):
        CurveRegressor(EXPR).fit(np.r_[T[:-1], np.nan].reshape(-1, 1), DECAY)
    # a transformed response would predict log(y) where score compares with y
    with pytest.raises(ValueError, match="TransformedTargetRegressor"):
        CurveRegressor("log(y) ~ b - k*x").fit(T.reshape(-1, 1), DECAY)


def test_transformed_target_regressor_is_the_way_to_fit_log_y():
    from sklearn.compose import TransformedTargetRegressor

    y = 3.0 * np.exp(-0.7 * T)
    est = TransformedTargetRegressor(CurveRegressor("b - k*x"), func=np.log, inverse_func=np.exp)
    est.fit(T.reshape(-1, 1), y)
    assert est.regressor_.params_ == pytest.approx({"b": np.log(3.0), "k": 0.7}, rel=1e-10)
    np.testing.assert_allclose(est.predict(T.reshape(-1, 1)), y, rtol=1e-10)


# -- both ------------------------------------------------------------------------------------------
def test_clone_and_get_params_round_trip():
    est = CurveRegressor(EXPR, init={"k": 2.0}, bounds={"k": (0, None)}, fixed=["c"], starts=4, seed=3)
    params = est.get_params()
    assert params["init"] == {"k": 2.0} and params["fixed"] == ["c"] and params["starts"] == 4
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert CurveRegressor().set_params(**params).get_params() == params
    net = NetRegressor(hidden=(8, 4), penalty={"l2": 1e-4}, epochs=5)
    assert clone(net).get_params() == net.get_params() and net.get_params()["hidden"] == (8, 4)


def test_pickle_round_trip_predicts_the_same():
    est = CurveRegressor(EXPR).fit(T.reshape(-1, 1), DECAY)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.predict(T.reshape(-1, 1)), est.predict(T.reshape(-1, 1)))
    assert back.params_ == est.params_ and back.result_.model.text == EXPR
    X = RNG.normal(size=(40, 2))
    net = NetRegressor(hidden=(8,), epochs=20, device="cpu").fit(X, X[:, 0] - X[:, 1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(net)).predict(X), net.predict(X))
    # a FitResult pickles on its own: its formula model is rebuilt from text and inputs, also
    # when a named constant is an input (a column called e)
    r = gf.fit("y ~ a*x + e", x={"x": T, "e": np.cos(T)}, y=0.5 * T + np.cos(T))
    back = pickle.loads(pickle.dumps(r))
    assert back.model.input_names == ("x", "e") and back.params == r.params
    np.testing.assert_array_equal(back.predict({"x": T, "e": np.cos(T)}), r.predict({"x": T, "e": np.cos(T)}))


def test_pipeline_grid_search_selects_the_true_model():
    X = RNG.normal(size=(60, 2))
    y = 1.0 + 2.0 * X[:, 0] - X[:, 1] ** 2 + RNG.normal(0, 0.05, 60)
    pipe = make_pipeline(StandardScaler(), CurveRegressor())
    grid = {"curveregressor__model": [None, "y ~ b0 + b1*x0 + b2*x1 + b3*x1**2"]}
    search = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert search.best_params_["curveregressor__model"] == grid["curveregressor__model"][1]
    assert search.best_score_ > 0.99 and search.cv_results_["mean_test_score"][0] < 0.9


def test_grid_search_over_init_escapes_a_local_minimum():
    x = np.sort(RNG.uniform(0, 6, 80))
    y = 2 * np.sin(5 * x) + RNG.normal(0, 0.1, 80)
    grid = {"init": [{"a": 1.0, "w": 1.0}, {"a": 1.0, "w": 5.2}]}
    search = GridSearchCV(CurveRegressor("a*sin(w*x)"), grid, cv=3).fit(x.reshape(-1, 1), y)
    assert search.best_params_["init"] == {"a": 1.0, "w": 5.2}
    assert search.best_estimator_.params_["w"] == pytest.approx(5.0, abs=0.01)


def test_net_regressor_is_gf_fit_mlp():
    X = RNG.uniform(-1, 1, (60, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1]
    net = NetRegressor(hidden=(16,), epochs=50, seed=4, device="cpu").fit(X, y)
    r = gf.fit("mlp", X, y, hidden=(16,), epochs=50, seed=4, normalize=True, device="cpu", dtype="float64")
    np.testing.assert_array_equal(net.predict(X), r.predict(X))
    assert net.predict(X).shape == (60,) and net.n_iter_ == 50 and net.n_outputs_ == 1


def test_net_regressor_multi_output_and_sample_weight():
    X = RNG.uniform(-1, 1, (80, 2))
    Y = np.c_[X[:, 0] + X[:, 1], X[:, 0] - 2 * X[:, 1]]
    net = NetRegressor(hidden=(16,), epochs=300, device="cpu").fit(X, Y)
    assert net.predict(X).shape == (80, 2) and net.n_outputs_ == 2
    assert net.score(X, Y) == pytest.approx(r2_score(Y, net.predict(X)), rel=1e-12) and net.score(X, Y) > 0.99
    # a column-vector y trains the same network as the 1-D y (was a (n, n) broadcast in the loss)
    one = NetRegressor(hidden=(8,), epochs=30, device="cpu", dtype="float64")
    np.testing.assert_allclose(clone(one).fit(X, Y[:, :1]).predict(X)[:, 0], one.fit(X, Y[:, 0]).predict(X),
                               rtol=1e-10)
    # integer weights = repeated rows, normalization statistics included (float64: exact up to rounding)
    k = RNG.integers(0, 3, 80)
    weighted = clone(one).fit(X, Y[:, 0], sample_weight=k).predict(X)
    repeated = clone(one).fit(np.repeat(X, k, axis=0), np.repeat(Y[:, 0], k)).predict(X)
    np.testing.assert_allclose(weighted, repeated, rtol=1e-9, atol=1e-12)


# -- the optional dependency -----------------------------------------------------------------------
def test_import_gradfit_does_not_load_sklearn():
    code = "import sys, gradfit; gradfit.fit; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_sklearn_names_the_extra(monkeypatch):
    from gradfit import MissingDependencyError

    monkeypatch.delitem(sys.modules, "gradfit.sklearn")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError, match=r'^gradfit.sklearn needs scikit-learn: pip install '
                                                     r'"gradfit\[sklearn\]"$'):
        importlib.import_module("gradfit.sklearn")
