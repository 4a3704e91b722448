"""Optimizers: torch.optim by name (and, later, Levenberg-Marquardt and linear solves)."""
