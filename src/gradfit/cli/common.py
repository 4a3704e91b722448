"""Helpers shared by the CLI commands: option parsing and table output."""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["parse_assignments", "parse_bounds", "parse_value", "fit_kwargs", "print_table"]


def parse_value(text: str):
    """'1e-3' -> 0.001, 'true' -> True, '3' -> 3, otherwise the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        pass
    try:
        return float(low)
    except ValueError:
        return text.strip()


def parse_assignments(text: str | None, option: str) -> dict[str, float]:
    """'w=1,b=0' -> {'w': 1.0, 'b': 0.0}; anything else is a ConfigError naming the option."""
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{option}: expected NAME=VALUE pairs like w=1,b=0, got {part.strip()!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{option}: value for {name.strip()!r} is not a number: {value.strip()!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{option}: value for {name.strip()!r} must be finite")
        out[name.strip()] = number
    return out


def parse_bounds(items) -> dict:
    """['w=0:', 'b=-5:5'] -> {'w': (0.0, None), 'b': (-5.0, 5.0)}."""
    out = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, rng = part.partition("=")
            lo, colon, hi = rng.partition(":")
            if not sep or not colon or not name.strip():
                raise ConfigError(f"--bounds expects NAME=LO:HI like w=0: or b=-5:5, got {part.strip()!r}")
            try:
                out[name.strip()] = (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
            except ValueError:
                raise ConfigError(f"--bounds {part.strip()!r}: limits must be numbers") from None
    return out


def fit_kwargs(args) -> dict:
    """The keyword arguments of gradfit.fit from parsed CLI options."""
    options = {}
    for item in args.opt:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--opt expects KEY=VALUE, got {item!r}")
        options[key.strip()] = parse_value(value)
    if args.momentum is not None:
        options["momentum"] = args.momentum
    if args.nesterov:
        options["nesterov"] = True
    try:
        hidden = tuple(int(h) for h in str(args.hidden).split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden expects sizes like 64,64, got {args.hidden!r}") from None
    init = parse_assignments(args.init, "--init")
    fixed = []
    for item in args.fix:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            if not name.strip():
                continue
            fixed.append(name.strip())
            if sep:
                init.update(parse_assignments(part, "--fix"))
    tie = {}
    for item in args.tie:
        name, sep, expr = item.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ConfigError(f"--tie expects NAME=EXPRESSION like c=2*a, got {item!r}")
        tie[name.strip()] = expr.strip()
    penalty: dict = {}
    for item in args.penalty:
        key, sep, value = item.partition("=")
        kind, colon, name = key.partition(":")
        if not sep or kind.strip() not in ("l1", "l2"):
            raise ConfigError(f"--penalty expects l2=C or l2:NAME=C (l1 likewise), got {item!r}")
        try:
            coef = float(value)
        except ValueError:
            raise ConfigError(f"--penalty {item!r}: the coefficient must be a number") from None
        if colon:
            penalty.setdefault(kind.strip(), {})
            if not isinstance(penalty[kind.strip()], dict):
                raise ConfigError(f"--penalty {kind}: give either one coefficient for all or per-parameter ones")
            penalty[kind.strip()][name.strip()] = coef
        else:
            penalty[kind.strip()] = coef
    extras = dict(penalty=penalty or None, input_noise=args.input_noise, early_stopping=args.early_stopping,
                  schedule=args.schedule, cv=args.cv)
    return dict(**extras, init=init or None, loss=args.loss, optimizer=args.optimizer,
                bounds=parse_bounds(args.bounds) or None, fixed=fixed, tie=tie or None, max_iter=args.max_iter,
                absolute_sigma=args.absolute_sigma,
                lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, normalize=args.normalize,
                val_fraction=args.val_fraction, seed=args.seed, gradient=args.gradient, dtype=args.dtype,
                device=args.device, log_every=args.log_every, progress=False if args.no_progress else None,
                optimizer_options=options or None, tol=args.tol, nan_policy=args.nan_policy,
                hidden=hidden, activation=args.activation)


def print_table(stream, title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned text otherwise (stable for scripts)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # files and pipes: never wrap cells
    table = Table(title=title, title_justify="left", box=None if not console.is_terminal else None,
                  show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
