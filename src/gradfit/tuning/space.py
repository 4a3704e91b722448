"""Search spaces of :func:`gradfit.tune`: parsing (Python tuples and the CLI's ``NAME=SPEC``
text), validation of every value a trial could draw before any trial runs, and the mapping of
drawn values to :func:`gradfit.fit` keywords.

A space maps a fit option to a range or to choices::

    {"lr": ("log", 1e-4, 1e-1),       # log-uniform float in [1e-4, 1e-1]
     "momentum": ("float", 0, 0.99),  # uniform float (momentum: the torch optimizer's option)
     "epochs": ("int", 100, 2000),    # uniform integer
     "optimizer": ["sgd", "adam"],    # choices
     "hidden": [8, 32, (32, 32)],     # mlp widths: an int is one layer, a tuple several
     "penalty.l2": ("log", 1e-6, 1e-2), "init.k": ("float", 0, 5)}   # dotted: inside a dict option

On the command line the same space is ``--space lr=log:1e-4:1e-1 --space optimizer=sgd,adam
--space hidden=8,32,32-32`` (in ``hidden`` choices, ``-`` separates layers: ``32-32`` is two
layers of 32).
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import re
from collections.abc import Mapping

from ..errors import ConfigError, did_you_mean

__all__ = ["parse_space", "parse_space_text", "space_text", "fit_keywords", "check_space", "RANGE_KINDS",
           "encode_choice", "decode_choice"]

RANGE_KINDS = ("log", "float", "int")
#: search names that stand for an entry of a dict option (as the CLI's --momentum/--nesterov do)
ALIASES = {"momentum": "optimizer_options.momentum", "nesterov": "optimizer_options.nesterov"}
#: names users try, and the option they mean (for the did-you-mean hint)
HINTS = {"learning_rate": "lr", "learningrate": "lr", "learnrate": "lr", "learning-rate": "lr", "rate": "lr",
         "step_size": "lr", "n_epochs": "epochs", "max_epochs": "epochs", "epoch": "epochs", "iterations": "epochs",
         "batch": "batch_size", "batchsize": "batch_size", "layers": "hidden", "hidden_size": "hidden",
         "hidden_layers": "hidden", "width": "hidden", "units": "hidden", "optim": "optimizer", "opt": "optimizer",
         "l2": "penalty.l2", "l1": "penalty.l1", "activation_function": "activation", "act": "activation",
         "validation_fraction": "val_fraction", "val_split": "val_fraction", "noise": "input_noise"}
#: options whose values are dicts, searched entry by entry with dotted names
DICT_OPTIONS = ("init", "penalty", "optimizer_options", "schedule")
#: options that only the built-in "mlp" model has
MLP_OPTIONS = ("hidden", "activation")
#: combinations of range ends and choices checked one by one before falling back to one name at a time
_MAX_COMBINATIONS = 64
_PRIMITIVE = (type(None), bool, int, float, str)
_NOT_SEARCHED = ("progress", "checkpoint", "resume", "log_every")
_KIND_LIKE = re.compile(r"[A-Za-z_]\w*")


def parse_space(space: Mapping) -> dict:
    """Check a search space and give it in canonical form.

    Parameters
    ----------
    space : mapping name -> ``("log" | "float", low, high)``, ``("int", low, high)`` or a
        non-empty list of choices. Names are fit options (``lr``, ``optimizer``, ``hidden``...),
        ``momentum``/``nesterov`` (torch optimizer options), or dotted entries of dict options
        (``penalty.l2``, ``init.k``, ``optimizer_options.betas``, ``schedule.gamma``).

    Returns
    -------
    dict name -> ``(kind, low, high)`` or ``("choice", [values])``; aliases resolved, ``hidden``
    choices as tuples of layer widths.

    Raises
    ------
    ConfigError
        A name that is not a fit option (with a did-you-mean hint), an unknown range kind,
        low >= high, a log range with low <= 0, non-integer int bounds, or no choices.

    Examples
    --------
    >>> parse_space({"lr": ("log", 1e-3, 1e-1), "hidden": [8, "16-16"], "momentum": ("float", 0, 0.9)})
    {'lr': ('log', 0.001, 0.1), 'hidden': ('choice', [(8,), (16, 16)]), \
'optimizer_options.momentum': ('float', 0, 0.9)}
    """
    from ..fitting.keywords import FIT_KEYWORDS

    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"space must be a non-empty dict of name -> range or choices, got {space!r}")
    out = {}
    for raw, spec in space.items():
        name = _search_name(raw, (*FIT_KEYWORDS, "init"))
        if name in out:
            raise ConfigError(f"space names {name!r} twice ({raw!r} stands for it)")
        out[name] = _dimension(name, spec)
    return out


def _search_name(raw, keywords) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"space names must be fit options such as 'lr', got {raw!r}")
    name = ALIASES.get(raw.strip(), raw.strip())
    outer, dot, inner = name.partition(".")
    searchable = (*keywords, *ALIASES)
    if outer not in keywords:
        hint = HINTS.get(outer.lower())
        hint = f" (did you mean {hint!r}?)" if hint else did_you_mean(outer, searchable)
        listed = "" if hint else (f"; searchable: {', '.join(k for k in searchable if k not in _NOT_SEARCHED)}, "
                                  f"and entries of {', '.join(DICT_OPTIONS)} as NAME.KEY")
        raise ConfigError(f"space {raw!r}: {outer!r} is not a fit option{hint}{listed}")
    if dot and (outer not in DICT_OPTIONS or not inner):
        raise ConfigError(f"space {raw!r}: only the dict options {', '.join(DICT_OPTIONS)} take a dotted "
                          f"NAME.KEY (e.g. penalty.l2, init.k)")
    return name


def _dimension(name: str, spec):
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], str) and spec[0] in RANGE_KINDS:
        return _range(name, *spec) if len(spec) == 3 else _bad_range(name, spec)
    if isinstance(spec, (list, tuple)) and spec:
        choices = [_hidden_choice(name, v) for v in spec] if name == "hidden" else list(spec)
        for v in choices:
            encode_choice(v)  # refuses what cannot be stored
        return ("choice", choices)
    raise ConfigError(f"space {name!r}: use ('log', low, high), ('float', low, high), ('int', low, high) "
                      f"or a non-empty list of choices, got {spec!r}")


def _bad_range(name, spec):
    raise ConfigError(f"space {name!r}: expected ({spec[0]!r}, low, high), got {spec!r}")


def _range(name: str, kind: str, lo, hi):
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ConfigError(f"space {name!r}: the ends of a {kind} range must be finite numbers, got {v!r}")
    if kind == "int":
        if any(float(v) != int(v) for v in (lo, hi)):
            raise ConfigError(f"space {name!r}: an int range needs integer ends, got {lo!r}, {hi!r}")
        lo, hi = int(lo), int(hi)
    else:
        lo, hi = (int(v) if isinstance(v, numbers.Integral) else float(v) for v in (lo, hi))
    if not lo < hi:
        raise ConfigError(f"space {name!r}: need low < high, got {lo!r}, {hi!r}")
    if kind == "log" and lo <= 0:
        raise ConfigError(f"space {name!r}: a log range needs low > 0, got {lo!r}")
    return (kind, lo, hi)


def _hidden_choice(name: str, v) -> tuple:
    """An mlp ``hidden`` choice as layer widths: 32 -> (32,), "32-32" -> (32, 32), [8, 8] -> (8, 8)."""
    if isinstance(v, str):
        try:
            v = tuple(int(w) for w in v.split("-"))
        except ValueError:
            raise ConfigError(f"space {name!r}: a hidden choice is a width (32) or widths joined by '-' "
                              f"(32-32 for two layers), got {v!r}") from None
    sizes = (v,) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
    if not isinstance(sizes, (list, tuple)) or not sizes or any(
            isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in sizes):
        raise ConfigError(f"space {name!r}: a hidden choice is a width >= 1 or a tuple of widths, got {v!r}")
    return tuple(int(w) for w in sizes)


def encode_choice(value):
    """The label Optuna stores for a choice: the value itself when Optuna can hold it (None,
    bool, int, float, str), else ``"32-32"`` for layer widths and JSON for other data."""
    if isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, tuple) and value and all(isinstance(w, int) and not isinstance(w, bool) for w in value):
        return "-".join(str(w) for w in value)
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        raise ConfigError(f"a search choice must be a number, text, None, a tuple of widths or JSON data, "
                          f"got {value!r}") from None


def decode_choice(choices: list, label):
    """The choice whose label Optuna returned."""
    for v in choices:
        if encode_choice(v) == label and type(encode_choice(v)) is type(label):
            return v
    return label


# -- the command line's NAME=SPEC ------------------------------------------------------------------
def parse_space_text(items) -> dict:
    """``--space`` items into a space: ``lr=log:1e-4:1e-1``, ``epochs=int:100:5000``,
    ``momentum=float:0:0.99``, ``optimizer=sgd,adam`` (choices; numbers and true/false are
    converted), ``hidden=8,32,32-32`` (widths; ``-`` joins layers).

    Raises
    ------
    ConfigError
        A malformed item (no ``=``, an empty name or spec, an unknown kind such as ``exp:1:2``,
        ends that are not numbers), naming it.

    >>> parse_space_text(["lr=log:1e-4:1e-1", "optimizer=sgd,adam", "hidden=8,32-32"])
    {'lr': ('log', 0.0001, 0.1), 'optimizer': ['sgd', 'adam'], 'hidden': ['8', '32-32']}
    """
    space = {}
    for item in items:
        name, sep, spec = str(item).partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ConfigError(f"--space expects NAME=SPEC like lr=log:1e-4:1e-1 or optimizer=sgd,adam, got {item!r}")
        if name in space:
            raise ConfigError(f"--space names {name!r} twice")
        parts = spec.split(":")
        if len(parts) == 3 and "," not in spec and _KIND_LIKE.fullmatch(parts[0]):
            kind = parts[0]
            if kind not in RANGE_KINDS:
                raise ConfigError(f"--space {item!r}: unknown range kind {kind!r}{did_you_mean(kind, RANGE_KINDS)}; "
                                  f"use log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or choices A,B,C")
            try:
                lo, hi = (_number(p) for p in parts[1:])
            except ValueError:
                raise ConfigError(f"--space {item!r}: expected {kind}:LOW:HIGH with numbers") from None
            space[name] = (kind, lo, hi)
        elif parts[0] in RANGE_KINDS:
            raise ConfigError(f"--space {item!r}: expected {parts[0]}:LOW:HIGH")
        else:
            values = [v.strip() for v in spec.split(",")]
            if any(not v for v in values):
                raise ConfigError(f"--space {item!r}: an empty choice; write choices as A,B,C")
            space[name] = values if ALIASES.get(name, name) == "hidden" else [_value(v) for v in values]
    if not space:
        raise ConfigError("give at least one --space NAME=SPEC")
    return space


def _number(text: str):
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return _number(text)
    except ValueError:
        return text


def space_text(space: Mapping) -> str:
    """A parsed space in the command line's syntax, e.g. ``lr=log:0.0001:0.1 optimizer=sgd,adam``."""
    items = []
    for name, dim in space.items():
        if dim[0] == "choice":
            items.append(f"{name}=" + ",".join(str(encode_choice(v)) for v in dim[1]))
        else:
            items.append(f"{name}={dim[0]}:{dim[1]:g}:{dim[2]:g}")
    return " ".join(items)


# -- from drawn values to fit keywords, and the check of every value before the first trial ---------
def fit_keywords(base: Mapping, values: Mapping) -> dict:
    """Trial values into gradfit.fit keyword arguments; dotted names nest ("penalty.l2" -> penalty={"l2": v})."""
    opts = dict(base)
    for name, v in values.items():
        if "." in name:
            outer, inner = name.split(".", 1)
            nested = dict(opts.get(outer) or {})
            nested[inner] = v
            opts[outer] = nested
        else:
            opts[name] = v
    return opts


def check_space(model, base: Mapping, space: Mapping, metric: str, *, x=None, y=None, data=None) -> None:
    """Build the fit options of every corner of the space (each choice, both ends of each range,
    all combinations while there are at most 64, else one name at a time) and refuse the first
    bad one with the option's own message, so that no trial fails on a setting.

    Raises
    ------
    ConfigError
        A value the option refuses (naming the search name and the value), ``hidden`` or
        ``activation`` for a model that is not "mlp", optimizer options the optimizer does not
        take, or metric "val_loss" with a trial that would have no validation split.
    """
    from ..fitting.keywords import FIT_KEYWORDS, options_from_keywords
    from ..models import resolve_model
    from ..models.neural import MLPSpec

    if any(n in space for n in MLP_OPTIONS):
        try:
            is_mlp = isinstance(resolve_model(model), MLPSpec)
        except Exception:  # noqa: BLE001 - the fit itself reports a bad model
            is_mlp = True
        if not is_mlp:
            name = "hidden" if "hidden" in space else "activation"
            raise ConfigError(f"space {name!r}: only the built-in 'mlp' model has {name}; this model is {model!r}")
    inits = [name.partition(".")[2] for name in space if name.startswith("init.")]
    if inits:
        names = _parameter_names(model, x, y, data)
        unknown = [n for n in inits if names and n not in names]
        if unknown:
            what = (f"{unknown[0]!r} is a data column, so it is an input of the model, not a parameter"
                    if unknown[0] in _input_names(x, data) else
                    f"the model has no parameter {unknown[0]!r}{did_you_mean(unknown[0], names)}")
            raise ConfigError(f"space 'init.{unknown[0]}': {what} (its parameters: {', '.join(names)})")
    corners = {name: (list(dim[1]) if dim[0] == "choice" else [dim[1], dim[2]]) for name, dim in space.items()}
    names = list(corners)
    total = math.prod(len(c) for c in corners.values())
    if total <= _MAX_COMBINATIONS:
        combos = (dict(zip(names, values)) for values in itertools.product(*corners.values()))
    else:
        first = {n: c[0] for n, c in corners.items()}
        combos = ({**first, n: v} for n in names for v in corners[n])
    for combo in combos:
        keywords = fit_keywords(base, combo)
        try:
            options = options_from_keywords(**{k: v for k, v in keywords.items() if k in FIT_KEYWORDS})
            _check_optimizer(options)
        except ConfigError as exc:
            raise ConfigError(f"space {_describe(combo)}: {exc}") from None
        if metric == "val_loss" and options.training.val_fraction == 0:
            raise ConfigError(f"metric 'val_loss' needs a validation split, but a trial with {_describe(combo)} has "
                              f"val_fraction 0; set val_fraction (e.g. 0.2; --val-fraction) or use metric 'loss'")


def _check_optimizer(options) -> None:
    """A torch optimizer with its options, built on one dummy tensor: its constructor refuses
    unknown or bad options (e.g. momentum for adam)."""
    from ..optim.registry import make_optimizer, optimizer_names

    training = options.training
    if training.optimizer in optimizer_names() and training.optimizer_options:
        import torch

        make_optimizer(training.optimizer, [torch.zeros(1, requires_grad=True)], training.lr,
                       training.optimizer_options)


def _describe(combo: Mapping) -> str:
    return ", ".join(f"{k}={encode_choice(v)}" for k, v in combo.items())


def _parameter_names(model, x, y, data) -> tuple[str, ...]:
    """The model's parameters once bound to the data (a name that is a data column is an
    input, not a parameter: init.NAME for it is refused); () when that cannot be worked out
    here (the fit itself then reports the problem)."""
    from ..data.arrays import prepare_arrays
    from ..errors import GradfitError
    from ..models import resolve_model

    try:
        resolved = resolve_model(model)
    except Exception:  # noqa: BLE001 - the fit itself reports a bad model
        return ()
    if x is not None or data is not None:
        try:
            resolved, _ = prepare_arrays(resolved, x, y, data=data)
        except GradfitError:
            pass
    return tuple(getattr(resolved, "param_names", None) or ())


def _input_names(x, data) -> set[str]:
    names = set(map(str, data.keys() if hasattr(data, "keys") else getattr(data, "columns", ()))) if data is not None else set()
    if isinstance(x, Mapping):
        names |= set(map(str, x))
    elif isinstance(x, str):
        names.add(x)
    return names
