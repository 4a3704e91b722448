"""Least squares: the problem, its solvers, uncertainties and profile intervals, and the batched runner."""
