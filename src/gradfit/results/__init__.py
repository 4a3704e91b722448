"""Results: FitResult and BatchResult, with their reports, plots and files."""
