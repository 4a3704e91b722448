"""xarray DataArrays -> the (fits, points) arrays of ``fit_many``, and the labels to put the
results back on the DataArray's grid.

``fit_many(model, y=da, dim="time")`` fits along ``dim`` (as ``xarray.DataArray.curvefit``
does): every other dimension is stacked into the batch, in the DataArray's order, so fit ``k``
is the C-order position ``k`` of the remaining dimensions. :func:`stack_dataarray` does the
reshaping (pure: coordinates are kept, nothing is computed) and returns a :class:`Stacking`
that the result keeps (not saved) to unstack its per-fit arrays (``BatchResult.to_xarray``).

xarray itself is imported only when a DataArray is passed: :func:`is_dataarray` tests the type
by name, so ``import gradfit`` and every other fit stay free of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean, require

__all__ = ["Stacking", "is_dataarray", "stack_dataarray"]

_FEATURE = "fit_many on an xarray DataArray"


def is_dataarray(obj) -> bool:
    """Whether ``obj`` is an ``xarray.DataArray``, without importing xarray."""
    kind = type(obj)
    return kind.__name__ == "DataArray" and kind.__module__.split(".")[0] == "xarray"


@dataclass(frozen=True)
class Stacking:
    """Where each fit of a stacked DataArray sits.

    Attributes
    ----------
    dim : the fitted dimension (the points).
    template : a DataArray over the other dimensions, with their coordinates (its values are
        not used): fit ``k`` is its C-order element ``k``.
    """

    dim: str
    template: object

    @property
    def dims(self) -> tuple:
        return tuple(self.template.dims)

    @property
    def shape(self) -> tuple:
        return tuple(self.template.shape)

    def unstack(self, values, name: str | None = None):
        """(B,) per-fit values -> a DataArray over the batch dimensions and coordinates."""
        values = np.asarray(values)
        return self.template.copy(data=values.reshape(self.shape + values.shape[1:])).rename(name)


def stack_dataarray(y, dim: str | None, *, x=None, init=None, bounds=None, fixed=None, weights=None, sigma=None,
                    mask=None) -> tuple[dict, Stacking]:
    """Reshape a DataArray ``y`` and its companions into fit_many's (fits, points) arguments.

    Parameters
    ----------
    y : xarray.DataArray
        The data; ``dim`` holds the points of one fit, every other dimension indexes fits.
    dim : str or None
        The fitted dimension (None: the only dimension of a 1-D DataArray).
    x : None, str, array, DataArray, or a dict of those
        None: ``y``'s coordinate along ``dim`` (its positions 0..M-1 when it has none); a str:
        the coordinate of that name (it may span batch dimensions too: per-fit x); a (M,) array;
        a DataArray broadcast against ``y``; a dict names several inputs.
    init, fixed : dict name -> value, where a value may be a DataArray over (some of) the batch
        dimensions, broadcast to every fit; other forms pass through unchanged.
    bounds : dict name -> (min, max), either end a DataArray over batch dimensions.
    weights, sigma, mask : DataArrays broadcast against ``y`` (or arrays, unchanged).

    Returns
    -------
    keywords : dict
        ``x``, ``y`` (B, M), ``init``, ``bounds``, ``fixed``, ``weights``, ``sigma``, ``mask`` for
        fit_many, with every DataArray turned into numpy.
    stacking : Stacking

    Raises
    ------
    ConfigError
        ``dim`` missing for a DataArray of several dimensions.
    DataError
        ``dim`` or a named coordinate is not in ``y``, a per-fit value spans the fitted
        dimension or a dimension ``y`` lacks, coordinates disagree, or x holds dates.
    """
    xr = require("xarray", extra="xarray", feature=_FEATURE)
    if not is_dataarray(y):
        raise ConfigError(f"dim= names the fitted dimension of an xarray DataArray y; got y of type "
                          f"{type(y).__name__} (for arrays, put the points along the last axis and drop dim)")
    dims = tuple(str(d) for d in y.dims)
    if dim is None:
        if len(dims) != 1:
            raise ConfigError(f"y has dimensions {dims}: name the one to fit along, e.g. dim={dims[-1]!r}")
        dim = dims[0]
    if dim not in dims:
        raise DataError(f"y has no dimension {dim!r}{did_you_mean(dim, list(dims))}; its dimensions: {dims}")
    y = y.transpose(..., dim)
    batch_dims = y.dims[:-1]
    template = y.isel({dim: 0}, drop=True)
    template = template.drop_vars([c for c in template.coords if dim in y.coords[c].dims], errors="ignore")
    template = template.copy(data=np.zeros(template.shape, dtype=np.int8)).rename(None)
    template.attrs = {}
    n_points = y.sizes[dim]
    stacking = Stacking(dim=dim, template=template)

    def per_point(value, what):
        if not is_dataarray(value):
            return value
        extra = sorted(set(map(str, value.dims)) - set(map(str, y.dims)))
        if extra:
            raise DataError(f"{what} has dimension(s) {extra} that y lacks; y has {dims}")
        value = _aligned(xr, value, y, what)
        if tuple(value.dims) == (dim,):
            return np.asarray(value.values)  # one shared (M,) vector, not B copies
        return np.asarray(value.broadcast_like(y).transpose(*y.dims).values).reshape(-1, n_points)

    def per_fit(value, what):
        if not is_dataarray(value):
            return value
        extra = sorted(set(map(str, value.dims)) - set(map(str, batch_dims)))
        if extra:
            raise DataError(f"{what} spans {extra}; a per-fit value may span only y's other dimensions "
                            f"{tuple(map(str, batch_dims))}, not the fitted one {dim!r}")
        value = _aligned(xr, value, template, what)
        return np.asarray(value.broadcast_like(template).transpose(*template.dims).values).reshape(-1)

    keywords = {"y": np.asarray(y.values, dtype=np.float64).reshape(-1, n_points),
                "x": _inputs(x, y, dim, per_point),
                "weights": per_point(weights, "weights"), "sigma": per_point(sigma, "sigma"),
                "mask": per_point(mask, "mask")}
    keywords["init"] = ({k: per_fit(v, f"init[{k!r}]") for k, v in init.items()} if isinstance(init, Mapping)
                        else per_fit(init, "init"))
    keywords["fixed"] = ({k: per_fit(v, f"fixed[{k!r}]") for k, v in fixed.items()} if isinstance(fixed, Mapping)
                         else fixed)
    if isinstance(bounds, Mapping):
        keywords["bounds"] = {k: (tuple(per_fit(end, f"bounds[{k!r}]") for end in v)
                                  if isinstance(v, (tuple, list)) else v) for k, v in bounds.items()}
    else:
        keywords["bounds"] = bounds
    return keywords, stacking


def _inputs(x, y, dim: str, per_point):
    """fit_many's x: a (M,) or (B, M) array, or a dict of them."""
    if isinstance(x, Mapping):
        return {str(k): _input(v, y, dim, per_point) for k, v in x.items()}
    return _input(x, y, dim, per_point)


def _input(x, y, dim: str, per_point):
    what = "x"
    if x is None:
        x, what = y[dim], f"the coordinate {dim!r}"
    elif isinstance(x, str):
        if x not in y.coords:
            names = [str(c) for c in y.coords]
            raise DataError(f"y has no coordinate {x!r}{did_you_mean(x, names)}; its coordinates: {names}")
        x, what = y.coords[x], f"the coordinate {x!r}"
    values = per_point(x, what)
    if np.asarray(values).dtype.kind in "mM":
        raise DataError(f"{what} holds dates or durations; pass x as numbers, e.g. x=(t - t[0]) / np.timedelta64(1, "
                        "'s') for seconds")
    return values


def _aligned(xr, value, target, what: str):
    """``value`` with coordinates that agree with ``target``'s (a DataError names the mismatch)."""
    try:
        value, _ = xr.align(value, target, join="exact")
    except ValueError as exc:
        raise DataError(f"{what}: its coordinates differ from y's ({exc}); select or reindex it to y's") from None
    return value
