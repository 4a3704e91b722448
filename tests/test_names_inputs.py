"""Which names in a model are inputs and which are parameters (issue 11, 2.3, 2.6 and 13).

Rules (FormulaModel's docstring):
* a name that is a data column (or a key of x={...}) is an input, even one named like a
  parameter, and the result says so (a note; init/bounds/fixed/tie naming it are refused);
* ``pi`` is the number pi unless a column is called ``pi``; a bare ``e`` is the column ``e``
  when there is one and a FormulaError otherwise (Euler's number is written exp(1));
* built-in curves bind any column name (``"Time (s)"``) without parsing it.
Right values: the data are built from known parameters, so the answers are analytic.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError, FormulaError
from gradfit.errors import GradfitWarning
from gradfit.models import builtin_model
from gradfit.models.formula import FormulaModel

X = np.linspace(0.0, 3.0, 30)
COL = np.cos(2 * X)  # a data column that is not a function of the other inputs


# -- e and pi --------------------------------------------------------------------------------
@pytest.mark.parametrize("formula", ["y ~ a*exp(-b*x) + c*sin(d*x) + e", "y ~ a*x + e", "y ~ e**(-k*x)",
                                     "y ~ a*x + e*x**2"])
def test_bare_e_without_a_column_is_refused_with_the_fix(formula):
    with pytest.raises(FormulaError, match=r"ambiguous.*exp\(1\)"):
        gf.fit(formula, data={"x": X, "y": X})


@pytest.mark.parametrize("name", ["e", "pi"])
def test_a_column_named_e_or_pi_is_an_input(name):
    y = 2 * X + 3 * COL
    for kw in ({"data": {"x": X, name: COL, "y": y}}, {"x": {"x": X, name: COL}, "y": y}):
        r = gf.fit(f"y ~ a*x + b*{name}", **kw)
        assert r.model.input_names == ("x", name) and r.model.param_names == ("a", "b")
        assert r.params["a"] == pytest.approx(2, abs=1e-9) and r.params["b"] == pytest.approx(3, abs=1e-9)


def test_pi_without_a_column_is_the_number():
    y = 1.5 * np.sin(2 * math.pi * X) + 0.5
    r = gf.fit("y ~ a*sin(2*pi*x) + c", x=X, y=y)
    assert r.params["a"] == pytest.approx(1.5, abs=1e-9) and r.params["c"] == pytest.approx(0.5, abs=1e-9)
    assert gf.fit("y ~ a*x + exp(1)", x=X, y=2 * X + math.e).params["a"] == pytest.approx(2, abs=1e-9)


def test_e_as_response_is_the_column():
    r = gf.fit("e ~ a*x + b", data={"x": X, "e": 4 * X - 1})
    assert r.params["a"] == pytest.approx(4, abs=1e-9) and r.params["b"] == pytest.approx(-1, abs=1e-9)


def test_e_rule_holds_in_fit_many_gradient_and_first_order_fits():
    with pytest.raises(FormulaError, match="ambiguous"):
        gf.fit_many("a*x + e", x=X, y=np.stack([X, 2 * X]), init={"a": 1.0})
    with pytest.raises(FormulaError, match="ambiguous"):
        gf.gradient("y ~ a*x + e", data={"x": X, "y": X}, params={"a": 1.0})
    g = gf.gradient("y ~ a*x + e", data={"x": X, "e": COL, "y": X + COL}, params={"a": 1.0})
    assert g["a"] == pytest.approx(0.0, abs=1e-6)
    r = gf.fit("y ~ a*x + b*e", data={"x": X, "e": COL, "y": 2 * X + 3 * COL}, optimizer="adam", lr=0.05,
               epochs=2000)
    assert r.params["b"] == pytest.approx(3, rel=1e-3)


def test_a_saved_model_with_an_e_column_round_trips(tmp_path):
    y = 2 * X + 3 * COL + 1
    r = gf.fit("y ~ a*x + b*e + c", data={"x": X, "e": COL, "y": y})
    r.save(tmp_path / "m")
    back = gf.load(tmp_path / "m")
    assert back.model.input_names == ("x", "e")
    new = {"x": np.array([0.1, 5.0]), "e": np.array([-2.0, 7.0])}
    np.testing.assert_allclose(back.predict(new), 2 * new["x"] + 3 * new["e"] + 1, atol=1e-9)
    np.testing.assert_allclose(back.predict(new), r.predict(new), rtol=0, atol=0)


def test_the_cli_applies_the_same_rule(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x,e,y\n" + "\n".join(f"{a},{b},{2 * a + b}" for a, b in zip(X, COL)) + "\n")
    ok = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(path), "y ~ a*x + e"], capture_output=True, check=False,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    path.write_text("x,y\n" + "\n".join(f"{a},{2 * a}" for a in X) + "\n")
    bad = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(path), "y ~ a*x + e"], capture_output=True, check=False,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "ambiguous" in bad.stderr and "Traceback" not in bad.stderr


# -- built-in curves bind any column name ----------------------------------------------------
@pytest.mark.parametrize("column", ["Time (s)", "dose [mg/kg]", "t-1", "x", "time"])
def test_builtin_curves_take_any_column_name(column):
    signal = 2.0 * np.exp(-1.7 * X) + 0.1
    r = gf.fit("exp_decay", x=column, y="Signal", data={column: X, "Signal": signal})
    assert r.model.input_names == (column,)
    assert r.params == pytest.approx({"a": 2.0, "k": 1.7, "c": 0.1}, abs=1e-8)
    np.testing.assert_allclose(r.predict({column: X[:3]}), signal[:3], atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "poly:3", "hill", "logistic"])
def test_every_builtin_binds_a_non_identifier_column(name):
    m = builtin_model(name, input_name="Dose (µM)")
    assert m.input_names == ("Dose (µM)",) and "x" not in m.param_names


def test_builtin_input_named_like_its_parameter_is_refused():
    with pytest.raises(gf.ModelError, match="clashes"):
        builtin_model("exp_decay", input_name="k")


def test_builtin_with_non_identifier_column_round_trips(tmp_path):
    signal = 2.0 * np.exp(-1.7 * X) + 0.1
    r = gf.fit("exp_decay", x="Time (s)", y="Signal", data={"Time (s)": X, "Signal": signal})
    r.save(tmp_path / "m")
    back = gf.load(tmp_path / "m")
    np.testing.assert_allclose(back.predict(X[:4]), r.predict(X[:4]), rtol=0, atol=0)


def test_cli_builtin_with_a_column_name_that_is_not_an_identifier(tmp_path):
    path = tmp_path / "units.csv"
    path.write_text("Time (s),Signal\n" + "\n".join(f"{t},{2 * math.exp(-1.7 * t) + 0.1}" for t in X) + "\n")
    out = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(path), "exp_decay", "--x", "Time (s)",
                          "--y", "Signal"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "unknown function" not in out.stderr and "converged" in out.stdout


def test_formula_with_a_quoted_column_name_says_how_to_fix_it():
    with pytest.raises(FormulaError, match="identifiers.*rename"):
        gf.fit("Signal ~ a*exp(-k*`Time (s)`)", data={"Time (s)": X, "Signal": X})
    with pytest.raises(gf.DataError, match="identifiers.*built-in curve"):
        gf.fit("Signal ~ a*exp(-k*Time)", data={"Time (s)": X, "Signal": X})


# -- a data column named like a parameter --------------------------------------------------------
def test_a_column_named_like_a_parameter_is_an_input_and_the_result_says_so():
    r = gf.fit("y ~ a*x + b", data={"x": X, "y": 2 * X + 3 * COL, "b": 3 * COL})
    assert r.model.input_names == ("x", "b") and tuple(r.params) == ("a",)
    assert r.params["a"] == pytest.approx(2, abs=1e-9)
    assert any("inputs (data columns): x, b; parameters: a" in n for n in r.notes)
    assert "inputs (data columns): x, b; parameters: a" in r.report()


def test_x_left_as_a_parameter_is_said():
    with pytest.warns(GradfitWarning, match="cannot determine"):  # a and x only appear as a*x
        r = gf.fit("y ~ a*x + b", data={"b": X, "y": 2 * X})
    assert any("parameters: a, x" in n for n in r.notes)


def test_one_ordinary_input_adds_no_note():
    assert not gf.fit("t_c ~ w*t_u + b", data=gf.thermometer()).notes


@pytest.mark.parametrize("kw, what", [({"init": {"b": 1.0}}, "init"), ({"bounds": {"b": (0, None)}}, "bounds"),
                                      ({"fixed": ["b"]}, "fixed"), ({"tie": {"b": "2*a"}}, "tie"),
                                      ({"tie": {"a": "2*b"}}, "tie a=")])
def test_parameter_settings_for_a_column_name_are_refused_naming_the_clash(kw, what):
    with pytest.raises(ConfigError, match=rf"{what}.*'b' is an input.*inputs: x, b; parameters: a.*column 'b'"):
        gf.fit("y ~ a*x + b", data={"x": X, "y": 2 * X + 1, "b": COL}, **kw)


def test_formula_model_binding_rules_directly():
    m = FormulaModel("y ~ a*x + b*pi + e").bind(["x", "pi", "e", "y"])
    assert m.input_names == ("x", "pi", "e") and m.param_names == ("a", "b")
    assert FormulaModel("y ~ a*sin(pi*x)").bind(["x"]).param_names == ("a",)


# -- a transformed response with y= given as values ------------------------------------------
@pytest.mark.parametrize("formula, transform", [("log(y) ~ a + b*x", np.log), ("sqrt(y) ~ a + b*x", np.sqrt),
                                                ("2*y ~ a + b*x", lambda v: 2 * v), ("log(z) ~ a + b*x", np.log)])
@pytest.mark.parametrize("how", ["array", "dict", "columns", "named y"])
def test_a_transformed_response_applies_to_y_values(formula, transform, how):
    x = np.linspace(0, 10, 40)
    y = np.exp(1 + 0.2 * x)
    name = formula.split("(")[1].split(")")[0] if "(" in formula.split("~")[0] else "y"
    if how == "array":
        r = gf.fit(formula, x=x, y=y)
    elif how == "dict":
        r = gf.fit(formula, x={"x": x}, y=y)
    elif how == "columns":
        r = gf.fit(formula, data={"x": x, name: y})
    else:
        r = gf.fit(formula, data={"x": x, name: y}, x="x", y=name)
    expected = np.polyfit(x, transform(y), 1)  # the least-squares line through the transformed y
    assert [r.params["b"], r.params["a"]] == pytest.approx(expected, rel=1e-9)


def test_a_response_of_two_names_needs_columns():
    x = np.linspace(0, 1, 10)
    with pytest.raises(gf.DataError, match="pass them as columns"):
        gf.fit("y/z ~ a + b*x", x=x, y=x)
