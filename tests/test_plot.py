"""Plots are real PNG images with content."""

import numpy as np

import gradfit as gf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


def test_fit_and_loss_plots(tmp_path, thermo):
    r = gf.fit("t_c ~ w*t_u + b", data=thermo, optimizer="adam", lr=0.1, epochs=100, val_fraction=0.2,
               progress=False)
    r.plot_fit(tmp_path / "fit.png", {"t_u": thermo["t_u"]}, thermo["t_c"])
    r.plot_loss(tmp_path / "loss.png")
    assert _is_png(tmp_path / "fit.png") and _is_png(tmp_path / "loss.png")


def test_multi_input_plot(tmp_path):
    x = np.random.default_rng(0).uniform(size=(40, 2))
    r = gf.fit("mlp", x=x, y=x.sum(1), hidden=(4,), epochs=5, progress=False)
    r.plot_fit(tmp_path / "fit.png", x, x.sum(1))
    assert _is_png(tmp_path / "fit.png")
    # the image is not blank: many distinct colours
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "fit.png")
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20
