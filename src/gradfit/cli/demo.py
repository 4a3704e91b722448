"""``gradfit demo``: the thermometer calibration as a guided walk-through.

Every number printed is computed here and now by the public API; the published values of
the worked example are shown beside them for comparison.
"""

from __future__ import annotations

from pathlib import Path

from .common import ExitStatus, library_output, print_table

FORMULA = "t_c ~ w*t_u + b"
START = {"w": 1.0, "b": 0.0}


def run_demo(args, stdout, stderr) -> ExitStatus:
    with library_output("demo", stderr):
        _walk_through(Path(args.out or "gradfit-demo"), stdout)
    return ExitStatus.OK


def _walk_through(out: Path, stdout) -> None:
    import numpy as np

    import gradfit as gf

    from ..results.plot import plot_histories

    data = gf.thermometer()
    say = lambda text="": print(text, file=stdout)  # noqa: E731

    say("gradfit demo: calibrate a thermometer with unknown units t_u against Celsius t_c")
    say(f"model: {FORMULA}   (w and b are the parameters; t_u, t_c are data columns)")
    say()
    print_table(stdout, "1. The data (11 pairs)", ["t_u", *[f"{v:g}" for v in data["t_u"]]],
                [["t_c", *[f"{v:g}" for v in data["t_c"]]]])
    say()

    start_loss = gf.loss_value(FORMULA, data=data, params=START)
    grads = {m: gf.gradient(FORMULA, data=data, params=START, method=m) for m in ("autograd", "analytic", "finite")}
    say(f"2. Forward pass at w=1, b=0: mean squared error = {start_loss:.4f}")
    print_table(stdout, "   gradient of the loss (chain rule)", ["", "autograd", "analytic (sympy)", "finite diff"],
                [[f"dL/d{p}", *[f"{grads[m][p]:.4f}" for m in grads]] for p in START])
    say("   published: dL/dw = 4517.2969, dL/db = 82.6000. dL/dw is 55x dL/db because t_u is ~50:")
    say("   one learning rate cannot suit both parameters.")
    say()

    raw = gf.fit(FORMULA, data=data, init=START, optimizer="sgd", lr=1e-2, epochs=5000, progress=False)
    say(f"3. SGD, lr=0.01, raw t_u: status {raw.status}. {raw.message}")
    say(f"   last finite parameters kept: w={raw.params['w']:.4g}, b={raw.params['b']:.4g}")
    say()

    scaled_data = {"x": [0.1 * v for v in data["t_u"]], "t_c": data["t_c"]}
    scaled = gf.fit("t_c ~ w*x + b", data=scaled_data, init=START, optimizer="sgd", lr=1e-2, epochs=5000,
                    progress=False)
    normalized = gf.fit(FORMULA, data=data, init=START, optimizer="sgd", lr=1e-2, epochs=5000, normalize=True,
                        progress=False)
    adam = gf.fit(FORMULA, data=data, init=START, optimizer="adam", lr=1e-1, epochs=2000, progress=False)
    lstsq = np.polyfit(data["t_u"], data["t_c"], 1)
    rows = [
        ["SGD lr=0.01, 5000 ep, x=0.1*t_u", f"{scaled.params['w']:.4f}", f"{scaled.params['b']:.4f}",
         f"{scaled.history['train_loss'][-1]:.6f}", "w=5.3671 b=-17.3012 loss 2.927647"],
        ["SGD lr=0.01, 5000 ep, --normalize", f"{normalized.params['w']:.5f}", f"{normalized.params['b']:.4f}",
         f"{normalized.loss:.6f}", f"least squares: w={lstsq[0]:.5f} b={lstsq[1]:.4f}"],
        ["Adam lr=0.1, 2000 ep, raw t_u", f"{adam.params['w']:.4f}", f"{adam.params['b']:.4f}",
         f"{adam.history['train_loss'][-1]:.6f}", "w=0.5367 b=-17.3021 loss 2.927646"],
    ]
    print_table(stdout, "4. Three ways to make it converge", ["run", "w", "b", "loss", "published"], rows)
    say("   Rescaling t_u by hand changes what w means (per 0.1 unit). --normalize preconditions the")
    say("   optimizer instead, so w and b keep their meaning; Adam adapts a step size per parameter.")
    say()

    split = gf.fit(FORMULA, data=data, init=START, optimizer="sgd", lr=1e-2, epochs=3000, normalize=True,
                   val_fraction=0.2, seed=0, progress=False)
    say(f"5. Hold out 20% for validation (seed 0): {split.n_train} train / {split.n_val} validation points")
    say(f"   train loss {split.loss:.4f}, validation loss {split.val_loss:.4f}: the validation loss is what tells")
    say("   whether the fit generalizes; both curves are in loss.png.")
    say()

    out.mkdir(parents=True, exist_ok=True)
    normalized.plot_fit(out / "fit.png", {"t_u": data["t_u"]}, data["t_c"])
    split.plot_loss(out / "loss.png")
    plot_histories(out / "sgd_vs_adam.png", {"SGD, normalized (lr=0.01)": normalized.history["train_loss"],
                                             "Adam, raw t_u (lr=0.1)": adam.history["train_loss"]},
                   title="training loss: SGD vs Adam")
    say(f"plots: {out / 'fit.png'} (fit and residuals), {out / 'loss.png'} (train/validation),")
    say(f"       {out / 'sgd_vs_adam.png'} (optimizers compared)")
