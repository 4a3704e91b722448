"""Formula language: parse (text -> tree), compile (tree -> torch), symbolic (tree <-> sympy)."""
