"""Built-in example data: the thermometer calibration gradfit is built from."""

from __future__ import annotations

__all__ = ["thermometer", "T_C", "T_U"]

#: Celsius readings
T_C = (0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0)
#: readings of the same temperatures on a thermometer with unknown units
T_U = (35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4)


def thermometer() -> dict[str, list[float]]:
    """The 11 (t_u, t_c) pairs as columns; fit them with ``"t_c ~ w*t_u + b"``.

    >>> d = thermometer()
    >>> len(d["t_u"]), d["t_c"][0]
    (11, 0.5)
    """
    return {"t_u": list(T_U), "t_c": list(T_C)}
