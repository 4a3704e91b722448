"""Text reports of results (pure string formatting; the CLI decides where they go)."""

from __future__ import annotations

import math

from ..options import FitOptions
from .intervals import CI_CONVENTION, IC_CONVENTION, LIKELIHOOD_CI_CONVENTION, LIKELIHOOD_IC_CONVENTION

__all__ = ["text_report", "STRONG_CORRELATION"]

#: correlations at least this strong are listed in the report
STRONG_CORRELATION = 0.5


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}"


def _bound(v, missing: str) -> str:
    """A bound as text: numbers with :g, None (no bound) as +/-inf, anything else as it is."""
    if v is None:
        return missing
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def text_report(result) -> str:
    s = result.settings
    lines = [f"model      {result.model.describe()}"]
    # always say which names are data and which are estimated (a column named like a
    # parameter is an input; this line keeps that from being silent)
    inputs = tuple(getattr(result.model, "input_names", ()) or ())
    if inputs:
        lines.append(f"inputs     {', '.join(inputs)}")
    if result.params and getattr(result.model, "scalar_params", False):
        lines.append(f"parameters {', '.join(result.params)}")
    method = result.method
    if method in ("linear", "lm"):
        lines.append(f"method     {method} ({result.method_reason})")
        lines.append(f"status     {result.status} after {result.epochs_run} iteration(s)")
    else:
        lr = FitOptions.from_dict(s["options"]).training.lr if "options" in s else s.get("lr")
        how = ", ".join(f"{k}={v}" for k, v in (("lr", lr), ("loss", s.get("loss"))) if v is not None)
        lines.append(f"method     {method} ({how})" + (f": {result.method_reason}" if result.method_reason
                                                          and result.method_reason != "requested" else ""))
        lines.append(f"status     {result.status} after {result.epochs_run} epochs")
    if result.message:
        lines.append(f"           {result.message}")
    ms = s.get("multistart")
    if ms:
        lines.append(f"multistart {ms.get('starts')} starts: {ms.get('converged')} converged, {ms.get('reached_best')} "
                     f"reached the best, {ms.get('distinct_minima')} distinct minima")
    lines.append(f"data       {result.n_train} train" + (f", {result.n_val} validation" if result.n_val else ""))
    lines.append(f"loss       train {_num(result.loss)}" + (f"  val {_num(result.val_loss)}"
                                                             if result.val_loss is not None else ""))
    for note in result.notes:
        lines.append(f"note       {note}")
    if result.stats and "deviance" in result.stats:
        lines.extend(_likelihood_lines(result))
    elif result.stats:
        st = result.stats
        lines.append("statistics")
        lines.append(f"  points {st['n']}, free parameters {st['n'] - st['dof']}, degrees of freedom {st['dof']}")
        lines.append(f"  chi-square {_num(st['chisqr'])}, reduced chi-square {_num(st['redchi'])}, "
                     f"RSS {_num(st['rss'])}, RMSE {_num(st['rmse'])}")
        lines.append(f"  R-squared {_num(st['r2'])}, AIC {_num(st['aic'])}, BIC {_num(st['bic'])}")
        k = st["n"] - st["dof"]
        lines.append(f"  {IC_CONVENTION.format(k=k)}")
        if result.stderr is not None:
            lines.append(f"  {CI_CONVENTION[result.absolute_sigma].format(dof=st['dof'])}")
    if result.params:
        lines.extend(_parameter_lines(result))
    lines.extend(_correlation_lines(result))
    return "\n".join(lines)


def _likelihood_lines(result) -> list[str]:
    """The statistics of a Poisson (likelihood) fit: deviance, log-likelihood, Pearson's
    chi-square, and how the criteria and errors are defined."""
    st = result.stats
    k = st["n"] - st["dof"]
    lines = ["statistics (Poisson likelihood)",
             f"  points {st['n']}, free parameters {k}, degrees of freedom {st['dof']}",
             f"  deviance {_num(st['deviance'])}, log-likelihood {_num(st['loglike'])}, "
             f"AIC {_num(st['aic'])}, BIC {_num(st['bic'])}",
             f"  Pearson chi-square {_num(st['chisqr'])}, reduced chi-square {_num(st['redchi'])}, "
             f"deviance R-squared {_num(st.get('r2'))}, RMSE {_num(st.get('rmse'))}",
             f"  {LIKELIHOOD_IC_CONVENTION.format(k=k)}"]
    if result.stderr is not None:
        lines.append(f"  {LIKELIHOOD_CI_CONVENTION}")
    return lines


def _parameter_lines(result) -> list[str]:
    s = result.settings
    init = s.get("init") or {}
    fixed = set(s.get("fixed") or ())
    tie = s.get("tie") or {}
    bounds = s.get("bounds") or {}
    width = max(len(k) for k in result.params)
    out = ["parameters"]
    for k, v in result.params.items():
        line = f"  {k:<{width}}  {v: .8g}"
        err = (result.stderr or {}).get(k)
        if k in fixed:
            line += "  (fixed)"
        elif err is not None and math.isfinite(err):
            pct = f" ({abs(err / v) * 100:.2f}%)" if v != 0 else ""
            line += f" +/- {err:.6g}{pct}"
        elif err is not None:
            line += " +/- undetermined"
        extras = []
        if k in tie:
            extras.append(f"= {tie[k]}")
        if k in bounds:
            lo, hi = bounds[k]
            extras.append(f"bounds [{_bound(lo, '-inf')}, {_bound(hi, 'inf')}]")
        if k in init and k not in fixed and k not in tie:
            extras.append(f"init {init[k]:g}")
        if extras:
            line += "  (" + ", ".join(extras) + ")"
        out.append(line)
    return out


def _correlation_lines(result) -> list[str]:
    corr = result.correlation
    if corr is None or len(result.free) < 2:
        return []
    pairs = []
    for i in range(len(result.free)):
        for j in range(i + 1, len(result.free)):
            c = corr[i][j]
            if math.isfinite(c) and abs(c) >= STRONG_CORRELATION:
                pairs.append((abs(c), f"  C({result.free[i]}, {result.free[j]}) = {c:+.4f}"))
    if not pairs:
        return []
    return [f"correlations (|C| >= {STRONG_CORRELATION})"] + [line for _, line in sorted(pairs, reverse=True)]
