import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# a developer's own signing key would turn every tamper test into a signature refusal
os.environ.pop("GRADFIT_SIGNING_KEY", None)


@pytest.fixture
def thermo():
    import gradfit as gf

    return gf.thermometer()


@pytest.fixture
def thermo_csv(tmp_path, thermo):
    path = tmp_path / "thermo.csv"
    rows = ["t_u,t_c"] + [f"{u},{c}" for u, c in zip(thermo["t_u"], thermo["t_c"])]
    path.write_text("\n".join(rows) + "\n")
    return path
