"""fit_many on xarray DataArrays (data/xarray_input.py, BatchResult.to_xarray), against xarray's own
``DataArray.curvefit`` (scipy.optimize.curve_fit per slice) as the independent reference."""

import sys
import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError, DataError, MissingDependencyError

xr = pytest.importorskip("xarray")
pytest.importorskip("scipy")

T = np.linspace(0.0, 5.0, 25)
P0 = {"a": 2.0, "tau": 1.0}
TIGHT = {"xtol": 1e-14, "ftol": 1e-14, "gtol": 1e-14, "maxfev": 10_000}


def _decay(x, a, tau):
    return a * np.exp(-x / tau)


@pytest.fixture(scope="module")
def cube():
    """(3, 4, 25) noisy decays on dims (row, col, time), with a non-index coordinate on row."""
    rng = np.random.default_rng(7)
    a, tau = rng.uniform(1.0, 3.0, (3, 4)), rng.uniform(0.5, 2.0, (3, 4))
    y = _decay(T, a[..., None], tau[..., None]) + rng.normal(0.0, 0.02, (3, 4, T.size))
    return xr.DataArray(y, dims=("row", "col", "time"), name="signal", attrs={"units": "V"},
                        coords={"row": [10, 20, 30], "col": ["a", "b", "c", "d"], "time": T,
                                "lab": ("row", ["p", "q", "r"])})


def _curvefit(da, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's covariance warnings on the all-NaN slice
        return da.curvefit("time", _decay, kwargs=TIGHT, **kwargs)


def _fit(da, **kwargs):
    kwargs.setdefault("init", dict(P0))
    return gf.fit_many("a*exp(-x/tau)", y=da, dim="time", dtype="float64", tol=1e-12, max_iter=200, **kwargs)


def test_equals_xarray_curvefit_with_dims_and_coords_kept(cube):
    ds = _fit(cube).to_xarray()
    ref = _curvefit(cube, p0=P0)
    for name in ("a", "tau"):
        expected = ref.curvefit_coefficients.sel(param=name)
        assert ds[name].dims == ("row", "col")
        np.testing.assert_allclose(ds[name].values, expected.transpose("row", "col").values, rtol=1e-5)
        # curve_fit scales its covariance by the reduced chi-square, as gradfit's stderr
        se = np.sqrt(ref.curvefit_covariance.sel(cov_i=name, cov_j=name)).transpose("row", "col").values
        np.testing.assert_allclose(ds[f"{name}_stderr"].values, se, rtol=1e-3)
    assert ds["a"].coords["row"].values.tolist() == [10, 20, 30]
    assert ds["a"].coords["col"].values.tolist() == ["a", "b", "c", "d"]
    assert ds["lab"].values.tolist() == ["p", "q", "r"] and "time" not in ds.dims
    assert ds["status"].values.tolist() == [["converged"] * 4] * 3 and bool(ds["converged"].all())
    assert (ds["n"].values == T.size).all() and (ds["dof"].values == T.size - 2).all()
    residual = cube - _decay(cube.time, ds["a"], ds["tau"])
    np.testing.assert_allclose(ds["chisqr"].values, (residual ** 2).sum("time").transpose("row", "col").values,
                               rtol=1e-9)


def test_fit_dimension_need_not_be_last_and_fits_follow_c_order(cube):
    moved = cube.transpose("time", "col", "row")
    r = gf.fit_many("a*exp(-x/tau)", y=moved, dim="time", init=dict(P0), dtype="float64", tol=1e-12,
                    max_iter=200)
    ds = r.to_xarray()
    assert ds["a"].dims == ("col", "row")
    direct = _fit(cube).to_xarray()
    np.testing.assert_allclose(ds["a"].transpose("row", "col").values, direct["a"].values, rtol=1e-10)
    # fit k is position k of the remaining dimensions in C order: (col, row) here
    assert r.params["a"][1] == pytest.approx(float(ds["a"].isel(col=0, row=1)))
    table = r.to_pandas()
    assert table[["col", "row"]].iloc[1].tolist() == ["a", 20]


def test_per_slice_init_and_bounds_as_dataarrays(cube):
    rows = cube.coords["row"]
    p0 = {"a": xr.DataArray([1.5, 2.0, 2.5], dims="row", coords={"row": rows}), "tau": 0.5}
    upper = xr.DataArray([0.6, 5.0, 5.0, 0.7], dims="col", coords={"col": cube.coords["col"]})
    bounds = {"tau": (0.1, upper), "a": (0.0, 10.0)}
    ds = _fit(cube, init=p0, bounds=bounds).to_xarray()
    ref = _curvefit(cube, p0=p0, bounds={"tau": (0.1, upper), "a": (0.0, 10.0)})
    for name in ("a", "tau"):
        expected = ref.curvefit_coefficients.sel(param=name).transpose("row", "col").values
        np.testing.assert_allclose(ds[name].values, expected, rtol=1e-5)
    # the per-column upper bound is active where the free optimum lies beyond it
    free = _fit(cube).to_xarray()["tau"]
    capped = (free > upper).transpose("row", "col").values
    assert capped.any()
    np.testing.assert_allclose(ds["tau"].values[capped],
                               np.broadcast_to(upper.values, (3, 4))[capped], rtol=1e-12)


def test_fixed_dataarray_is_held_per_slice(cube):
    held = xr.DataArray([[1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2, 2.3], [3.0, 3.1, 3.2, 3.3]],
                        dims=("row", "col"), coords={"row": cube.row, "col": cube.col})
    ds = _fit(cube, fixed={"a": held.transpose("col", "row")}).to_xarray()
    assert np.array_equal(ds["a"].values, held.values) and (ds["a_stderr"].values == 0).all()


def test_nan_points_and_an_all_nan_slice(cube):
    da = cube.copy()
    da[0, 1, [2, 5, 11]] = np.nan
    da[2, 3, :] = np.nan
    ds = _fit(da).to_xarray()
    ref = _curvefit(da, p0=P0)
    for name in ("a", "tau"):
        got = ds[name].values.copy()
        expected = ref.curvefit_coefficients.sel(param=name).transpose("row", "col").values
        got[2, 3] = np.nan  # curvefit gives NaN for the empty slice
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert int(ds["n"][0, 1]) == T.size - 3 and int(ds["n"][2, 3]) == 0
    assert str(ds["status"][2, 3].values) == "too_few_points" and not bool(ds["converged"][2, 3])
    assert int(ds["converged"].sum()) == 11


def test_x_from_a_coordinate_spanning_batch_dims():
    scale = np.array([1.0, 2.0])
    rng = np.random.default_rng(1)
    x = T[None, :] * scale[:, None]
    y = _decay(x, 2.0, 1.5)[:, None, :] * np.array([1.0, 0.5])[None, :, None] + rng.normal(0, 0.01, (2, 2, T.size))
    da = xr.DataArray(y, dims=("row", "col", "time"), coords={"stretched": (("row", "time"), x)})
    r = gf.fit_many("a*exp(-x/tau)", y=da, dim="time", x="stretched", init=dict(P0), dtype="float64", tol=1e-12)
    ds = r.to_xarray()
    for i in range(2):
        for j in range(2):
            one = gf.fit_many("a*exp(-x/tau)", x[i], y[i, j][None], init=dict(P0), dtype="float64", tol=1e-12)
            assert float(ds["tau"][i, j]) == pytest.approx(float(one.params["tau"][0]), rel=1e-9)
    assert float(ds["tau"][1, 0]) == pytest.approx(1.5, rel=0.02)
    assert set(ds.coords) == set()  # no index coordinates on row/col, and the fitted one is gone


def test_formula_may_name_the_dimension(cube):
    named = gf.fit_many("a*exp(-time/tau)", y=cube, dim="time", init=dict(P0), dtype="float64", tol=1e-12,
                        max_iter=200)
    np.testing.assert_allclose(named.params["tau"], _fit(cube).params["tau"], rtol=1e-10)


def test_mistakes_say_what_to_do(cube):
    with pytest.raises(DataError, match="no dimension 'tme'.*'time'"):
        gf.fit_many("a*exp(-x/tau)", y=cube, dim="tme", init=P0)
    with pytest.raises(ConfigError, match="dim='time'"):
        gf.fit_many("a*exp(-x/tau)", y=cube, init=P0)
    with pytest.raises(DataError, match="fitted one 'time'"):
        gf.fit_many("a*exp(-x/tau)", y=cube, dim="time", init={"a": cube.isel(row=0), "tau": 1.0})
    with pytest.raises(ConfigError, match="DataArray"):
        gf.fit_many("a*exp(-x/tau)", x=T, y=cube.values.reshape(-1, T.size), dim="time", init=P0)
    with pytest.raises(DataError, match="coordinates differ"):
        gf.fit_many("a*exp(-x/tau)", y=cube, dim="time",
                    init={"a": xr.DataArray([1.0, 2.0, 3.0], dims="row", coords={"row": [1, 2, 3]}), "tau": 1.0})
    dated = cube.assign_coords(time=np.datetime64("2024-01-01") + np.arange(T.size) * np.timedelta64(1, "h"))
    with pytest.raises(DataError, match="dates"):
        gf.fit_many("a*exp(-x/tau)", y=dated, dim="time", init=P0)


def test_without_xarray_a_dataarray_names_the_extra(cube, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(MissingDependencyError, match=r"gradfit\[xarray\]"):
        gf.fit_many("a*exp(-x/tau)", y=cube, dim="time", init=P0)


def test_long_table_result_as_a_dataset_on_its_ids():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"well": ["w2"] * 3 + ["w1"] * 3, "dose": [1.0, 2.0, 3.0] * 2,
                       "signal": [2.0, 4.0, 6.0, 3.0, 6.0, 9.0]})
    ds = gf.fit_many("a*dose", data=df, id="well", x="dose", y="signal", init={"a": 1.0}, dtype="float64",
                     tol=1e-10).to_xarray()
    assert ds["a"].dims == ("well",) and ds["well"].values.tolist() == ["w2", "w1"]
    np.testing.assert_allclose(ds["a"].sel(well="w1"), 3.0, rtol=1e-6)


def test_sigma_as_dataarrays_and_a_one_dimensional_dataarray(cube):
    sigma_t = xr.DataArray(np.linspace(0.01, 0.05, T.size), dims="time", coords={"time": T})
    sigma_full = (sigma_t * xr.ones_like(cube.isel(time=0))).transpose("col", "time", "row")
    flat = cube.values.reshape(-1, T.size)
    reference = gf.fit_many("a*exp(-x/tau)", T, flat, init=dict(P0), dtype="float64", tol=1e-12, max_iter=200,
                            sigma=np.broadcast_to(sigma_t.values, flat.shape))
    for sigma in (sigma_t, sigma_full):
        r = _fit(cube, sigma=sigma)
        np.testing.assert_allclose(r.params["tau"], reference.params["tau"], rtol=1e-10)
        np.testing.assert_allclose(r.stderr["tau"], reference.stderr["tau"], rtol=1e-8)
    one = gf.fit_many("a*exp(-x/tau)", y=cube.isel(row=1, col=2), init=dict(P0), dtype="float64", tol=1e-12,
                      max_iter=200).to_xarray()
    unweighted = _fit(cube).params["tau"][6]  # fit 6: row 1, col 2 in C order
    assert one["tau"].dims == () and float(one["tau"]) == pytest.approx(float(unweighted), rel=1e-10)
    assert int(one["row"]) == 20 and str(one["col"].values) == "c"  # the slice's scalar coordinates stay
