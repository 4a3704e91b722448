"""Text reports of results (pure string formatting; the CLI decides where they go)."""

from __future__ import annotations

__all__ = ["text_report"]


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}"


def text_report(result) -> str:
    s = result.settings
    lines = [f"model      {result.model.describe()}"]
    how = ", ".join(f"{k}={s[k]}" for k in ("optimizer", "lr", "loss") if k in s)
    lines.append(f"status     {result.status} after {result.epochs_run} epochs ({how})")
    if result.message:
        lines.append(f"           {result.message}")
    lines.append(f"data       {result.n_train} train" + (f", {result.n_val} validation" if result.n_val else ""))
    lines.append(f"loss       train {_num(result.loss)}" + (f"  val {_num(result.val_loss)}" if result.val_loss is not None else ""))
    for note in result.notes:
        lines.append(f"note       {note}")
    if result.params:
        width = max(len(k) for k in result.params)
        lines.append("parameters")
        for k, v in result.params.items():
            lines.append(f"  {k:<{width}}  {v:.6g}")
    return "\n".join(lines)
