"""GradfitWarnings point at the user's own line, whatever the call path inside gradfit."""

import inspect
import warnings

import numpy as np

import gradfit as gf
from gradfit.errors import GradfitWarning, warn_user


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    found = [w for w in caught if issubclass(w.category, GradfitWarning)]
    assert found, "expected a GradfitWarning"
    return found[0]


def test_rank_deficient_warning_names_the_callers_line():
    x = np.linspace(0, 1, 10)
    w = _caught(lambda: gf.fit("y ~ a*b*x", x=x, y=2 * x))
    line = inspect.currentframe().f_lineno - 1
    assert w.filename == __file__
    assert w.lineno == line


def test_overfitting_warning_names_the_callers_line():
    d = gf.thermometer()
    w = _caught(lambda: gf.fit("mlp", x="t_u", y="t_c", data=d, hidden=(16,), normalize=True,
                                     optimizer="adam", lr=3e-2, epochs=600, val_fraction=0.3, seed=1))
    assert w.filename == __file__
    assert "overfitting" in str(w.message)


def test_warn_user_from_outside_the_package_points_at_its_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_user("look here")
        line = inspect.currentframe().f_lineno - 1
    assert caught[0].filename == __file__ and caught[0].lineno == line
