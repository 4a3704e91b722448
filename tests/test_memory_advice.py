"""Full-batch training that would not fit in memory is named before it runs (issue 12, §11)."""

import warnings

import numpy as np
import pytest

import gradfit as gf
import gradfit.train.memory as memory


def test_the_estimate_counts_activations_and_gradients_per_row():
    # 1000 rows, 3 inputs, one hidden layer of 64, 1 output, float32:
    # (3 + 1 + 4 * 64) values per row, 4 bytes each
    assert memory.full_batch_bytes(1000, [3, 64, 1], 4) == 1000 * 260 * 4


def test_the_suggested_batch_fits_the_target_fraction():
    available = 1 << 30
    text = memory.memory_advice(5_000_000, [1, 512, 512, 1], 4, None, available)
    batch = int(text.split("batch_size=")[1].split(",")[0])
    per_row = memory.full_batch_bytes(1, [1, 512, 512, 1], 4)
    assert batch * per_row <= memory.TARGET_FRACTION * available < 2 * batch * per_row
    assert batch & (batch - 1) == 0  # a power of two


@pytest.mark.parametrize("batch_size, expected", [(None, 1), (256, 0), (10**9, 1)])
def test_fit_warns_for_full_batch_only(monkeypatch, batch_size, expected):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 << 20)  # 64 MiB free
    x = np.linspace(-3, 3, 20_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = gf.fit("mlp", x=x, y=np.sin(x), hidden=(256, 256), epochs=1, batch_size=batch_size)
    advice = [w for w in caught if "full-batch training" in str(w.message)]
    assert len(advice) == expected
    assert sum("batch_size=" in n for n in r.notes) == expected


def test_small_fits_and_formulas_say_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 << 20)
    d = gf.thermometer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gf.fit("mlp", x="t_u", y="t_c", data=d, epochs=2)
        gf.fit("t_c ~ w*t_u + b", data=d, optimizer="adam", epochs=2)
