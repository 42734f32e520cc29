"""Reports: results over seeds, Welch statistics, methods at equal ReLU budget, plots, selection, TensorBoard."""
