"""scikit-learn estimators over :func:`gradfit.fit`: :class:`CurveRegressor` (formulas, built-in
curves, Python functions) and :class:`NetRegressor` (networks).

Both follow scikit-learn's conventions (constructors only store, ``fit`` returns ``self``,
learned attributes end in ``_``, ``score`` is R²) and pass its estimator checks
(``tests/test_sklearn.py``), so they clone, pickle and work inside ``Pipeline`` and
``GridSearchCV``. Import this module explicitly (``from gradfit.sklearn import CurveRegressor``):
``import gradfit`` never loads scikit-learn, the optional extra ``gradfit[sklearn]``.

>>> import numpy as np
>>> from gradfit.sklearn import CurveRegressor
>>> x = np.linspace(0.0, 3.0, 20)
>>> est = CurveRegressor("a*exp(-k*x) + c").fit(x.reshape(-1, 1), 2.0 * np.exp(-1.5 * x) + 0.5)
>>> {k: round(v, 3) for k, v in est.params_.items()}
{'a': 2.0, 'k': 1.5, 'c': 0.5}
"""

from __future__ import annotations

import re

import numpy as np

from .errors import require

require("sklearn", extra="sklearn", feature="gradfit.sklearn", package="scikit-learn")

from sklearn.base import BaseEstimator, RegressorMixin  # noqa: E402  (after the dependency check)
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data  # noqa: E402

__all__ = ["CurveRegressor", "NetRegressor", "formula_inputs", "linear_formula"]

#: the positional input names of a formula: x, or x0, x1, ... (x1, x2, ... too), ordered by number
_POSITIONAL = re.compile(r"^x(\d*)$")


def linear_formula(n_features: int) -> str:
    """CurveRegressor's default model for ``n_features`` columns: an intercept and one slope per
    column, ``"y ~ b0 + b1*x0 + ... + bn*x{n-1}"`` (ordinary least squares, solved directly).

    >>> linear_formula(2)
    'y ~ b0 + b1*x0 + b2*x1'
    """
    return "y ~ b0 + " + " + ".join(f"b{i + 1}*x{i}" for i in range(n_features))


def formula_inputs(formula: str, n_features: int, feature_names=None, inputs=None) -> tuple[str, ...]:
    """Which formula name each column of X feeds, in column order.

    ``inputs`` (names given explicitly) wins; then the column names of a DataFrame when every
    one of them is a name in the formula; otherwise the formula's positional names: ``x`` for
    one column, or ``x0, x1, ...`` (any ``x<number>``, ordered by number) for several.

    >>> formula_inputs("a*x1 + b*x0 + c", 2)
    ('x0', 'x1')
    >>> formula_inputs("a*exp(-k*t) + c", 1, feature_names=["t"])
    ('t',)
    """
    from .formula.parse import parse_formula

    names = parse_formula(formula).rhs.names()
    if inputs is not None:
        chosen = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        unknown = [n for n in chosen if n not in names]
        if len(chosen) != n_features or unknown:
            raise ValueError(f"inputs={chosen!r} must name {n_features} input(s) of the formula {formula!r}, one per "
                             f"column of X{'; not in the formula: ' + ', '.join(unknown) if unknown else ''}")
        return chosen
    if feature_names is not None and all(str(c) in names for c in feature_names):
        return tuple(str(c) for c in feature_names)
    positional = sorted((n for n in names if _POSITIONAL.match(n)), key=lambda n: int(n[1:] or -1))
    if len(positional) == n_features:
        return tuple(positional)
    raise ValueError(f"X has {n_features} column(s) but the formula {formula!r} has {len(positional)} positional "
                     f"input(s) ({', '.join(positional) or 'none'}): name the inputs x (one column) or x0, x1, ... "
                     "(several), pass inputs=(names in column order), or give a DataFrame whose column names are the "
                     "formula's inputs")


def _refuse_transformed_response(formula: str) -> None:
    """``log(y) ~ ...`` would predict log(y) while score compares with y: sklearn's way is a
    TransformedTargetRegressor around an untransformed formula."""
    from .formula.parse import parse_formula
    from .formula.tree import Var

    response = parse_formula(formula).response
    if response is not None and not isinstance(response, Var):
        raise ValueError(f"formula {formula!r} transforms its response, so it would predict the transformed value; "
                         "write the formula for y and transform y around the estimator instead: "
                         "sklearn.compose.TransformedTargetRegressor(CurveRegressor(...), func=np.log, "
                         "inverse_func=np.exp)")


class _GradfitRegressor(RegressorMixin, BaseEstimator):
    """What both estimators share: validation, the call into gf.fit, prediction."""

    def _validate(self, X, y=None, sample_weight=None, *, multi_output: bool, reset: bool = False):
        if reset:
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=multi_output,
                                 ensure_min_samples=2)
            y = np.asarray(y, dtype=np.float64)
        else:
            X = validate_data(self, X, dtype=np.float64, reset=False)
        weights = None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                                         ensure_non_negative=True)
        return X, y, weights

    def _fit_result(self, model, x, y, weights, **keywords):
        from .fitting.fit import fit

        self.result_ = fit(model, x, y, weights=weights, progress=False, **keywords)
        self.n_iter_ = max(1, int(self.result_.epochs_run))  # a direct solve is one step
        return self

    def _predict(self, x):
        return np.asarray(self.result_.predict(x), dtype=np.float64)


class CurveRegressor(_GradfitRegressor):
    """A formula, built-in curve or Python function fitted by :func:`gradfit.fit`.

    Parameters
    ----------
    model : None (default), a formula (``"y ~ a*exp(-k*x) + c"`` or ``"a*exp(-k*x) + c"``), a
        built-in name (``"exp_decay"``, ``"poly:3"``) or a function ``f(x, a, b, ...)`` written
        with torch operations. None is the linear model over every column,
        :func:`linear_formula` (``"y ~ b0 + b1*x0 + ..."``), built from ``n_features_in_``.
        A transformed response (``"log(y) ~ ..."``) is refused: wrap the estimator in
        ``sklearn.compose.TransformedTargetRegressor`` instead, so predict and score stay in y.
    inputs : the formula's input names in column order; by default a DataFrame's column names
        when the formula uses them all, else ``x`` (one column) or ``x0, x1, ...`` (several),
        see :func:`formula_inputs`. Built-in curves take one column; a function takes one
        column as a vector, several as an (n, columns) array.
    init, bounds, fixed, loss, optimizer, max_iter, tol, starts, lr, epochs : as in
        :func:`gradfit.fit`.
    seed : the seed of multistart designs and first-order training; None is gradfit's
        default (0), so fits are reproducible.

    Attributes
    ----------
    params_, stderr_ : dict
        Estimated parameters and their standard errors, by name.
    result_ : FitResult
        The whole result of :func:`gradfit.fit` (report, ci, band, plot).
    inputs_ : tuple of str
        The model's input name fed by each column of X.
    n_features_in_, feature_names_in_, n_iter_ :
        scikit-learn's usual attributes (``feature_names_in_`` only for string column names).
    """

    def __init__(self, model=None, *, inputs=None, init=None, bounds=None, fixed=None, loss="mse", optimizer="auto",
                 max_iter=None, tol=None, starts=None, seed=None, lr=1e-2, epochs=1000):
        self.model = model
        self.inputs = inputs
        self.init = init
        self.bounds = bounds
        self.fixed = fixed
        self.loss = loss
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.tol = tol
        self.starts = starts
        self.seed = seed
        self.lr = lr
        self.epochs = epochs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = False
        return tags

    def fit(self, X, y, sample_weight=None):
        """Fit the model to the columns of X and the targets y (``sample_weight`` -> ``weights=``).

        Returns
        -------
        self
        """
        X, y, weights = self._validate(X, y, sample_weight, multi_output=False, reset=True)
        model = linear_formula(X.shape[1]) if self.model is None else self.model
        self._model, self.inputs_, self._named = self._bind(model, X.shape[1])
        keywords = dict(init=self.init, bounds=self.bounds, fixed=() if self.fixed is None else self.fixed,
                        loss=self.loss, optimizer=self.optimizer, max_iter=self.max_iter, tol=self.tol,
                        starts=self.starts, seed=0 if self.seed is None else self.seed, lr=self.lr, epochs=self.epochs)
        self._fit_result(self._model, self._columns(X), y, weights, **keywords)
        self.params_ = dict(self.result_.params)
        self.stderr_ = None if self.result_.stderr is None else dict(self.result_.stderr)
        return self

    def predict(self, X):
        """The fitted model at the rows of X, shape (n_samples,)."""
        check_is_fitted(self, "result_")
        X, _, _ = self._validate(X, multi_output=False)
        return self._predict(self._columns(X)).reshape(-1)

    def _bind(self, model, n_features: int):
        """(the model gf.fit gets, the input name each column feeds, whether x is a dict of names)."""
        from .models import is_builtin_name

        if isinstance(model, str) and is_builtin_name(model):
            if model.strip().lower() == "mlp":
                raise ValueError("model='mlp' is a network: use gradfit.sklearn.NetRegressor")
            if n_features != 1:
                raise ValueError(f"the built-in curve {model!r} takes one input column; X has {n_features}")
            return model, ("x",), False
        if isinstance(model, str):
            _refuse_transformed_response(model)
            return model, formula_inputs(model, n_features, getattr(self, "feature_names_in_", None), self.inputs), True
        if callable(model):  # f(x, a, ...): x is the column, or the (n, columns) array
            return model, ("x",), False
        raise ValueError(f"model must be None, a formula, a built-in name or a function; got {type(model).__name__}")

    def _columns(self, X):
        """X as gf.fit's x: a dict of named inputs for a formula, else the column (or the array)."""
        if self._named:
            return {name: X[:, j] for j, name in enumerate(self.inputs_)}
        return X[:, 0] if X.shape[1] == 1 else X


class NetRegressor(_GradfitRegressor):
    """A multilayer perceptron trained by :func:`gradfit.fit` (``model="mlp"``).

    Parameters
    ----------
    hidden, activation, optimizer, lr, epochs, batch_size, early_stopping, normalize,
    val_fraction, penalty, loss, schedule, input_noise, dtype, device :
        as in :func:`gradfit.fit`, with its defaults (``lr=1e-2``, ``epochs=1000``;
        ``batch_size=None``: full batch; ``early_stopping`` needs ``val_fraction > 0``) except
        ``normalize=True``: inputs and targets standardized (weighted by ``sample_weight``), and
        ``dtype="float64"`` (scikit-learn's working precision: its equivalence checks compare
        refits to 1e-7, which float32 training misses by rounding; pass "float32" for speed).
    seed : the seed of the weights, the split and the minibatches; None is gradfit's default
        (0), so fits are reproducible.

    Attributes
    ----------
    result_ : FitResult
        The result of :func:`gradfit.fit` (loss curves, the trained module).
    n_outputs_ : int
        Columns of y; ``predict`` returns (n_samples,) for a 1-D y, else (n_samples, n_outputs_).
    n_features_in_, feature_names_in_, n_iter_ :
        scikit-learn's usual attributes (``n_iter_``: epochs run).
    """

    def __init__(self, hidden=(64,), *, activation="tanh", optimizer="adam", lr=1e-2, epochs=1000, batch_size=None,
                 early_stopping=None, normalize=True, val_fraction=0.0, seed=None, penalty=None, loss="mse",
                 schedule=None, input_noise=0.0, dtype="float64", device="auto"):
        self.hidden = hidden
        self.activation = activation
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.normalize = normalize
        self.val_fraction = val_fraction
        self.seed = seed
        self.penalty = penalty
        self.loss = loss
        self.schedule = schedule
        self.input_noise = input_noise
        self.dtype = dtype
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y, sample_weight=None):
        """Train the network on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_outputs).

        Returns
        -------
        self
        """
        X, y, weights = self._validate(X, y, sample_weight, multi_output=True, reset=True)
        self._y_1d = y.ndim == 1
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        return self._fit_result("mlp", X, y, weights, hidden=hidden, activation=self.activation,
                                optimizer=self.optimizer, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                                early_stopping=self.early_stopping, normalize=self.normalize,
                                val_fraction=self.val_fraction, seed=0 if self.seed is None else self.seed,
                                penalty=self.penalty, loss=self.loss, schedule=self.schedule,
                                input_noise=self.input_noise, dtype=self.dtype, device=self.device)

    def predict(self, X):
        """The network's outputs at the rows of X."""
        check_is_fitted(self, "result_")
        X, _, _ = self._validate(X, multi_output=True)
        out = self._predict(X)
        return out.reshape(-1) if self._y_1d else out.reshape(len(X), self.n_outputs_)
