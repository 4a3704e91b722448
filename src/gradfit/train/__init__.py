"""Training: the objective the optimizer sees, the epoch loop and its callbacks."""
